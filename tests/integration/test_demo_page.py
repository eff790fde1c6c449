"""The demo page of `fer-exp serve` (``GET /``) driven in a real headless browser: Debian's chromium through
Playwright's Python API (``executable_path``; Playwright's own browsers are never downloaded).

Two tiny real models (1 epoch on 600 FER2013 rows) are registered as versions 1 and 2 of ``fer-cnn`` in a fresh MLflow
SQLite store, ``champion`` on version 1, served by one `fer-exp serve` subprocess. Photos are real PrivateTest faces
pasted at known places (test_predict_real.py); the webcam is Chromium's fake camera playing a .y4m clip made here from
two real faces on a grey background.

``FER_EXP_DEMO_SCREENSHOT=docs/img/demo-page.png`` also writes the photo test's screenshot there (docs/demo-page.md).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from fer_experiments import EXPRESSIONS
from test_predict_real import build_photos, choose_faces, iou, paste, train_tiny_model
from test_serve_real import Server, fer_exp_serve

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Headless, no GPU, no sandbox (containers), /tmp instead of /dev/shm, and nothing that reaches the network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
#: Two faces of 180 px in the fake webcam's 640x480 frames.
CLIP_SLOTS = [(70, 150, 180), (390, 150, 180)]
CLIP_SHAPE = (480, 640)
#: Counts the page's /predict calls in flight (the page must never have two).
COUNT_FETCHES = """
(() => {
  const original = window.fetch;
  window.__predict = { inFlight: 0, max: 0, calls: 0 };
  window.fetch = async (...args) => {
    const predict = String(args[0]).includes("predict");
    if (predict) { const s = window.__predict; s.calls++; s.inFlight++; s.max = Math.max(s.max, s.inFlight); }
    try { return await original(...args); }
    finally { if (predict) window.__predict.inFlight--; }
  };
})();
"""


def _jpeg85(gray: np.ndarray) -> bytes:
    """Roughly what the page uploads from a webcam frame (a canvas JPEG at quality 0.85)."""
    ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def write_clip(real_dataset, path: Path, start: int, frames: int = 10) -> Path:
    """A .y4m clip (Chromium's fake camera reads YUV4MPEG2, 4:2:0) of two detectable real faces on grey."""
    x = real_dataset.split("PrivateTest").x
    background = np.full(CLIP_SHAPE, 128, np.uint8)
    chosen = choose_faces(x, background, CLIP_SLOTS, _jpeg85, start=start)
    gray = paste(background, [x[i] for i in chosen], CLIP_SLOTS)
    yuv = cv2.cvtColor(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), cv2.COLOR_BGR2YUV_I420).tobytes()
    h, w = CLIP_SHAPE
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + yuv)
    return path


@pytest.fixture(scope="module")
def env(real_dataset, tmp_path_factory: pytest.TempPathFactory):
    from fer_experiments.tracking import start_run
    from fer_experiments.tracking.model_registry import register_run_model, set_alias

    work = tmp_path_factory.mktemp("demo")
    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    for seed, filters in ((11, 8), (12, 12)):
        model = train_tiny_model(real_dataset, seed, filters)
        with start_run(uri, "demo-test", run_name=f"tiny-{seed}") as run:
            run.log_keras_model(model)
        register_run_model(uri, "fer-cnn", run.run_id)
    set_alias(uri, "fer-cnn", "champion", "1")
    photos = build_photos(real_dataset, work)
    clip = write_clip(real_dataset, work / "clip.y4m", start=max(photos["idx_b"]) + 1)
    server = Server(fer_exp_serve("--model", "models:/fer-cnn@champion", "--tracking-uri", uri, "--poll-seconds",
                                  "3600"), cwd=work)
    try:
        yield {"work": work, "uri": uri, "url": server.wait(), "server": server, "clip": clip} | photos
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(env: dict):
    if CHROMIUM is None:
        # Not a skip: CI installs it (.ci/run: apt-get install -y chromium); a missing browser must show.
        pytest.fail("chromium is not installed (apt-get install -y chromium): the demo page's browser test cannot run")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=[*FLAGS, f"--use-file-for-fake-video-capture={env['clip']}"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, env: dict):
    """The demo page, loaded and showing a ready model; fails the test on any script error or refused resource."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.add_init_script(COUNT_FETCHES)
    yield page
    context.close()
    # A 4xx answer the test provoked logs "Failed to load resource"; a CSP refusal or a script error must not happen.
    assert not [p for p in problems if "Failed to load resource" not in p], problems


def _open(page, env: dict) -> None:
    page.goto(env["url"] + "/")
    page.wait_for_function("() => document.getElementById('model-status').textContent === 'ready'", timeout=30_000)


def _faces(page) -> list[dict]:
    return page.eval_on_selector_all("#faces li.face", """items => items.map(li => ({
        label: li.dataset.label, raw: li.dataset.rawLabel, track: li.dataset.track,
        box: li.dataset.box.split(',').map(Number), text: li.textContent,
        bars: Array.from(li.querySelectorAll('.bar')).map(b => [b.dataset.name,
              parseFloat(b.querySelector('.bar-fill').style.width)])}))""")


def test_page_is_self_contained_and_locked_down(env: dict) -> None:
    url = env["url"]
    r = httpx.get(url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    files = {"html": r.text}
    for name, kind in (("demo.js", "text/javascript"), ("demo.css", "text/css")):
        asset = httpx.get(f"{url}/demo-assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), name
        files[name] = asset.text
    # Offline: nothing from another origin; every script and style sheet is one of the two files above.
    for name, text in files.items():
        urls = re.findall(r"https?://[^\s\"'`)]+", text)  # only the webcam hint names addresses, all local
        assert all(re.match(r"http://(localhost|127\.0\.0\.1):PORT/$", u) for u in urls), (name, urls)
        assert "@import" not in text and "url(" not in text, name
    assert re.findall(r'<script[^>]*src="([^"]+)"', files["html"]) == ["demo-assets/demo.js"]
    assert re.findall(r'<link[^>]*href="([^"]+)"', files["html"]) == ["demo-assets/demo.css"]
    assert not re.search(r"<script>|<style>| on\w+=", files["html"])  # no inline script or style (CSP forbids)
    # No HTML is ever built from data.
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function",
                         files["demo.js"])
    # Only the two files are served from the assets path (no directory listing, no way out).
    for path in ("/demo-assets/demo.html", "/demo-assets/", "/demo-assets/..%2Fdemo.py", "/demo-assets/x.js"):
        missing = httpx.get(url + path)
        assert missing.status_code == 404 and missing.json()["error"] == "not_found", path
    text = httpx.get(url + "/metrics").text
    assert re.search(r'^fer_requests_total\{endpoint="/",status="200"\} \d+$', text, re.M)
    assert re.search(r'^fer_requests_total\{endpoint="/demo-assets",status="200"\} \d+$', text, re.M)


def test_a_photo_gives_boxes_labels_and_probabilities(page, env: dict) -> None:
    _open(page, env)
    text = {k: page.text_content(f"#model-{k}") for k in ("name", "version", "alias", "runtime", "detector")}
    assert text["name"] == "fer-cnn" and text["version"] == "1" and text["alias"] == "champion"
    # The detector the service names (yunet by default, haar where it fell back).
    health = httpx.get(env["url"] + "/health").json()
    assert re.fullmatch(r"exported \(onnxruntime [\d.]+\)", text["runtime"])
    assert text["detector"] == health["detector"] and health["detector"] in ("yunet", "haar")
    page.set_input_files("#file", str(env["paths"]["a"]))
    page.wait_for_selector("body[data-photo-answers='1']", timeout=60_000)
    faces = _faces(page)
    # What the page shows is what /predict answers for the same file.
    api = httpx.post(env["url"] + "/predict", files={"image": ("a.jpg", env["paths"]["a"].read_bytes())},
                     timeout=60).json()
    assert len(faces) == len(api["faces"]) == 3
    for shown, answered in zip(faces, api["faces"]):
        assert shown["label"] == answered["label"] and shown["label"] in EXPRESSIONS
        assert shown["box"] == [answered["box"][k] for k in ("x", "y", "w", "h")]
        assert [name for name, _ in shown["bars"]] == list(EXPRESSIONS)
        widths = [w for _, w in shown["bars"]]
        np.testing.assert_allclose(widths, [100 * answered["probabilities"][e] for e in EXPRESSIONS], atol=0.06)
        assert f": {shown['label']}" in shown["text"]
    assert page.text_content("#answered-by") == "fer-cnn version 1 (exported)"
    assert page.is_hidden("#fps") and page.is_hidden("#frames")  # webcam figures only with the webcam
    for timing in ("#rtt", "#server-time"):
        assert re.fullmatch(r"\d+ ms", page.text_content(timing)), timing
    # The photo is drawn at the server's size with each box stroked in its face's colour.
    drawn = page.evaluate("""() => { const c = document.getElementById('photo'); const b = %s;
        const px = c.getContext('2d').getImageData(b[0] + Math.round(b[2] / 2), b[1] + b[3], 1, 1).data;
        return {w: c.width, h: c.height, hidden: c.hidden, px: Array.from(px)}; }""" % json.dumps(faces[1]["box"]))
    assert drawn["w"] == 640 and drawn["h"] == 480 and not drawn["hidden"]
    assert drawn["px"][:3] == [0x3C, 0xB4, 0x4B]  # COLORS[1] in demo.js, on the second box's bottom edge
    shot = env["work"] / "demo-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if target := os.environ.get("FER_EXP_DEMO_SCREENSHOT"):
        shutil.copyfile(shot, target)


def test_a_dropped_rotated_photo_and_refused_uploads(page, env: dict) -> None:
    _open(page, env)
    data = base64.b64encode(env["paths"]["b"].read_bytes()).decode()
    page.evaluate("""data => { const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const dt = new DataTransfer(); dt.items.add(new File([bytes], 'b.jpg', {type: 'image/jpeg'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                                             cancelable: true})); }""", data)
    page.wait_for_selector("body[data-photo-answers='1']", timeout=60_000)
    # EXIF orientation 6: stored 480x640, upright 640x480, as the server reports it.
    assert page.evaluate("[document.getElementById('photo').width, document.getElementById('photo').height]") == [640,
                                                                                                                   480]
    assert len(_faces(page)) == 2 and page.is_hidden("#error")
    # The server's refusals are shown as they come (its limits hold: the page sends the file as it is).
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"}])
    page.wait_for_selector("#error[data-code='unsupported_media_type']", timeout=30_000)
    page.set_input_files("#file", files=[{"name": "big.jpg", "mimeType": "image/jpeg",
                                          "buffer": b"\xff\xd8" + bytes(10 * 1024 * 1024 + 10)}])
    page.wait_for_selector("#error[data-code='body_too_large']", timeout=30_000)
    assert "over the limit of 10,485,760 bytes" in page.text_content("#error")
    assert page.evaluate("window.__predict.max") == 1


def test_every_server_string_is_shown_as_text(page, env: dict) -> None:
    """A hostile name, runtime or error detail is shown literally and never runs (answers forged in the browser)."""
    evil = '<img src=x onerror="window.__pwned=1"><b id=bold>x</b>'
    health = {"ready": True, "status": "ready", "model": {"name": evil, "version": evil, "uri": "x"},
              "runtime": {"runtime": evil, "engine": evil, "source": ""}, "requested": f"models:/m@{evil}",
              "detector": evil, "reason": None}
    answer = {"faces": [{"box": {"x": 10, "y": 10, "w": 50, "h": 50}, "label": evil,
                         "probabilities": {e: (0.9 if e == "Sad" else 0.1 / 6) for e in EXPRESSIONS} | {evil: 1}}],
              "model": {"name": evil, "version": evil, "uri": "x"}, "image": {"width": 100, "height": 80},
              "time_ms": 1.0, "runtime": evil}
    page.route("**/health", lambda route: route.fulfill(status=200, json=health))
    page.goto(env["url"] + "/")
    page.wait_for_function("() => document.getElementById('model-status').textContent === 'ready'")
    page.route("**/predict", lambda route: route.fulfill(status=200, json=answer))
    page.set_input_files("#file", str(env["paths"]["crop"]))
    page.wait_for_selector("body[data-photo-answers='1']")
    page.unroute("**/predict")
    page.route("**/predict", lambda route: route.fulfill(status=422, json={"error": evil, "detail": evil}))
    page.set_input_files("#file", str(env["paths"]["crop"]))
    page.wait_for_selector("#error:not([hidden])")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img").count() == 0 and page.locator("#bold").count() == 0
    for selector in ("#model-name", "#model-version", "#model-detector", "#answered-by", "#error"):
        assert evil in page.text_content(selector), selector
    assert page.text_content("#model-alias") == evil
    assert _faces(page)[0]["label"] == "Sad"  # the label comes from the 7 known classes, never from a string


def test_label_smoothing_is_predict_cameras(page, env: dict) -> None:
    """The page's tracker, fed what `predict --camera`'s FaceTracker is fed, gives the same tracks and averages."""
    from fer_experiments.serving.detector import Box
    from fer_experiments.serving.video import FaceTracker

    _open(page, env)
    rng = np.random.default_rng(3)
    frames = []
    for t in range(40):  # two faces drifting, one leaving for a while, a newcomer, noise
        boxes = [(100 + 2 * t, 80, 60, 60)]
        if not 10 <= t < 14:  # gone for 4 frames: still followed (forgotten after 5)
            boxes.append((300 - t, 200 + t, 70, 70))
        if t >= 25:
            boxes.append((500, 20, 40, 40))
        rng.shuffle(boxes)
        frames.append((boxes, rng.dirichlet(np.ones(7), len(boxes)).tolist()))
    js = page.evaluate("""frames => { const t = new FerDemo.FaceTracker();
        return frames.map(([boxes, probs]) => t.update(boxes.map(([x, y, w, h]) => ({x, y, w, h})), probs)
                          .map(f => [f.track, f.smoothed, f.label])); }""", frames)
    tracker = FaceTracker()  # the defaults of predict --camera: window 5, IoU 0.3, 5 missed frames
    assert page.evaluate("[FerDemo.SMOOTHING.window, FerDemo.SMOOTHING.minIou, FerDemo.SMOOTHING.maxMissed]") == [
        tracker.window, tracker.min_iou, tracker.max_missed]
    for (boxes, probs), shown in zip(frames, js):
        expected = tracker.update([Box(*b) for b in boxes], np.asarray(probs))
        assert [f[0] for f in shown] == [f.track for f in expected]
        np.testing.assert_allclose([f[1] for f in shown], [f.smoothed for f in expected], atol=1e-12)
        assert [f[2] for f in shown] == [f.label for f in expected]
    assert max(t for frame in js for t, *_ in frame) == 3  # three faces, the returning one kept its track


def test_the_webcam_gives_live_labels_and_frames_per_second(page, env: dict) -> None:
    _open(page, env)
    page.click("#camera-start")
    page.wait_for_function("() => Number(document.getElementById('frames').textContent) >= 5", timeout=120_000)
    f1, t1 = int(page.text_content("#frames")), time.monotonic()
    page.wait_for_function(f"() => Number(document.getElementById('frames').textContent) >= {f1 + 10}",
                           timeout=120_000)
    f2, t2 = int(page.text_content("#frames")), time.monotonic()
    shown_fps = float(page.get_attribute("#fps", "data-value"))
    measured = (f2 - f1) / (t2 - t1)
    assert shown_fps > 0 and measured / 3 <= shown_fps <= measured * 3, (shown_fps, measured)
    assert re.fullmatch(r"\d+ ms \(mean \d+ ms\)", page.text_content("#rtt")) and page.is_visible("#fps")
    faces = _faces(page)
    assert len(faces) == 2, faces
    for face, (x, y, size) in zip(faces, CLIP_SLOTS):
        assert face["label"] in EXPRESSIONS and face["raw"] in EXPRESSIONS
        assert iou(tuple(face["box"]), (x, y, size, size)) >= 0.5, (face["box"], (x, y, size))
        assert "this frame:" in face["text"]
    assert sorted(f["track"] for f in faces) == ["1", "2"]  # the same two faces followed since the first frame
    assert page.text_content("#answered-by") == "fer-cnn version 1 (exported)"
    # Labels and boxes are drawn over the video.
    painted = page.evaluate("""() => { const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return [c.width, c.height, n]; }""")
    assert painted[:2] == [640, 480] and painted[2] > 2000
    if target := os.environ.get("FER_EXP_DEMO_SCREENSHOT"):
        page.screenshot(path=str(Path(target).with_name(Path(target).stem + "-webcam.png")), full_page=True)
    page.click("#camera-stop")
    page.wait_for_function("() => window.__predict.inFlight === 0", timeout=60_000)
    stats = page.evaluate("window.__predict")
    answered = int(page.text_content("#frames"))
    assert stats["max"] == 1, stats  # one request in flight at a time: no queue
    assert stats["inFlight"] == 0 and answered <= stats["calls"] <= answered + 1
    time.sleep(0.5)
    assert page.evaluate("window.__predict.calls") == stats["calls"]  # stopped


def test_a_promote_shows_the_new_version_on_the_next_answer(page, env: dict) -> None:
    from fer_experiments.tracking.model_registry import set_alias

    _open(page, env)
    page.click("#camera-start")
    page.wait_for_function("() => document.getElementById('answered-by').dataset.version === '1'", timeout=120_000)
    set_alias(env["uri"], "fer-cnn", "champion", "2")
    try:
        reload = httpx.post(env["url"] + "/reload", timeout=120)
        assert reload.status_code == 200 and reload.json()["model"]["version"] == "2", reload.text
        page.wait_for_function("() => document.getElementById('answered-by').dataset.version === '2'", timeout=60_000)
        assert page.text_content("#answered-by") == "fer-cnn version 2 (exported)"
        page.wait_for_function("() => document.getElementById('model-version').textContent === '2'", timeout=10_000)
        assert page.get_attribute("#model-version", "title") == "was 1"
    finally:
        page.click("#camera-stop")
        set_alias(env["uri"], "fer-cnn", "champion", "1")
        httpx.post(env["url"] + "/reload", timeout=120)
