#!/usr/bin/env bash
# Builds the images of docker/compose.yaml with the legacy builder or BuildKit alike:
#   bash docker/build.sh                      # fer-exp:latest on TensorFlow's GPU image (a registry is needed)
#   FER_BASE=local bash docker/build.sh       # no registry: local/debian:bookworm (docker/make-base.sh), a CPU
#                                             # fer-exp image and a PostgreSQL image built from Debian's package
# Environment:
#   FER_BASE        registry (default) | local
#   BASE_IMAGE      base of the fer-exp image [registry: tensorflow/tensorflow:2.21.0-gpu, local: local/debian:bookworm]
#                   (debian:bookworm-slim: a CPU image from a registry)
#   FER_IMAGE       tag of the fer-exp image [fer-exp:latest]
#   POSTGRES_LOCAL_IMAGE  tag of the local PostgreSQL image [fer-exp-postgres:local] (FER_BASE=local only)
#   FER_CA_CERTS    auto (default) | none | FILE | DIR: extra CA certificates trusted in the images (docker/certs/)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST: the pip index for the build; by default this host's
#                   (its environment, then `pip config`), http(s) URLs only (file:// indexes are not in the image)
set -euo pipefail
cd "$(dirname "$0")/.."

FER_BASE="${FER_BASE:-registry}"
case "$FER_BASE" in
  registry) BASE_IMAGE="${BASE_IMAGE:-tensorflow/tensorflow:2.21.0-gpu}" ;;
  local) BASE_IMAGE="${BASE_IMAGE:-local/debian:bookworm}" ;;
  *) echo "build: FER_BASE must be registry or local, not '$FER_BASE'" >&2; exit 2 ;;
esac
FER_IMAGE="${FER_IMAGE:-fer-exp:latest}"
POSTGRES_LOCAL_IMAGE="${POSTGRES_LOCAL_IMAGE:-fer-exp-postgres:local}"

# --- extra CA certificates -> docker/certs/host-*.crt (replaced on every build)
stage_certs() {
  local src="${FER_CA_CERTS:-auto}" dir=docker/certs f n=0
  find "$dir" -maxdepth 1 -name 'host-*.crt' -delete
  case "$src" in
    none) ;;
    auto) src=/usr/local/share/ca-certificates ;&
    *)
      if [ -f "$src" ]; then
        cp "$src" "$dir/host-$(basename "${src%.*}").crt"; n=1
      elif [ -d "$src" ]; then
        while IFS= read -r -d '' f; do
          cp "$f" "$dir/host-$(basename "${f%.*}").crt"; n=$((n + 1))
        done < <(find "$src" -type f \( -name '*.crt' -o -name '*.pem' \) -print0 | sort -z)
      elif [ "${FER_CA_CERTS:-auto}" != auto ]; then
        echo "build: FER_CA_CERTS=$src is neither a file nor a folder" >&2; exit 2
      fi ;;
  esac
  echo "build: $n extra CA certificate file(s) in docker/certs/ (FER_CA_CERTS=${FER_CA_CERTS:-auto})"
}

# --- the host's pip index (http/https only), unless given
pip_setting() {  # pip_setting ENV_NAME CONFIG_KEY
  local value="${!1:-}"
  if [ -z "$value" ]; then
    value="$({ python3 -m pip config get "global.$2" || pip config get "global.$2"; } 2>/dev/null || true)"
  fi
  local out="" word
  for word in $value; do
    case "$word" in http://* | https://*) out="${out:+$out }$word" ;; esac
  done
  printf '%s' "$out"
}

stage_certs
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
for pair in PIP_INDEX_URL:index-url PIP_EXTRA_INDEX_URL:extra-index-url PIP_TRUSTED_HOST:trusted-host; do
  value="$(pip_setting "${pair%%:*}" "${pair#*:}")"
  if [ -n "$value" ]; then
    build_args+=(--build-arg "${pair%%:*}=$value")
    echo "build: ${pair%%:*} from this host's pip settings"
  fi
done

if [ "$FER_BASE" = local ]; then
  start=$SECONDS
  BASE_TAG="$BASE_IMAGE" bash docker/make-base.sh
  echo "build: base image ready in $((SECONDS - start)) s"
  start=$SECONDS
  docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$POSTGRES_LOCAL_IMAGE" -f docker/postgres/Dockerfile docker/postgres
  echo "build: $POSTGRES_LOCAL_IMAGE built in $((SECONDS - start)) s"
fi

start=$SECONDS
docker build "${build_args[@]}" -t "$FER_IMAGE" -f docker/Dockerfile .
echo "build: $FER_IMAGE (FROM $BASE_IMAGE) built in $((SECONDS - start)) s"
