#!/usr/bin/env bash
# The Docker stack for real, on CPUs: build the images, start PostgreSQL, the MLflow server and 2 CPU workers on the
# tiny space (docker/smoke-space.yaml), stop one worker in the middle of a trial, check the Optuna study and the
# MLflow server, promote the best model and ask the model server (profile serve) for a prediction; then take it all
# down (down -v). One summary line; exit 0 only if every check passed.
#   bash docker/smoke.sh
# Environment:
#   FER2013_CSV   the FER2013 file, mounted read-only [../shared/data/fer2013.csv.gz beside the checkout]
#   FER_BASE      local (default: base image made with mmdebstrap, no registry needed) | registry (debian:bookworm-slim
#                 and postgres:16 from a registry)
#   FER_IMAGE     tag of the CPU fer-exp image [fer-exp:cpu]; SMOKE_TRIALS [6]; SMOKE_TIMEOUT seconds per wait [900];
#                 SMOKE_STOP_GRACE seconds docker stop waits before SIGKILL [300]
#   COMPOSE       the compose command [docker compose if it works, else docker-compose]
#   FER_CA_CERTS, PIP_INDEX_URL, ...: see docker/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

N="${SMOKE_TRIALS:-6}"
WAIT="${SMOKE_TIMEOUT:-900}"
FER_BASE="${FER_BASE:-local}"
FER_IMAGE="${FER_IMAGE:-fer-exp:cpu}"
csv="${FER2013_CSV:-$repo/../shared/data/fer2013.csv.gz}"
if [ ! -f "$csv" ]; then
  echo "smoke: FER2013 file not found at $csv (set FER2013_CSV)" >&2
  exit 3
fi
csv="$(cd "$(dirname "$csv")" && pwd)/$(basename "$csv")"
case "$FER_BASE" in
  local) base_image="${BASE_IMAGE:-local/debian:bookworm}"; pg_image="${POSTGRES_LOCAL_IMAGE:-fer-exp-postgres:local}" ;;
  registry) base_image="${BASE_IMAGE:-debian:bookworm-slim}"; pg_image="${POSTGRES_IMAGE:-postgres:16}" ;;
  *) echo "smoke: FER_BASE must be local or registry" >&2; exit 2 ;;
esac
if [ -z "${COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE="docker-compose"; fi
fi
docker info >/dev/null 2>&1 || { echo "smoke: no Docker engine answers (start dockerd)" >&2; exit 5; }

project="fersmoke$(date +%s)$$"
study="smoke"
password="smoke$RANDOM$RANDOM"
tmp="$(mktemp -d)"
cat > "$tmp/env" <<ENV
POSTGRES_PASSWORD=$password
POSTGRES_IMAGE=$pg_image
FER_IMAGE=$FER_IMAGE
BASE_IMAGE=$base_image
FER_DATA_DIR=$(dirname "$csv")
FER_DATA_FILE=$(basename "$csv")
FER_SPACE=/opt/fer-exp/docker/smoke-space.yaml
FER_STUDY=$study
FER_N_TRIALS=$N
FER_SERVE_POLL_SECONDS=3
POSTGRES_PORT=0
MLFLOW_PORT=0
FER_SERVE_PORT=0
ENV
storage="postgresql://fer:$password@postgres:5432/optuna"
tracking="http://mlflow:5000"

# shellcheck disable=SC2086 # COMPOSE may be two words
dc() { $COMPOSE -p "$project" -f docker/compose.yaml --env-file "$tmp/env" --profile cpu --profile serve "$@"; }
oneoff() { dc run --rm --no-deps -T "$@"; }
say() { echo "smoke: $*" >&2; }

torn_down=0
bg_pid=""
# Long steps run in the background and are waited for: bash runs the INT/TERM traps only between commands, and
# `wait` is one it interrupts.
in_bg() { "$@" & bg_pid=$!; wait "$bg_pid"; }
teardown() {
  dc down -v --remove-orphans -t 20 >/dev/null 2>&1 || true
  local left
  left="$(docker ps -aq --filter "label=com.docker.compose.project=$project")"
  if [ -n "$left" ]; then
    docker rm -f $left >/dev/null 2>&1 || true
  fi
  torn_down=1
  [ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$project")" ]
}
on_exit() {
  local rc=$?
  if [ -n "$bg_pid" ]; then kill "$bg_pid" 2>/dev/null || true; fi
  if [ "$torn_down" = 0 ]; then
    if [ "$rc" != 0 ]; then
      say "FAILED (exit $rc); the stack's last log lines:"
      dc logs --no-color --tail=40 >&2 2>&1 || true
    fi
    teardown || say "containers of $project are left: docker ps -a --filter label=com.docker.compose.project=$project"
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1"; }
wait_healthy() {  # wait_healthy SERVICE
  local id end=$((SECONDS + WAIT))
  id="$(dc ps -q "$1")"
  until [ "$(health "$id")" = healthy ]; do
    if [ $SECONDS -gt $end ] || [ "$(docker inspect -f '{{.State.Running}}' "$id")" != true ]; then
      say "$1 is not healthy ($(health "$id"))"; return 1
    fi
    sleep 2
  done
}

# --- 1. images
t_build=$SECONDS
say "building ($FER_BASE base: $base_image)"
in_bg env FER_BASE="$FER_BASE" BASE_IMAGE="$base_image" FER_IMAGE="$FER_IMAGE" POSTGRES_LOCAL_IMAGE="$pg_image" \
  bash docker/build.sh
build_s=$((SECONDS - t_build))
if [ "$FER_BASE" = registry ]; then docker pull -q "$pg_image" >/dev/null; fi

# --- 2. PostgreSQL and the MLflow server, then 2 CPU workers and the model server
t_run=$SECONDS
say "project $project: starting postgres and mlflow"
dc up -d --no-build postgres mlflow
wait_healthy postgres
wait_healthy mlflow
say "starting 2 CPU workers (study $study, $N trials) and the model server"
dc up -d --no-build --scale worker-cpu=2 worker-cpu serve
mapfile -t workers < <(dc ps -q worker-cpu)
[ "${#workers[@]}" = 2 ] || { say "expected 2 workers, got ${#workers[@]}"; exit 1; }

# --- 3. stop the worker of a running trial (docker stop: SIGTERM) and check that it exits 143
say "waiting for a trial in progress"
end=$((SECONDS + WAIT)); stopped=""; seen_trial=""
while [ -z "$stopped" ]; do
  [ $SECONDS -lt $end ] || { say "no trial seen running within ${WAIT}s"; exit 1; }
  line="$(dc exec -T mlflow python /opt/fer-exp/docker/smoke_check.py running-trial --study "$study" --min-age 2 \
          2>/dev/null || true)"
  if [ -n "$line" ]; then
    read -r seen_trial host <<<"$line"
    for id in "${workers[@]}"; do
      if [ "${id:0:${#host}}" = "$host" ]; then stopped="$id"; fi
    done
    [ -n "$stopped" ] || { say "trial $seen_trial runs on $host, not one of the workers"; exit 1; }
  else
    sleep 1
  fi
done
# Which trial it was running when the signal came is read back from the study (the one that failed "interrupted").
# The grace period is generous: ending the trial (run KILLED, params queued again, parent run) and leaving Python
# takes seconds on an idle machine, but has taken more than a minute here with other jobs loading the CPU.
say "docker stop ${stopped:0:12} (running trial $seen_trial)"
t_stop=$SECONDS
in_bg docker stop -t "${SMOKE_STOP_GRACE:-300}" "$stopped" >/dev/null
stopped_exit="$(docker inspect -f '{{.State.ExitCode}}' "$stopped")"
say "the stopped worker exited $stopped_exit after $((SECONDS - t_stop)) s"
[ "$stopped_exit" = 143 ] || { say "expected exit 143"; docker logs -t --tail 30 "$stopped" >&2; exit 1; }
other="${workers[0]}"; [ "$other" != "$stopped" ] || other="${workers[1]}"

# --- 4. the other worker finishes the study (retrying the stopped trial's params) and exits 0
say "waiting for worker ${other:0:12} to finish the study"
in_bg timeout "$WAIT" docker wait "$other" > "$tmp/other.exit" \
  || { say "worker ${other:0:12} still running after ${WAIT}s"; exit 1; }
other_exit="$(cat "$tmp/other.exit")"
restarts="$(docker inspect -f '{{.RestartCount}}' "$other")"
if [ "$other_exit" != 0 ] || [ "$restarts" != 0 ]; then
  say "worker ${other:0:12} exited $other_exit after $restarts restart(s)"; docker logs --tail 40 "$other" >&2; exit 1
fi

# --- 5. the Optuna study and the MLflow server
say "checking the study and the tracking server"
counts="$(oneoff --entrypoint python worker-cpu /opt/fer-exp/docker/smoke_check.py verify --study "$study" \
          --storage "$storage" --tracking-uri "$tracking" --n-trials "$N" --stopped-host "${stopped:0:12}")" \
  || { say "check failed: $counts"; exit 1; }
say "$counts"

# --- 6. the model server: not ready before a promotion, then follows the alias
wait_healthy serve
before="$(dc exec -T serve python /opt/fer-exp/docker/smoke_check.py health --url http://127.0.0.1:8000 || true)"
[ "${before%% *}" = 503 ] || { say "model server before any promotion: '$before', expected 503"; exit 1; }
say "promoting the study's best trial"
# promote finds the study's best trial through its MLflow runs: the tracking server is all it needs.
promoted="$(oneoff --entrypoint fer-exp worker-cpu promote --study "$study" --data "/data/$(basename "$csv")" \
            --tracking-uri "$tracking")"
echo "$promoted" >&2
version="$(grep -oE 'fer-cnn@champion -> version [0-9]+' <<<"$promoted" | grep -oE '[0-9]+$' || true)"
[ -n "$version" ] || { say "promote moved no alias"; exit 1; }
prediction="$(oneoff --entrypoint python worker-cpu /opt/fer-exp/docker/smoke_check.py predict \
              --url http://serve:8000 --data "/data/$(basename "$csv")" --version "$version")"
say "prediction: $prediction"

# --- 7. down -v; nothing may be left
teardown || { say "containers left after down"; exit 1; }
run_s=$((SECONDS - t_run))
echo "smoke: OK $counts stopped_exit=$stopped_exit promoted=fer-cnn/$version" \
     "predicted=$(grep -oE 'label=[A-Za-z]+' <<<"$prediction" | cut -d= -f2) build=${build_s}s run=${run_s}s"
