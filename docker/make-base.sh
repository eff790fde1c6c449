#!/usr/bin/env bash
# Makes the Debian base image the other images build FROM where no image registry is reachable:
#   bash docker/make-base.sh            # -> local/debian:bookworm (skipped when the image already exists)
# It runs mmdebstrap (apt-get install mmdebstrap) against the Debian mirror apt already uses on this host,
# then `docker import`s the tarball. Environment:
#   BASE_TAG       image name (default local/debian:bookworm)
#   DEBIAN_SUITE   (default bookworm)
#   DEBIAN_MIRROR  sources.list lines to use, one per line (default: the host's Debian lines from
#                  /etc/apt/sources.list and /etc/apt/sources.list.d/*.sources, else deb.debian.org)
#   FORCE=1        rebuild even when the image exists
set -euo pipefail

BASE_TAG="${BASE_TAG:-local/debian:bookworm}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  echo "make-base: $BASE_TAG exists (FORCE=1 rebuilds it)"
  exit 0
fi
command -v mmdebstrap >/dev/null || { echo "make-base: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 2; }

# The host's Debian mirror lines (one-line format), from classic .list files and deb822 .sources files.
host_mirror_lines() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && grep -E '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[a-z]+://[^[:space:]]*debian' "$f" \
      | sed -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?/deb /'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # One stanza per blank-line-separated block: "deb URI SUITE... COMPONENT..." for each URI and suite.
    awk 'function flush() { if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "") {
             nu = split(uris, u, " "); ns = split(suites, s, " ");
             for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print "deb " u[i] " " s[j] " " comps }
           types = uris = suites = comps = "" }
         /^[[:space:]]*$/ { flush(); next }
         /^#/ { next }
         /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
         /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
         /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
         /^Components:/ { sub(/^Components:[[:space:]]*/, ""); comps = $0 }
         END { flush() }' "$f" | grep -E "^deb [^ ]*debian[^ ]* ${DEBIAN_SUITE}"
  done
}

if [ -z "${DEBIAN_MIRROR:-}" ]; then
  DEBIAN_MIRROR="$(host_mirror_lines | sort -u || true)"
fi
if [ -z "$DEBIAN_MIRROR" ]; then
  DEBIAN_MIRROR="deb http://deb.debian.org/debian ${DEBIAN_SUITE} main"
fi
echo "make-base: mirror lines:"
printf '  %s\n' "$DEBIAN_MIRROR"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
# minbase + ca-certificates (for the proxy CA step of the Dockerfiles); apt lists are dropped from the tarball.
printf '%s\n' "$DEBIAN_MIRROR" | mmdebstrap --variant=minbase --include=ca-certificates \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
  "$DEBIAN_SUITE" "$tmp/base.tar" -
docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$tmp/base.tar" "$BASE_TAG" >/dev/null
echo "make-base: $BASE_TAG built in $((SECONDS - start)) s"
