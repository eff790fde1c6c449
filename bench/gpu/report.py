"""After ``bench/gpu/run.sh``'s search: the study's trials (and refits) as CSV, and the best PublicTest accuracy
with the PrivateTest accuracy of the registered challenger, as JSON, into ``--out``.

    python bench/gpu/report.py --data fer2013.npz --study gpu --tracking-uri sqlite:///.../mlflow.db --out DIR
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="models:/fer-cnn@challenger")
    ap.add_argument("--search-rc", type=int, default=None)
    args = ap.parse_args(argv)
    from fer_experiments.data import load_dataset
    from fer_experiments.registry.evaluate import evaluate_model
    from fer_experiments.tracking import find_runs, tags

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in tags.STUDY_MODEL_KINDS:
        for run in find_runs(args.tracking_uri, None, filter_string=tags.study_filter(args.study, kind=kind)):
            rows.append({"kind": kind, "trial": run.tags.get(tags.TRIAL_NUMBER), "status": run.status,
                         "state": run.tags.get(tags.TRIAL_STATE), "public_accuracy": run.metrics.get(
                             tags.PUBLIC_ACCURACY), "epochs_run": run.metrics.get("epochs_run"),
                         "images_per_second": run.metrics.get(tags.TRAIN_IMAGES_PER_SECOND),
                         "train_seconds": run.metrics.get(tags.TRAIN_SECONDS), "n_train": run.params.get("n_train"),
                         "block": run.params.get("block"), "filters": run.params.get("filters"),
                         "conv_blocks": run.params.get("conv_blocks"), "run_id": run.run_id})
    rows.sort(key=lambda r: (r["kind"], int(r["trial"] or -1)))
    if rows:
        with open(out / "trials.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    result: dict = {"study": args.study, "search_exit_code": args.search_rc, "trials": sum(r["kind"] == "trial"
                    for r in rows), "refits": sum(r["kind"] == "refit" for r in rows),
                    "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node()}
    done = [r for r in rows if r["public_accuracy"] is not None]
    if done:
        best = max(done, key=lambda r: r["public_accuracy"])
        result["best_public_accuracy"] = best["public_accuracy"]
        result["best_public_run"] = {k: best[k] for k in ("kind", "trial", "run_id")}
    try:
        ds = load_dataset(args.data)
        private = evaluate_model(args.model, ds, "PrivateTest", args.tracking_uri)
        public = evaluate_model(args.model, ds, "PublicTest", args.tracking_uri)
        result |= {"challenger": args.model, "challenger_public_accuracy": public.accuracy,
                   "challenger_private_accuracy": private.accuracy, "challenger_private_macro_f1": private.macro_f1}
    except Exception as exc:  # noqa: BLE001 - report what there is even when no challenger was registered
        result["challenger_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
