#!/usr/bin/env bash
# Runs on the lent GPU machine, from the repository root (the device tool's working copy), one call per bundle that
# bench/gpu/pack.py made:
#   run(command="bash bench/gpu/run.sh", carry=["bench/gpu/pack/bundle1"])   # installs wheels, stores data shards
#   run(command="bash bench/gpu/run.sh", carry=["bench/gpu/pack/bundle2"])   # the rest; then the search runs
# Each call keeps the wheels it brings in $WHEELS and the data shards in $DATA (both survive while the machine stays
# warm); once every file in the manifest is there, it installs the wheels together (`pip install --no-index
# --no-deps --target $SITE`), joins the shards into one arrays file and runs `fer-exp search --space gpu-full
# --budget 8m` with KERAS_BACKEND=jax, then writes the trials (trials.csv), the best PublicTest accuracy and its PrivateTest accuracy (results.json) and the
# logs to $OUT.
# Settings (environment): FER_GPU_SPACE (gpu-full), FER_GPU_BUDGET (8m), FER_GPU_EXTRA (more search options),
# FER_GPU_SITE (/tmp/site), FER_GPU_WHEELS (/tmp/fer-wheels), FER_GPU_DATA (/tmp/fer-data), FER_GPU_WORK
# (/tmp/fer-gpu-work), PYTHON (python3).
set -euo pipefail
PYTHON=${PYTHON:-python3}
SITE=${FER_GPU_SITE:-/tmp/site}
DATA=${FER_GPU_DATA:-/tmp/fer-data}
WORK=${FER_GPU_WORK:-/tmp/fer-gpu-work}
WHEELS=${FER_GPU_WHEELS:-/tmp/fer-wheels}
OUT=${OUT:-$PWD/gpu-out}
SPACE=${FER_GPU_SPACE:-gpu-full}
BUDGET=${FER_GPU_BUDGET:-8m}
REPO=$PWD
mkdir -p "$SITE" "$DATA" "$WORK" "$WHEELS" "$OUT"

# Wheels and shards are only collected per call; the wheels are installed together once all are here: `pip
# install --target` replaces a top-level folder that is already there, so installing bundles one by one loses
# modules of namespace packages spread over several wheels (google.protobuf went when google-auth came).
for bundle in bench/gpu/pack/bundle*; do
  [ -d "$bundle" ] || continue
  if compgen -G "$bundle/wheels/*.whl" > /dev/null; then cp "$bundle"/wheels/*.whl "$WHEELS"/; fi
  if compgen -G "$bundle/data/*.npz" > /dev/null; then cp "$bundle"/data/*.npz "$DATA"/; fi
  cp "$bundle/manifest.json" "$DATA/manifest.json"
  echo "collected $bundle: $(ls "$WHEELS" | wc -l) wheels, $(ls "$DATA"/*.npz 2>/dev/null | wc -l) data files here"
done
if ! "$PYTHON" - "$DATA" "$WHEELS" <<'PY'
import json, sys
from pathlib import Path
data, wheels = Path(sys.argv[1]), Path(sys.argv[2])
manifest = json.loads((data / "manifest.json").read_text())
missing = [w for w in manifest["wheels"] if not (wheels / w).is_file()]
missing += [s for s in manifest["shards"] if not (data / s).is_file()]
if missing:
    print(f"waiting for {len(missing)} file(s) ({', '.join(missing[:4])}...): run again carrying the next bundle")
    sys.exit(1)
PY
then
  exit 0
fi
if [ ! -f "$SITE/.fer-installed" ]; then
  rm -rf "$SITE" && mkdir -p "$SITE"
  echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE"
  "$PYTHON" -m pip install --no-index --no-deps --target "$SITE" -q "$WHEELS"/*.whl
  touch "$SITE/.fer-installed"
fi

export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax MLFLOW_DISABLE_TELEMETRY=true KERAS_HOME="$WORK/keras" MPLCONFIGDIR="$WORK/mpl" \
  FER_EXP_CACHE="$WORK/cache" MPLBACKEND=Agg XLA_PYTHON_CLIENT_PREALLOCATE=false
unset MLFLOW_TRACKING_URI FER_EXP_STORAGE || true

"$PYTHON" - "$DATA" <<'PY'
import json, sys
from pathlib import Path
data = Path(sys.argv[1])
manifest = json.loads((data / "manifest.json").read_text())
from fer_experiments.data.arrays import assemble_shards
if not (data / "fer2013.npz").is_file():
    assemble_shards([data / s for s in manifest["shards"]], data / "fer2013.npz")
print(f"data ready: {data / 'fer2013.npz'}")
PY

"$PYTHON" -c "import jax, keras; print('jax', jax.__version__, jax.devices(), '| keras', keras.__version__, keras.backend.backend())" \
  | tee "$OUT/versions.txt"
cd "$WORK"
set +e
# shellcheck disable=SC2086 # FER_GPU_EXTRA is a list of options
"$PYTHON" -m fer_experiments.cli search --data "$DATA/fer2013.npz" --space "$SPACE" --study gpu \
  --budget "$BUDGET" ${FER_GPU_EXTRA:-} > "$OUT/search.log" 2> "$OUT/search.err"
rc=$?
set -e
tail -n 15 "$OUT/search.log"
echo "search exit code $rc"
"$PYTHON" "$REPO/bench/gpu/report.py" --data "$DATA/fer2013.npz" --study gpu --tracking-uri "sqlite:///$WORK/mlruns/mlflow.db" \
  --out "$OUT" --search-rc "$rc"
