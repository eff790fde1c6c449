"""``fer-exp predict`` and ``fer-exp serve``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

if TYPE_CHECKING:
    import socket

from fer_experiments.cli.options import tracking_option
from fer_experiments.config import DEFAULT_MODEL_URI


def _common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--model", "model_uri", default=DEFAULT_MODEL_URI, show_default=True,
                     help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<run_id>/model, or a local .keras "
                          "file / MLflow model folder."),
        tracking_option,
        click.option("--detector", default="haar", show_default=True,
                     help="Face detector: haar (OpenCV frontalface_default), haar-alt (frontalface_alt2) or the path "
                          "of a Haar cascade XML."),
        click.option("--detect-size", type=click.IntRange(min=0), default=320, show_default=True,
                     help="Detect on a copy downscaled so its longer side is at most this many pixels (0: full size; "
                          "raise it to find faces smaller than ~1/10 of the image)."),
        click.option("--min-face", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Smallest face to look for, in pixels of the original image."),
        click.option("--margin", type=click.FloatRange(0, 1), default=None,
                     help="Widen each detected box by this fraction on every side before cropping "
                          "[default: 0.03, the framing of FER2013's faces]."),
        click.option("--runtime", type=click.Choice(["exported", "keras"]), default="exported", show_default=True,
                     help="exported: the model's ONNX graph in ONNX Runtime (exported now and logged to its run if "
                          "it has none yet; Keras when it cannot be exported); keras: the Keras model itself."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _detector(detector: str, detect_size: int, min_face: int) -> Any:
    from fer_experiments.serving.detector import DetectorConfig, FaceDetector

    return FaceDetector(DetectorConfig(spec=detector, detect_size=detect_size, min_face=min_face))


def _margin(margin: float | None) -> float:
    from fer_experiments.serving.detector import DEFAULT_MARGIN

    return DEFAULT_MARGIN if margin is None else margin


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str))
@_common_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Write each image with its boxes and labels drawn into this folder (same file name).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list (a result or an error per image).")
@click.option("--no-detect", is_flag=True, help="Classify each whole image as one face (for 48x48 crops).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images with more pixels than this [default: 40,000,000].")
def predict(images: tuple[str, ...], model_uri: str, tracking_uri: str | None, detector: str, detect_size: int,
            min_face: int, margin: float | None, runtime: str, out_dir: str | None, as_json: bool, no_detect: bool,
            max_pixels: int | None) -> None:
    """Find every face in IMAGES, classify them and print box, label and the 7 probabilities per face.

    An image with no face is reported as such (exit 0). A file that cannot be read or is not an image gets one
    `error:` line and the other files are still processed; the exit code is then 3 (bad data).
    """
    from fer_experiments.errors import DataError
    from fer_experiments.serving.images import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
    from fer_experiments.serving.predictor import load_model

    det = None if no_detect else _detector(detector, detect_size, min_face)
    loaded = load_model(model_uri, tracking_uri, det, _margin(margin), runtime)
    pixel_limit = max_pixels or DEFAULT_MAX_PIXELS
    results: list[dict[str, Any]] = []
    bad: list[str] = []
    written: set[str] = set()
    for name in images:
        try:
            try:
                data = Path(name).read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read ({exc.strerror or exc})") from None
            # The CLI reads local files: no upload limit, only the pixel limit (decompression bombs).
            image = decode_image(data, max_bytes=max(len(data), 1), max_pixels=pixel_limit,
                                 keep_colour=out_dir is not None)
            result = {"file": name} | loaded.answer(image, detect=not no_detect)
            if out_dir is not None:
                result["annotated"] = str(_write_annotated(image, result["faces"], name, Path(out_dir), written))
        except (ImageRejected, DataError) as exc:
            bad.append(name)
            results.append({"file": name, "error": str(exc)})
            click.echo(f"error: {name}: {exc}", err=True)
            continue
        results.append(result)
        if not as_json:
            _print_result(result)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    if bad:
        raise DataError(f"{len(bad)} of {len(images)} files could not be classified: {', '.join(bad)}")


def _print_result(result: dict[str, Any]) -> None:
    faces = result["faces"]
    m = result["model"]
    version = f" version {m['version']}" if m["version"] else ""
    if not faces:
        click.echo(f"{result['file']}: no face found ({m['name']}{version})")
        return
    click.echo(f"{result['file']}: {len(faces)} face{'s' if len(faces) > 1 else ''} ({m['name']}{version}, "
               f"{result['runtime']}, {result['time_ms']:.0f} ms)")
    for i, face in enumerate(faces, 1):
        b = face["box"]
        probs = " ".join(f"{k} {v:.3f}" for k, v in face["probabilities"].items())
        click.echo(f"  face {i}: box x={b['x']} y={b['y']} w={b['w']} h={b['h']}  {face['label']:<8}  {probs}")
    if "annotated" in result:
        click.echo(f"  annotated: {result['annotated']}")


def _write_annotated(image: Any, faces: list[dict[str, Any]], name: str, out_dir: Path, written: set[str]) -> Path:
    """Draw boxes and labels on the colour image and write it atomically into ``out_dir``."""
    import cv2

    from fer_experiments.io import atomic_write_bytes
    from fer_experiments.serving.images import encode_image

    canvas = image.bgr.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    font_scale = max(0.4, max(canvas.shape[:2]) / 1000)
    for face in faces:
        b = face["box"]
        p = face["probabilities"][face["label"]]
        cv2.rectangle(canvas, (b["x"], b["y"]), (b["x"] + b["w"], b["y"] + b["h"]), (0, 200, 0), thickness)
        text = f"{face['label']} {p:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        y = b["y"] - 4 if b["y"] - th - base - 4 >= 0 else b["y"] + b["h"] + th + 4
        cv2.rectangle(canvas, (b["x"], y - th - base), (b["x"] + tw, y + base), (0, 200, 0), cv2.FILLED)
        cv2.putText(canvas, text, (b["x"], y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
    src = Path(name)
    suffix = src.suffix.lower() if src.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp") else ".png"
    target = out_dir / f"{src.stem}{suffix}"
    n = 1
    while str(target) in written:  # two inputs with the same file name from different folders
        target = out_dir / f"{src.stem}-{n}{suffix}"
        n += 1
    written.add(str(target))
    atomic_write_bytes(target, encode_image(canvas, suffix))
    return target


@click.command()
@_common_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--poll-seconds", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="How often to look up the alias and pick up a newly promoted version (POST /reload: now).")
@click.option("--max-bytes", type=click.IntRange(min=1), default=10 * 1024 * 1024, show_default=True,
              help="Largest upload accepted (413 above).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True,
              help="Largest image accepted, in pixels (413 above: decompression bombs).")
@click.option("--batch-window-ms", type=click.FloatRange(0, 1000), default=3.0, show_default=True,
              help="Micro-batching: faces of requests arriving within this many milliseconds of the first waiting "
                   "one are classified in one call (0: off).")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Micro-batching: at most this many faces per classifier call.")
@click.option("--body-timeout", type=click.FloatRange(min=0.1), default=15.0, show_default=True,
              help="Answer 408 when an upload sends no byte for this many seconds (or its whole body takes 4x).")
@click.option("--max-uploads", type=click.IntRange(min=1), default=64, show_default=True,
              help="Uploads received at once; more get 503 with Retry-After.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="warning",
              show_default=True, help="uvicorn's log level (info adds one line per request).")
def serve(model_uri: str, tracking_uri: str | None, detector: str, detect_size: int, min_face: int,
          margin: float | None, runtime: str, host: str, port: int, poll_seconds: float, max_bytes: int,
          max_pixels: int, batch_window_ms: float, max_batch: int, body_timeout: float, max_uploads: int,
          log_level: str) -> None:
    """Serve the model over HTTP: POST /predict, GET /health, GET /metrics, POST /reload, docs at /docs.

    \b
    curl -F image=@photo.jpg http://127.0.0.1:8000/predict
    curl --data-binary @photo.jpg http://127.0.0.1:8000/predict

    When the alias moves (fer-exp promote / rollback) the server loads the new version within --poll-seconds
    (or at once on POST /reload); requests in flight finish on the old one. With no version behind the alias yet
    it starts anyway: /health says not ready and /predict answers 503 until one is promoted.
    """
    import uvicorn

    from fer_experiments.serving.app import create_app, json_error_protocol
    from fer_experiments.serving.predictor import Limits, ModelHolder

    holder = ModelHolder(model_uri, tracking_uri, _detector(detector, detect_size, min_face), _margin(margin),
                         poll_seconds, runtime=runtime, batch_window_ms=batch_window_ms, max_batch=max_batch)
    holder.refresh()  # a bad URI or an unreachable store fails here with its exit code; no alias yet is not fatal
    if holder.current is None:
        click.echo(f"warning: {holder.not_ready_reason}; /predict answers 503 until then", err=True)
    else:
        rt = holder.current.runtime
        click.echo(f"model: {holder.current.name} version {holder.current.version} ({holder.current.uri}); runtime "
                   f"{rt['runtime']} ({rt['engine']}{', ' + rt['source'] if rt['source'] else ''})", err=True)
    sock = listen_socket(host, port)  # bound here: a port in use is a one-line error (exit 2), not a traceback
    bound = sock.getsockname()[1]
    click.echo(f"serving on http://{host}:{bound} (docs: http://{host}:{bound}/docs)", err=True)
    app = create_app(holder, Limits(max_bytes, max_pixels), body_timeout=body_timeout, max_uploads=max_uploads)
    # Graceful shutdown waits for requests in flight (bounded: a stalled upload times out after --body-timeout).
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"),
                            timeout_graceful_shutdown=body_timeout + 5, http=json_error_protocol())
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt as exc:  # uvicorn re-raises the signal once requests in flight have finished
        _exit_now(exc)


def _exit_now(exc: KeyboardInterrupt) -> None:
    """Exit at once after uvicorn's graceful shutdown: nothing is left to save, and the interpreter's own
    finalisation (TensorFlow, ONNX Runtime and idle worker threads) took 2-10 s more here."""
    import os
    import sys

    from fer_experiments.errors import EXIT_SIGINT, EXIT_SIGTERM, Terminated

    terminated = isinstance(exc, Terminated)
    click.echo("terminated (SIGTERM)" if terminated else "interrupted", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_SIGTERM if terminated else EXIT_SIGINT)


def listen_socket(host: str, port: int) -> "socket.socket":
    """A listening TCP socket with TCP_NODELAY; ConfigError when the address cannot be used."""
    import socket

    from fer_experiments.errors import ConfigError

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Without TCP_NODELAY uvicorn's two writes per response (headers, body) meet the client's delayed ACK on a
        # kept-alive connection: +40 ms per request. asyncio sets it only on sockets created with proto=IPPROTO_TCP
        # (hence the explicit proto above); accepted connections also inherit it from the listener on Linux.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
