"""`fer-exp serve` in a subprocess on a free localhost port, driven by a real HTTP client.

Two tiny real models (1 epoch on 600 FER2013 rows) are logged to a fresh MLflow SQLite store and registered as
versions 1 and 2 of ``fer-cnn``; ``champion`` starts on version 1. The photos are built as in test_predict_real.py
(real PrivateTest faces pasted at known positions). Also checked here: the MLflow pyfunc wrapper, in-process and
behind ``mlflow models serve``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from test_predict_real import SLOTS_A, build_photos, classify_reported_crops, iou, train_tiny_model

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


class Server:
    """A server subprocess; ``url`` once it printed its address and answers /health."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None,
                 ready_pattern: str = r"serving on (http://\S+?)(?:\s|$)") -> None:
        self.lines: list[str] = []
        self.url: str | None = None
        self._pattern = re.compile(ready_pattern)
        self._seen = threading.Event()
        self.proc = subprocess.Popen(args, cwd=cwd, env=os.environ | (env or {}), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            m = self._pattern.search(line)
            if m and self.url is None:
                self.url = m.group(1).rstrip("/")
                self._seen.set()

    def wait(self, health: str = "/health", timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while not self._seen.wait(0.2):
            assert self.proc.poll() is None, "server exited:\n" + "\n".join(self.lines)
            assert time.monotonic() < deadline, "server did not start:\n" + "\n".join(self.lines)
        assert self.url is not None
        while True:
            try:
                httpx.get(self.url + health, timeout=5)
                return self.url
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server does not answer:\n" + "\n".join(self.lines)
                time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def fer_exp_serve(*args: str) -> list[str]:
    return [sys.executable, "-m", "fer_experiments.cli", "serve", "--port", "0", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(real_dataset, tmp_path_factory: pytest.TempPathFactory):
    from fer_experiments.tracking import start_run
    from fer_experiments.tracking.model_registry import register_run_model, set_alias

    work = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    models = {}
    for seed, filters in ((11, 8), (12, 12)):
        model = train_tiny_model(real_dataset, seed, filters)
        with start_run(uri, "serve-test", run_name=f"tiny-{seed}") as run:
            run.log_keras_model(model)
        mv, _ = register_run_model(uri, "fer-cnn", run.run_id)
        models[mv.version] = model
    assert sorted(models) == ["1", "2"]
    set_alias(uri, "fer-cnn", "champion", "1")
    photos = build_photos(real_dataset, work)
    main = Server(fer_exp_serve("--model", "models:/fer-cnn@champion", "--tracking-uri", uri, "--poll-seconds",
                                "3600"), cwd=work)
    pending = Server(fer_exp_serve("--model", "models:/fer-cnn@pending", "--tracking-uri", uri, "--poll-seconds",
                                   "1"), cwd=work)
    try:
        yield {"work": work, "uri": uri, "models": models, "url": main.wait(), "pending_url": pending.wait(),
               "main": main, "pending": pending} | photos
    finally:
        codes = (main.stop(), pending.stop())
    # SIGTERM: uvicorn finishes gracefully, then fer-exp exits 143 like every other command.
    assert all(c in (0, 143) for c in codes), (codes, main.lines[-20:], pending.lines[-20:])


def _post(url: str, data: bytes, **kwargs) -> httpx.Response:
    return httpx.post(url + "/predict", content=data, headers={"Content-Type": "image/jpeg"}, timeout=60, **kwargs)


def test_health_docs_and_openapi(env: dict) -> None:
    r = httpx.get(env["url"] + "/health")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True and body["model"] == {"name": "fer-cnn", "version": "1", "uri": "models:/fer-cnn/1"}
    assert body["detector"] == "yunet" and body["requested"] == "models:/fer-cnn@champion"
    docs = httpx.get(env["url"] + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = httpx.get(env["url"] + "/openapi.json").json()
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in content and "application/octet-stream" in content
    assert {"/health", "/metrics", "/reload"} <= set(spec["paths"])


def test_predict_multipart_and_raw_body(env: dict) -> None:
    data = env["paths"]["a"].read_bytes()
    multipart = httpx.post(env["url"] + "/predict", files={"image": ("a.jpg", data, "image/jpeg")}, timeout=60)
    raw = _post(env["url"], data)
    assert multipart.status_code == raw.status_code == 200, multipart.text
    a, b = multipart.json(), raw.json()
    assert a["faces"] == b["faces"] and a["model"] == {"name": "fer-cnn", "version": "1", "uri": "models:/fer-cnn/1"}
    assert a["image"] == {"width": 640, "height": 480} and a["time_ms"] > 0
    faces = a["faces"]
    assert len(faces) == len(SLOTS_A)
    for x0, y0, size in SLOTS_A:
        assert max(iou(tuple(f["box"].values()), (x0, y0, size, size)) for f in faces) >= 0.3
    expected = classify_reported_crops(env["models"]["1"], env["paths"]["a"], faces)
    np.testing.assert_allclose([list(f["probabilities"].values()) for f in faces], expected, atol=2e-5)
    # EXIF-rotated colour photo, and a 48x48 crop without detection.
    rotated = _post(env["url"], env["paths"]["b"].read_bytes()).json()
    assert rotated["image"] == {"width": 640, "height": 480} and len(rotated["faces"]) == 2
    crop = httpx.post(env["url"] + "/predict?detect=false", content=env["paths"]["crop"].read_bytes(), timeout=60)
    assert crop.status_code == 200 and crop.json()["faces"][0]["box"] == {"x": 0, "y": 0, "w": 48, "h": 48}
    none = _post(env["url"], env["paths"]["none"].read_bytes())
    assert none.status_code == 200 and none.json()["faces"] == []


def _raw_request(url: str, head: bytes, body: bytes = b"", timeout: float = 10) -> tuple[int, bytes, float]:
    """Send a hand-written request (so the body can be shorter than its Content-Length); status, reply, seconds."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head + body)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    return int(reply.split(b" ", 2)[1]), reply, time.monotonic() - t0


def test_bad_inputs_get_clear_json_answers(env: dict) -> None:
    from PIL import Image

    from tests.unit.test_serving_images import _png_header_only

    url = env["url"] + "/predict"
    cases = {
        "empty raw body": (httpx.post(url, content=b"", timeout=30), 422, "empty_body"),
        "text bytes": (httpx.post(url, content=b"hello, I am not a photo", timeout=30), 415, "unsupported_media_type"),
        "text file as multipart": (httpx.post(url, files={"image": ("n.txt", b"plain text", "text/plain")}, timeout=30),
                                   415, "unsupported_media_type"),
        "multipart without a file": (httpx.post(url, data={"name": "x"}, files={"other": ("a", b"1"), "more": ("b", b"2")},
                                                timeout=30), 422, "no_image_field"),
        "malformed multipart": (httpx.post(url, content=b"--zzz\r\nbroken", timeout=30,
                                           headers={"Content-Type": "multipart/form-data; boundary=abc"}), 422, None),
        "decompression bomb": (httpx.post(url, content=_png_header_only(50_000, 50_000), timeout=30), 413,
                               "image_too_large"),
        "40 MP + 1": (httpx.post(url, content=_png_header_only(8000, 5001), timeout=30), 413, "image_too_large"),
        "chunked upload over 10 MB": (httpx.post(url, content=iter([os.urandom(1 << 20)] * 12), timeout=60), 413,
                                      "body_too_large"),
    }
    for name, (r, status, code) in cases.items():
        assert r.status_code == status, (name, r.status_code, r.text)
        body = r.json()
        assert body["detail"] and (code is None or body["error"] == code), (name, body)
    # Content-Length over the limit: refused at once, without waiting for (or reading) the 20 MB body.
    host = env["url"].removeprefix("http://")
    status, reply, seconds = _raw_request(env["url"], f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                                                      "image/jpeg\r\nContent-Length: 20000000\r\n\r\n".encode(),
                                          b"\xff\xd8" + b"\0" * 1000)
    assert status == 413 and b"body_too_large" in reply and seconds < 5
    # Colour, odd-sized and EXIF-rotated images are handled.
    odd = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 91, 3), dtype=np.uint8))
    import io

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 8
    odd.save(buf, "WEBP", exif=exif)
    r = _post(env["url"], buf.getvalue())
    assert r.status_code == 200 and r.json()["image"] == {"width": 37, "height": 91}
    # The server is still fine.
    assert httpx.get(env["url"] + "/health").status_code == 200


def test_metrics_in_prometheus_format(env: dict) -> None:
    _post(env["url"], env["paths"]["a"].read_bytes())
    httpx.post(env["url"] + "/predict", content=b"nope", timeout=30)
    r = httpx.get(env["url"] + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    ok = re.search(r'^fer_requests_total\{endpoint="/predict",status="200"\} (\d+)$', text, re.M)
    assert ok and int(ok.group(1)) >= 1
    assert re.search(r'^fer_requests_total\{endpoint="/predict",status="415"\} \d+$', text, re.M)
    assert re.search(r'^fer_errors_total\{endpoint="/predict",error="unsupported_media_type"\} \d+$', text, re.M)
    assert re.search(r'^fer_request_duration_seconds_bucket\{endpoint="/predict",le="\+Inf"\} \d+$', text, re.M)
    assert re.search(r'^fer_request_duration_seconds_sum\{endpoint="/predict"\} [\d.]+$', text, re.M)
    assert "# TYPE fer_request_duration_seconds histogram" in text
    assert 'fer_model_info{name="fer-cnn",version="1"} 1' in text and "fer_model_ready 1" in text
    faces = re.search(r"^fer_faces_total (\d+)$", text, re.M)
    assert faces and int(faces.group(1)) >= 3


def test_fifty_concurrent_requests_all_answered(env: dict) -> None:
    data = env["paths"]["a"].read_bytes()

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=50)) as client:
            return await asyncio.gather(*[client.post(env["url"] + "/predict", content=data) for _ in range(50)])

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 50
    first = responses[0].json()["faces"]
    assert all(r.json()["faces"] == first for r in responses)


def test_not_ready_until_an_alias_exists_then_polled(env: dict) -> None:
    from fer_experiments.tracking.model_registry import delete_alias, set_alias

    url = env["pending_url"]
    health = httpx.get(url + "/health")
    assert health.status_code == 503 and health.json()["ready"] is False
    assert "no version of fer-cnn has the alias 'pending'" in health.json()["reason"]
    r = _post(url, env["paths"]["a"].read_bytes())
    assert r.status_code == 503 and r.json()["error"] == "no_model"
    assert httpx.post(url + "/reload").status_code == 503
    set_alias(env["uri"], "fer-cnn", "pending", "2")
    try:
        deadline = time.monotonic() + 90  # polled every second; loading takes a few seconds on a busy CPU
        while httpx.get(url + "/health").status_code != 200:
            assert time.monotonic() < deadline, "the poller did not pick up the new alias"
            time.sleep(0.5)
        assert httpx.get(url + "/health").json()["model"]["version"] == "2"
        r = _post(url, env["paths"]["a"].read_bytes())
        assert r.status_code == 200 and r.json()["model"]["version"] == "2"
    finally:
        delete_alias(env["uri"], "fer-cnn", "pending")


def test_alias_move_during_requests(env: dict) -> None:
    """Every answer comes from version 1 or 2; every request that starts after POST /reload returned gets 2."""
    from fer_experiments.tracking.model_registry import set_alias

    url, data = env["url"], env["paths"]["a"].read_bytes()
    records: list[tuple[float, float, int, str | None, list]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                r = c.post(url + "/predict", content=data)
                body = r.json() if r.status_code == 200 else {}
                records.append((t0, time.monotonic(), r.status_code, body.get("model", {}).get("version"),
                                body.get("faces", [])))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        set_alias(env["uri"], "fer-cnn", "champion", "2")
        reload = httpx.post(url + "/reload", timeout=120)
        reloaded_at = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert reload.status_code == 200, reload.text
    assert reload.json()["changed"] is True and reload.json()["model"]["version"] == "2"
    assert reload.json()["previous"]["version"] == "1"
    assert all(status == 200 for _, _, status, _, _ in records), [r[2] for r in records]
    assert {v for *_, v, _ in records} == {"1", "2"}
    late = [v for start, _, _, v, _ in records if start > reloaded_at]
    assert late and set(late) == {"2"}
    # The version in each answer is the model that computed it.
    for version in ("1", "2"):
        faces = next(f for *_, v, f in records if v == version)
        expected = classify_reported_crops(env["models"][version], env["paths"]["a"], faces)
        np.testing.assert_allclose([list(f["probabilities"].values()) for f in faces], expected, atol=2e-5)
    assert "fer_model_reloads_total 1" in httpx.get(url + "/metrics").text
    set_alias(env["uri"], "fer-cnn", "champion", "1")
    assert httpx.post(url + "/reload", timeout=120).json()["model"]["version"] == "1"


def test_pyfunc_wrapper_and_mlflow_models_serve(env: dict) -> None:
    import mlflow
    import mlflow.keras
    import pandas as pd

    from fer_experiments.serving.mlflow_service import service_model_name, sync_service_alias

    wrapper = sync_service_alias(env["uri"], "fer-cnn", "champion")
    assert wrapper is not None and wrapper.tags["source_version"] == "1" and "champion" in wrapper.aliases
    again = sync_service_alias(env["uri"], "fer-cnn", "champion")
    assert again.version == wrapper.version  # idempotent: no second wrapper for the same version
    data = env["paths"]["a"].read_bytes()
    served = _post(env["url"], data).json()
    mlflow.set_tracking_uri(env["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{service_model_name('fer-cnn')}@champion")
    (out, bad) = model.predict(pd.DataFrame({"image": [data, b"not an image"]}))
    assert out["faces"] == served["faces"] and out["model"]["version"] == "1"
    # Both run the version's exported graph (the wrapper carries it; exported on promote for older versions).
    assert out["runtime"] == served["runtime"] == "exported"
    assert bad["error"] == "unsupported_media_type" and bad["status"] == 415
    # The registered fer-cnn versions are untouched: still plain Keras models.
    x = env["x"][:4, ..., None].astype("float32")
    np.testing.assert_allclose(mlflow.keras.load_model("models:/fer-cnn@champion").predict(x, verbose=0),
                               env["models"]["1"].predict(x, verbose=0), rtol=1e-5)
    # MLflow's own server answers the same JSON.
    port = free_port()
    server = Server([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/fer-cnn-service@champion",
                     "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)], cwd=env["work"],
                    env={"MLFLOW_TRACKING_URI": env["uri"]}, ready_pattern=r"(http://127\.0\.0\.1:\d+)")
    try:
        server.url = f"http://127.0.0.1:{port}"
        server._seen.set()
        base = server.wait(health="/ping", timeout=300)
        payload = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(data).decode()]]}}
        r = httpx.post(base + "/invocations", json=payload, timeout=120)
        assert r.status_code == 200, r.text
        (pred,) = r.json()["predictions"]
        assert pred["faces"] == served["faces"] and pred["model"]["name"] == "fer-cnn" and pred["runtime"] == "exported"
    finally:
        server.stop()
