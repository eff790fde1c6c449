"""Benchmark: face classification throughput and ``/predict`` latency on this CPU.

Prints
  * the cost of one-face classification through model.predict, eager model(x, training=False) and
    model.predict_on_batch (what serving uses), for the small model,
  * faces/s one face at a time and in batches of 64 and 256, for a small cpu-quick-like CNN (16-32-64 filters,
    3 blocks, BatchNorm, global average pooling, dense 64; or --model) and the seed-deep-bn network (untrained
    weights: speed does not depend on them),
  * decode and face detection time for a 640x480 photo with one real FER2013 face (tuned detection against
    OpenCV's example settings at full size),
  * ``/predict`` p50/p95 for that photo from a real ``fer-exp serve`` subprocess: sequential, and 8 concurrent
    clients,
and the targets on a 2-core CPU: /predict p50 <= 50 ms sequential and >= 300 faces/s one at a time (small model).
The gap between "inside the server" and the client's figure is HTTP and the event loop; it was ~44 ms more before
`fer-exp serve` set TCP_NODELAY on its socket (Nagle's algorithm against the client's delayed ACK on kept-alive
connections).

    python bench/serve_latency.py [--model PATH_OR_URI] [--tracking-uri URI] [--requests 200] [--strict]
"""

from __future__ import annotations

import _common  # noqa: F401  (environment first)

import argparse
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from _common import TMP, default_cache_dir, default_data_path, machine_line, quiet_libraries

P50_TARGET_MS = 50.0
FACES_PER_S_TARGET = 300.0


def per_call_ms(fn: Callable[[], Any], n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def small_model() -> Any:
    from fer_experiments.models.builder import build_model
    from fer_experiments.params import ModelParams

    return build_model(ModelParams(conv_blocks=3, convs_per_block=1, filters=16, batchnorm="after_activation",
                                   conv_dropout=0.2, head="global_avg", dense_layers=1, dense_units=64),
                       name="cpu_quick_like")


def classification(models: dict[str, Any]) -> dict[str, float]:
    """Print the call options and faces/s; return one-at-a-time faces/s per model."""
    import keras

    from fer_experiments.serving.predictor import Classifier

    one = np.random.default_rng(0).integers(0, 256, (1, 48, 48), dtype=np.uint8)
    x1 = one[..., None].astype(np.float32)
    small = models["small"]
    print("\none face, small model (ms per call):")
    print(f"  model.predict(x)                {per_call_ms(lambda: small.predict(x1, verbose=0), 20):8.2f}")
    print(f"  model(x, training=False)        "
          f"{per_call_ms(lambda: keras.ops.convert_to_numpy(small(x1, training=False)), 50):8.2f}")
    print(f"  model.predict_on_batch(x)       {per_call_ms(lambda: small.predict_on_batch(x1), 300):8.2f}   (used)")
    rates = {}
    print("\nfaces/s through serving's Classifier (one call per batch):")
    print(f"  {'model':<16}{'params':>10}{'batch 1':>10}{'batch 8':>10}{'batch 64':>10}{'batch 256':>11}")
    for name, model in models.items():
        clf = Classifier(model)
        row = []
        for batch, n in ((1, 300), (8, 100), (64, 20), (256, 6)):
            faces = np.repeat(one, batch, axis=0)
            ms = per_call_ms(lambda: clf.predict_proba(faces), n if name == "small" else max(3, n // 6))
            row.append(batch / ms * 1000)
        rates[name] = row[0]
        print(f"  {name:<16}{model.count_params():>10,}" + "".join(f"{r:>10.0f}" for r in row[:3]) + f"{row[3]:>11.0f}")
    return rates


def photo_bytes(data_path: str) -> bytes:
    """A 640x480 mid-grey JPEG with one real PrivateTest face of 140 px (the first the detector finds)."""
    import cv2

    from fer_experiments.data import load_dataset
    from fer_experiments.serving.detector import FaceDetector

    x = load_dataset(data_path, cache_dir=default_cache_dir()).split("PrivateTest").x
    det = FaceDetector()
    for face in x[:200]:
        img = np.full((480, 640), 128, np.uint8)
        img[170:310, 250:390] = cv2.resize(face, (140, 140), interpolation=cv2.INTER_CUBIC)
        data = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])[1]
        if len(det.detect(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE))) == 1:
            return data.tobytes()
    raise SystemExit("no detectable face among the first 200 PrivateTest faces")


def detection(data: bytes) -> None:
    import cv2

    from fer_experiments.serving.detector import DetectorConfig, FaceDetector
    from fer_experiments.serving.images import decode_image

    gray = decode_image(data).gray
    print("\n640x480 photo, one face (ms):")
    print(f"  decode (header checks + JPEG)   {per_call_ms(lambda: decode_image(data), 100):8.2f}")
    full = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    print(f"  haar full size, 1.1 / 5         "
          f"{per_call_ms(lambda: full.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5), 20):8.2f}"
          "   (OpenCV's example settings)")
    for spec in ("haar", "haar-alt"):
        det = FaceDetector(DetectorConfig(spec=spec))
        print(f"  {spec + ' tuned (320 px, 1.15 / 4)':<32}{per_call_ms(lambda: det.detect(gray), 100):8.2f}"
              f"   faces found: {len(det.detect(gray))}")


def start_server(model_arg: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "fer_experiments.cli", "serve", "--port", "0", *model_arg],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=TMP)
    url: list[str] = []
    got = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"serving on (http://\S+)", line)
            if m and not url:
                url.append(m.group(1))
                got.set()
            elif "error" in line.lower():
                print("  server:", line.rstrip())

    threading.Thread(target=read, daemon=True).start()
    if not got.wait(240):
        proc.kill()
        raise SystemExit("the server did not start")
    return proc, url[0]


def latency(url: str, data: bytes, requests: int) -> float:
    import httpx

    def post(client: httpx.Client) -> tuple[float, float]:
        t0 = time.perf_counter()
        r = client.post(url + "/predict", content=data, headers={"Content-Type": "image/jpeg"})
        elapsed = (time.perf_counter() - t0) * 1000
        assert r.status_code == 200 and len(r.json()["faces"]) == 1, r.text
        return elapsed, float(r.json()["time_ms"])

    with httpx.Client(timeout=60) as c:
        for _ in range(20):
            post(c)
        seq = [post(c) for _ in range(requests)]
    total = np.array([s[0] for s in seq])
    inside = np.array([s[1] for s in seq])
    p50 = float(np.percentile(total, 50))
    print(f"\n/predict, 640x480 JPEG with one face, small model ({requests} requests):")
    print(f"  sequential       p50 {p50:6.1f} ms   p95 {np.percentile(total, 95):6.1f} ms   "
          f"(inside the server: p50 {np.percentile(inside, 50):.1f} ms)")

    clients = 8
    per_client = max(1, requests // clients)

    def run_client(_: int) -> list[float]:
        with httpx.Client(timeout=120) as c:
            return [post(c)[0] for _ in range(per_client)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        conc = np.concatenate(list(pool.map(run_client, range(clients))))
    wall = time.perf_counter() - t0
    print(f"  8 concurrent     p50 {np.percentile(conc, 50):6.1f} ms   p95 {np.percentile(conc, 95):6.1f} ms   "
          f"throughput {len(conc) / wall:.1f} requests/s")
    return p50


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=default_data_path(), help="FER2013 CSV (for the real face in the photo)")
    ap.add_argument("--model", default=None, help="use this model (path or MLflow URI) as the small model")
    ap.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for --model")
    ap.add_argument("--requests", type=int, default=200, help="sequential /predict requests (default %(default)s)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    quiet_libraries()
    print(machine_line())
    from fer_experiments.models.builder import build_model
    from fer_experiments.models.presets import get_preset

    if args.model:
        from fer_experiments.tracking.model_io import load_keras_model

        small = load_keras_model(args.model, args.tracking_uri)
    else:
        small = small_model()
    path = TMP / "small.keras"
    small.save(path)
    rates = classification({"small": small, "seed-deep-bn": build_model(get_preset("seed-deep-bn").model)})
    data = photo_bytes(args.data)
    detection(data)
    proc, url = start_server(["--model", str(path)])
    try:
        p50 = latency(url, data, args.requests)
    finally:
        proc.terminate()
        proc.wait(30)
    ok_latency = p50 <= P50_TARGET_MS
    ok_rate = rates["small"] >= FACES_PER_S_TARGET
    print(f"\ntargets: /predict p50 {p50:.1f} ms <= {P50_TARGET_MS:.0f} ms: {'met' if ok_latency else 'MISSED'}; "
          f"one face at a time {rates['small']:.0f} faces/s >= {FACES_PER_S_TARGET:.0f}: "
          f"{'met' if ok_rate else 'MISSED'}")
    print(machine_line().replace("at start", "at end"))
    return 1 if args.strict and not (ok_latency and ok_rate) else 0


if __name__ == "__main__":
    sys.exit(main())
