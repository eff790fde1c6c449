"""Benchmark: frames/s and round trip of the demo page's webcam mode (`fer-exp serve`, ``GET /``) in headless Chromium.

Starts `fer-exp serve` on an untrained small CNN saved as a .keras file (speed does not depend on the weights; the
same network as bench/video_fps.py and bench/serve_latency.py), opens the page in the system's chromium through
Playwright with Chromium's fake camera playing a 640x480 .y4m clip of two real PrivateTest faces (140 px) on a
gradient, clicks "Open the webcam" and, after a warm-up, counts the frames the page got answers for. The page sends
one frame at a time (the next only after the answer), so the figure is what the server sustains for one viewer:
webcam frame -> canvas JPEG -> POST /predict (decode, Haar detection, classify) -> boxes drawn.

    python bench/demo_page_fps.py [--seconds 20] [--runtime exported]
"""

from __future__ import annotations

import _common  # noqa: F401  (environment first)

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

from _common import REPO, TMP, default_cache_dir, default_data_path, machine_line, quiet_libraries

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def make_clip(path: str, frames: int = 25) -> None:
    """Two faces on a gradient, moving 2 px a frame (YUV4MPEG2 4:2:0, what Chromium's fake camera reads)."""
    import cv2

    from fer_experiments.data import load_dataset

    x = load_dataset(default_data_path(), cache_dir=default_cache_dir()).split("PrivateTest").x
    faces = [cv2.resize(x[i], (140, 140), interpolation=cv2.INTER_CUBIC) for i in (0, 2)]
    background = np.tile(np.linspace(90, 170, 640).astype(np.uint8), (480, 1))
    with open(path, "wb") as f:
        f.write(b"YUV4MPEG2 W640 H480 F25:1 Ip A1:1 C420jpeg\n")
        for k in range(frames):
            img = background.copy()
            for face, (x0, y0) in zip(faces, ((40, 100), (380, 200))):
                img[y0:y0 + 140, x0 + 2 * k:x0 + 2 * k + 140] = face
            f.write(b"FRAME\n" + cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), cv2.COLOR_BGR2YUV_I420).tobytes())


def start_server(model_path: str, runtime: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "fer_experiments.cli", "serve", "--model", model_path, "--port",
                             "0", "--runtime", runtime], cwd=TMP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=os.environ | {"PYTHONPATH": str(REPO)})  # this checkout's code
    found: dict[str, str] = {}
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"serving on (http://\S+)", line)
            if m:
                found["url"] = m.group(1)
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(300):
        proc.kill()
        raise SystemExit("fer-exp serve did not start")
    return proc, found["url"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time after the warm-up")
    ap.add_argument("--runtime", default="exported", choices=["exported", "int8", "keras"])
    args = ap.parse_args()
    quiet_libraries()
    print(machine_line())
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    from fer_experiments.models.builder import build_model
    from fer_experiments.params import ModelParams

    model = build_model(ModelParams(conv_blocks=3, convs_per_block=1, filters=16, batchnorm="after_activation",
                                    dense_layers=1, dense_units=64, head="global_avg"))
    model_path = str(TMP / "small.keras")
    model.save(model_path)
    clip = str(TMP / "clip.y4m")
    make_clip(clip)
    server, url = start_server(model_path, args.runtime)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=[*FLAGS, f"--use-file-for-fake-video-capture={clip}"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            response = page.goto(url + "/")
            if response is None or response.status != 200 or "model-status" not in page.content():
                raise SystemExit(f"GET {url}/ did not give the demo page: {response and response.status} "
                                 f"{page.content()[:300]}")
            page.wait_for_function("() => document.getElementById('model-status').textContent === 'ready'",
                                   timeout=60_000)
            page.click("#camera-start")
            frames = "() => Number(document.getElementById('frames').textContent)"
            page.wait_for_function(f"() => ({frames})() >= 10", timeout=120_000)  # warm-up
            f0, t0 = page.evaluate(frames), time.monotonic()
            time.sleep(args.seconds)
            f1, t1 = page.evaluate(frames), time.monotonic()
            shown = {k: page.text_content(f"#{k}") for k in ("fps", "rtt", "server-time", "answered-by")}
            faces = page.locator("#faces li.face").count()
            page.click("#camera-stop")
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(f"model: small CNN ({model.count_params():,} params, untrained), {shown['answered-by']}")
    print(f"webcam 640x480 -> {f1 - f0} frames answered in {t1 - t0:.1f} s: {(f1 - f0) / (t1 - t0):.1f} frames/s "
          f"(the page shows {shown['fps']} frames/s over its last 20 answers); round trip {shown['rtt']}, "
          f"server time of the last frame {shown['server-time']}; {faces} faces on the last frame")


if __name__ == "__main__":
    main()
