"""Checks of docker/smoke.sh, run inside the stack's containers (the fer-exp image): `python smoke_check.py CMD ...`.

  running-trial  a trial that runs now: "<trial number> <host>" (host = the worker's container id), or nothing;
                 standard library only, through the MLflow REST API (fast enough to poll)
  verify         the Optuna study and the MLflow server agree with a clean run of N trials and one stopped worker;
                 prints key=value counts, exits 1 with the reasons otherwise
  health         GET /health of the model server: prints the status code and the body
  predict        waits until the model server is ready, POSTs a FER2013 48x48 face as PNG (?detect=false), checks
                 the answer and prints it in one line
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def _http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
          timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _mlflow_api(uri: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    status, raw = _http(f"{uri}/api/2.0/mlflow/{path}", data, {"Content-Type": "application/json"})
    if status != 200:
        raise RuntimeError(f"MLflow {path}: HTTP {status}: {raw[:300]!r}")
    return json.loads(raw)


def running_trial(args: argparse.Namespace) -> int:
    try:
        exp = _mlflow_api(args.tracking_uri, "experiments/get-by-name?experiment_name="
                          + urllib.parse.quote(args.experiment or args.study))["experiment"]
    except RuntimeError:
        return 0  # no experiment yet: no trial either
    runs = _mlflow_api(args.tracking_uri, "runs/search", {
        "experiment_ids": [exp["experiment_id"]], "max_results": 100,
        "filter": f"attributes.status = 'RUNNING' and tags.`fer.kind` = 'trial' and tags.study = '{args.study}'",
    }).get("runs", [])
    now_ms = time.time() * 1000
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        if now_ms - int(run["info"]["start_time"]) >= args.min_age * 1000:
            print(tags.get("trial_number", "?"), tags.get("host", "?"))
            return 0
    return 0


def verify(args: argparse.Namespace) -> int:
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    problems: list[str] = []
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    state = {s: [t for t in trials if t.state == s] for s in TrialState}
    finished = state[TrialState.COMPLETE] + state[TrialState.PRUNED]
    if len(numbers) != len(set(numbers)):
        problems.append(f"duplicate trial numbers: {sorted(numbers)}")
    if len(finished) != args.n_trials:
        problems.append(f"{len(finished)} finished trials, expected exactly {args.n_trials}")
    for s in (TrialState.RUNNING, TrialState.WAITING):
        if state[s]:
            problems.append(f"{s.name} trials left: {[t.number for t in state[s]]}")
    # The stopped worker's trial: the one FAIL trial that ended "interrupted" (read back, not guessed beforehand).
    interrupted = [t for t in state[TrialState.FAIL] if t.user_attrs.get("fail_reason") == "interrupted"]
    stopped = interrupted[0] if len(interrupted) == 1 else None
    retried = 0
    if args.stopped_host is not None:
        if stopped is None:
            problems.append(f"{len(interrupted)} interrupted trials, expected 1 (was the worker between trials?)")
        else:
            retries = [t for t in finished if t.system_attrs.get("failed_trial") == stopped.number]
            if not retries or any(t.params != stopped.params for t in retries):
                problems.append(f"the params of stopped trial {stopped.number} were not retried "
                                f"(retries: {[t.number for t in retries]})")
            retried = len(retries)
    other_fail = [t.number for t in state[TrialState.FAIL] if t is not stopped]
    if other_fail:
        problems.append(f"failed trials besides the stopped one: {other_fail} "
                        f"({[t.user_attrs.get('fail_reason') for t in state[TrialState.FAIL] if t is not stopped]})")

    client = MlflowClient(args.tracking_uri, registry_uri=args.tracking_uri)
    runs: list = []
    # Read a few times before judging: one run of this check (of five) found no run at all on a server that had
    # logged them, right after the last worker exited.
    for _ in range(5):
        exp = client.get_experiment_by_name(args.experiment or args.study)
        runs = [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)
        if any(r.data.tags.get("fer.kind") == "study" for r in runs):
            break
        time.sleep(3)
    parents = [r for r in runs if r.data.tags.get("fer.kind") == "study" and r.data.tags.get("study") == args.study]
    if len(parents) != 1:
        problems.append(f"{len(parents)} parent runs, expected 1")
    children = [r for r in runs if parents and r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    if parents and parents[0].info.status != "FINISHED":
        problems.append(f"parent run is {parents[0].info.status}, expected FINISHED")
    by_trial: dict[int, list] = {}
    for r in children:
        by_trial.setdefault(int(r.data.tags.get("trial_number", -1)), []).append(r)
    if any(len(v) != 1 for v in by_trial.values()) or set(by_trial) != set(numbers):
        problems.append(f"child runs per trial {{n: count}}: {{{', '.join(f'{k}: {len(v)}' for k, v in sorted(by_trial.items()))}}}"
                        f", trials {sorted(numbers)}")
    expected_status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED", TrialState.FAIL: "KILLED"}
    models = 0
    for t in trials:
        rs = by_trial.get(t.number, [])
        if not rs:
            continue
        r = rs[0]
        if r.info.run_id != t.user_attrs.get("mlflow_run_id"):
            problems.append(f"trial {t.number}: mlflow_run_id {t.user_attrs.get('mlflow_run_id')} != child run "
                            f"{r.info.run_id}")
        if t is stopped and r.data.tags.get("host") != args.stopped_host:
            problems.append(f"stopped trial {t.number} ran on {r.data.tags.get('host')}, not {args.stopped_host}")
        if r.info.status != expected_status.get(t.state) or r.data.tags.get("trial_state") != t.state.name:
            problems.append(f"trial {t.number} ({t.state.name}): run {r.info.status}, trial_state tag "
                            f"{r.data.tags.get('trial_state')}")
        if not r.info.artifact_uri.startswith("mlflow-artifacts:"):
            problems.append(f"trial {t.number}: artifacts at {r.info.artifact_uri}, not through the server")
        if t.state == TrialState.COMPLETE:
            model_id = r.data.tags.get("fer.model_id.model")
            if not model_id:
                problems.append(f"trial {t.number}: no logged model")
                continue
            model = client.get_logged_model(model_id)
            files = [f.path for f in client.list_logged_model_artifacts(model_id)]
            if not model.artifact_location.startswith("mlflow-artifacts:") or "MLmodel" not in files:
                problems.append(f"trial {t.number}: model {model_id} at {model.artifact_location}, files {files}")
            else:
                models += 1
    if [r for r in runs if r.info.status == "RUNNING"]:
        problems.append(f"RUNNING runs left: {[r.info.run_id for r in runs if r.info.status == 'RUNNING']}")

    print(f"trials={len(trials)} complete={len(state[TrialState.COMPLETE])} pruned={len(state[TrialState.PRUNED])} "
          f"failed={len(state[TrialState.FAIL])} retried={retried} parent_runs={len(parents)} "
          f"child_runs={len(children)} models={models} stopped_trial={stopped.number if stopped else None}")
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


def health(args: argparse.Namespace) -> int:
    status, body = _http(f"{args.url}/health", timeout=10)
    print(status, body.decode(errors="replace").strip())
    return 0


def _face_png(data_path: str, split: str) -> tuple[bytes, int]:
    from PIL import Image

    opener = gzip.open if data_path.endswith(".gz") else open
    with opener(data_path, "rt", newline="") as fh:  # type: ignore[operator]
        for row in csv.DictReader(fh):
            if row["Usage"] == split:
                img = Image.frombytes("L", (48, 48), bytes(int(p) for p in row["pixels"].split()))
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                return buf.getvalue(), int(row["emotion"])
    raise SystemExit(f"no {split} row in {data_path}")


def predict(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            status, body = _http(f"{args.url}/health", timeout=10)
        except OSError as exc:
            status, body = 0, str(exc).encode()
        if status == 200 and json.loads(body).get("ready"):
            break
        if time.monotonic() > deadline:
            print(f"FAIL: model server not ready after {args.timeout} s: {status} {body[:300]!r}", file=sys.stderr)
            return 1
        time.sleep(2)
    png, truth = _face_png(args.data, args.split)
    status, body = _http(f"{args.url}/predict?detect=false", png, {"Content-Type": "image/png"})
    if status != 200:
        print(f"FAIL: POST /predict: HTTP {status}: {body[:300]!r}", file=sys.stderr)
        return 1
    answer = json.loads(body)
    faces = answer.get("faces", [])
    problems = []
    if len(faces) != 1:
        problems.append(f"{len(faces)} faces, expected 1")
    else:
        probs = faces[0].get("probabilities", {})
        if len(probs) != 7 or abs(sum(probs.values()) - 1) > 1e-3 or faces[0].get("label") not in probs:
            problems.append(f"bad probabilities {probs} / label {faces[0].get('label')}")
    model = answer.get("model", {})
    if args.model_name and model.get("name") != args.model_name:
        problems.append(f"model {model}, expected {args.model_name}")
    if args.version and str(model.get("version")) != str(args.version):
        problems.append(f"answered by version {model.get('version')}, expected {args.version}")
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    label = faces[0].get("label") if faces else None
    names = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]  # FER2013's emotion codes
    print(f"label={label} truth={names[truth]} model={model.get('name')}/{model.get('version')} "
          f"time_ms={answer.get('time_ms')}")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("running-trial")
    p.add_argument("--study", required=True)
    p.add_argument("--experiment")
    p.add_argument("--tracking-uri", default="http://127.0.0.1:5000")
    p.add_argument("--min-age", type=float, default=1.0, help="Seconds the trial's run has been running at least.")
    p.set_defaults(fn=running_trial)
    p = sub.add_parser("verify")
    p.add_argument("--study", required=True)
    p.add_argument("--experiment")
    p.add_argument("--storage", required=True)
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--n-trials", type=int, required=True)
    p.add_argument("--stopped-host", default=None, help="Container id (12) of the worker that was docker-stopped.")
    p.set_defaults(fn=verify)
    p = sub.add_parser("health")
    p.add_argument("--url", required=True)
    p.set_defaults(fn=health)
    p = sub.add_parser("predict")
    p.add_argument("--url", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="PrivateTest")
    p.add_argument("--model-name", default="fer-cnn")
    p.add_argument("--version", default=None, help="The model version that must answer.")
    p.add_argument("--timeout", type=float, default=180)
    p.set_defaults(fn=predict)
    args = ap.parse_args()
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
