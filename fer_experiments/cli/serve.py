"""``fer-exp predict`` and ``fer-exp serve``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

if TYPE_CHECKING:
    import socket

from fer_experiments.cli.options import FiniteFloatRange, tracking_option
from fer_experiments.config import DEFAULT_MODEL_URI
from fer_experiments.models.export import RUNTIME_EXPORTED, RUNTIMES
from fer_experiments.serving.detector import DEFAULT_DETECTOR, DETECT_SIZES


def _common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--model", "model_uri", default=DEFAULT_MODEL_URI, show_default=True,
                     help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<run_id>/model, or a local .keras "
                          "file / MLflow model folder."),
        tracking_option,
        click.option("--detector", default=DEFAULT_DETECTOR, show_default=True,
                     help="Face detector: yunet (libfacedetection's CNN; falls back to haar with a warning line "
                          "where it cannot run), haar (OpenCV frontalface_default), haar-alt (frontalface_alt2) or "
                          "the path of a Haar cascade XML."),
        click.option("--detect-size", type=click.IntRange(min=0), default=None,
                     help="Detect on a copy downscaled so its longer side is at most this many pixels (0: full size) "
                          f"[default: {DETECT_SIZES['yunet']} for yunet, {DETECT_SIZES['haar']} for haar; Haar finds "
                          "faces down to ~1/12 of that size, yunet ~1/25]."),
        click.option("--min-face", type=click.IntRange(min=1), default=32, show_default=True,
                     help="Smallest face to look for, in pixels of the original image."),
        click.option("--margin", type=FiniteFloatRange(0, 1), default=None,
                     help="Widen each detected box by this fraction on every side before cropping "
                          "[default: 0.03, the framing of FER2013's faces]."),
        click.option("--runtime", type=click.Choice(list(RUNTIMES)), default=RUNTIME_EXPORTED,
                     show_default=True,
                     help="exported: the model's ONNX graph in ONNX Runtime (exported now and logged to its run if "
                          "it has none yet; Keras when it cannot be exported); int8: that graph quantized to INT8 "
                          "(~3x faster; calibrated on 256 Training faces of the run's data set or FER2013_CSV on "
                          "first use, then logged to the run); keras: the Keras model itself."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _detector(detector: str, detect_size: int | None, min_face: int) -> Any:
    from fer_experiments.serving.detector import DetectorConfig, FaceDetector

    return FaceDetector(DetectorConfig(spec=detector, detect_size=detect_size, min_face=min_face))


def _margin(margin: float | None) -> float:
    from fer_experiments.serving.detector import DEFAULT_MARGIN

    return DEFAULT_MARGIN if margin is None else margin


@click.command()
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False, path_type=str))
@_common_options
@click.option("--out", "out_path", type=click.Path(path_type=str), default=None,
              help="Images: write each with its boxes and labels drawn into this folder (same file name). "
                   "A video or --camera: the annotated video file to write (.mp4 or .avi).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list (a result or an error per image); for a "
                                                      "video, the summary as JSON.")
@click.option("--no-detect", is_flag=True, help="Classify each whole image as one face (for 48x48 crops).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images with more pixels than this [default: 40,000,000].")
@click.option("--camera", type=click.IntRange(min=0), default=None,
              help="Read webcam N (0: the first) instead of files, until Ctrl-C or --max-frames.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Video: analyse every k-th frame (the frames between keep the last labels).")
@click.option("--window", type=click.IntRange(min=1), default=5, show_default=True,
              help="Video: average each face's probabilities over its last N analysed frames (1: no smoothing).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Video: where to write one row per face and analysed frame [default: beside --out, else "
                   "<video name>-faces.csv].")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Video: stop after this many frames.")
def predict(images: tuple[str, ...], model_uri: str, tracking_uri: str | None, detector: str, detect_size: int | None,
            min_face: int, margin: float | None, runtime: str, out_path: str | None, as_json: bool,
            no_detect: bool, max_pixels: int | None, camera: int | None, every: int, window: int,
            csv_path: str | None, max_frames: int | None) -> None:
    """Find every face in IMAGES, classify them and print box, label and the 7 probabilities per face.

    An image with no face is reported as such (exit 0). A file that cannot be read or is not an image gets one
    `error:` line and the other files are still processed; the exit code is then 3 (bad data).

    \b
    Videos and webcams (the real-time path):
      fer-exp predict clip.mp4 --out annotated.mp4          # + annotated.csv, frames per second printed
      fer-exp predict --camera 0 --out webcam.mp4 --every 2  # until Ctrl-C
    Every face is followed from frame to frame and its label averaged over --window analysed frames so that it
    does not flicker; the CSV has one row per face and analysed frame (frame, time, box, label, probabilities).
    """
    from fer_experiments.serving.video import is_video

    if camera is not None or any(is_video(name) for name in images):
        if camera is not None and images:
            raise click.UsageError("give either --camera or files, not both")
        if len(images) > 1:
            raise click.UsageError("give one video at a time")
        if no_detect:
            raise click.UsageError("--no-detect is for 48x48 images, not videos")
        _predict_video(camera if camera is not None else images[0], model_uri, tracking_uri, detector, detect_size,
                       min_face, margin, runtime, out_path, csv_path, as_json, every, window, max_frames)
        return
    if not images:
        raise click.UsageError("give one or more images, a video, or --camera N")
    if out_path is not None and Path(out_path).is_file():
        raise click.BadParameter(f"{out_path!r} is a file; for images --out is a folder", param_hint="'--out'")
    if out_path is not None:
        for name in images:  # an annotated copy is written under the input's own name: never over an input
            if _same_path(Path(name).parent, out_path):
                raise click.BadParameter(f"{out_path!r} holds the input {name!r}; its annotated copy would replace it: "
                                         "write into another folder", param_hint="'--out'")
    _predict_images(images, model_uri, tracking_uri, detector, detect_size, min_face, margin, runtime, out_path,
                    as_json, no_detect, max_pixels)


def _predict_images(images: tuple[str, ...], model_uri: str, tracking_uri: str | None, detector: str,
                    detect_size: int | None, min_face: int, margin: float | None, runtime: str, out_dir: str | None,
                    as_json: bool, no_detect: bool, max_pixels: int | None) -> None:
    from fer_experiments import api
    from fer_experiments.errors import DataError
    from fer_experiments.io import read_capped
    from fer_experiments.serving.images import DEFAULT_MAX_PIXELS, ImageRejected, decode_image

    loaded = api.load_model(model_uri, tracking_uri=tracking_uri, runtime=runtime,
                            detector=None if no_detect else detector, detect_size=detect_size, min_face=min_face,
                            margin=margin)
    pixel_limit = max_pixels or DEFAULT_MAX_PIXELS
    results: list[dict[str, Any]] = []
    bad: list[str] = []
    written: set[str] = set()
    for name in images:
        try:
            try:
                data = read_capped(name)
            except DataError as exc:  # the message names the file; the loop below adds it once
                raise DataError(str(exc).removeprefix(f"{name}: ")) from None
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


def _predict_video(source: str | int, model_uri: str, tracking_uri: str | None, detector: str, detect_size: int | None,
                   min_face: int, margin: float | None, runtime: str, out_path: str | None, csv_path: str | None,
                   as_json: bool, every: int, window: int, max_frames: int | None) -> None:
    """``predict`` on a video file or a webcam: annotated video + CSV, a summary and the frames per second."""
    import time

    from fer_experiments import api
    from fer_experiments.errors import DataError, Terminated
    from fer_experiments.serving.video import FOURCC, VideoConfig, analyse_video, open_capture

    config = VideoConfig(every=every, window=window, max_frames=max_frames)
    if out_path is not None and Path(out_path).suffix.lower() not in FOURCC:
        raise click.BadParameter(f"{out_path!r}: write the annotated video as {', '.join(sorted(FOURCC))}",
                                 param_hint="'--out'")
    stem = f"camera{source}" if isinstance(source, int) else Path(source).stem
    csv_target = csv_path or (str(Path(out_path).with_suffix(".csv")) if out_path else f"{stem}-faces.csv")
    for option, target in (("--out", out_path), ("--csv", csv_target)):
        if target is not None and not isinstance(source, int) and _same_path(source, target):
            raise click.BadParameter(f"{target!r} is the input video; writing there would replace it",
                                     param_hint=f"'{option}'")
    if out_path is not None and _same_path(out_path, csv_target):
        raise click.BadParameter(f"{csv_target!r} is also the annotated video (--out)", param_hint="'--csv'")
    open_capture(source).release()  # a missing or unreadable video or camera fails at once, before the model loads
    loaded = api.load_model(model_uri, tracking_uri=tracking_uri, runtime=runtime, detector=detector,
                            detect_size=detect_size, min_face=min_face, margin=margin)
    last = [time.perf_counter()]

    def progress(index: int, faces: list[Any]) -> None:  # a line every 5 s, so a webcam run shows it is alive
        now = time.perf_counter()
        if now - last[0] >= 5 and not as_json:
            last[0] = now
            labels = ", ".join(f"{f.track}: {f.label}" for f in faces) or "no face"
            click.echo(f"  frame {index}: {labels}", err=True)

    summary = analyse_video(source, loaded.predictor, out_path, csv_target, config, on_frame=progress)
    info = summary.to_dict() | {"model": loaded.info(), "annotated": out_path, "csv": csv_target}
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"{summary.source}: {summary.frames} frames ({summary.width}x{summary.height}, {summary.fps:.1f} "
                   f"fps), {summary.analysed} analysed, {summary.frames_with_faces} with a face, "
                   f"{len(summary.labels)} face{'' if len(summary.labels) == 1 else 's'} followed")
        for track, counts in sorted(summary.labels.items()):
            total = sum(counts.values())
            label, n = max(counts.items(), key=lambda kv: kv[1])
            click.echo(f"  face {track}: {total} analysed frames, mostly {label} ({n / total:.0%})")
        click.echo(f"{summary.frames_per_second:.1f} frames/s sustained ({summary.seconds:.1f} s: decode, detect, "
                   f"classify, draw, write)")
        if out_path:
            click.echo(f"annotated: {out_path}")
        click.echo(f"csv: {csv_target}")
    if summary.stopped == "decode-error":
        raise DataError(f"{summary.source}: decoding stopped at frame {summary.frames} of "
                        f"{summary.expected_frames} (damaged video?); what was read is in the outputs")
    if summary.stopped == "terminated":
        raise Terminated()
    if summary.stopped == "interrupted" and not isinstance(source, int):
        raise KeyboardInterrupt


def _same_path(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file or folder (links and relative spellings included)."""
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they point
        return Path(a).resolve() == Path(b).resolve()


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
    from fer_experiments.io import atomic_write_bytes
    from fer_experiments.serving.annotate import draw_faces
    from fer_experiments.serving.detector import Box
    from fer_experiments.serving.images import encode_image

    canvas = draw_faces(image.bgr.copy(), [(Box(**f["box"]), f"{f['label']} {f['probabilities'][f['label']]:.2f}")
                                           for f in faces])
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
@click.option("--poll-seconds", type=FiniteFloatRange(0.1, 86400), default=30.0, show_default=True,
              help="How often to look up the alias and pick up a newly promoted version (POST /reload: now).")
@click.option("--max-bytes", type=click.IntRange(min=1), default=10 * 1024 * 1024, show_default=True,
              help="Largest upload accepted (413 above).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True,
              help="Largest image accepted, in pixels (413 above: decompression bombs).")
@click.option("--batch-window-ms", type=FiniteFloatRange(0, 1000), default=3.0, show_default=True,
              help="Micro-batching: how long a classifier call may wait, after the first waiting face, for the "
                   "faces of requests still being detected; they are classified in one call (0: off; a request "
                   "alone never waits).")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Micro-batching: at most this many faces per classifier call.")
@click.option("--body-timeout", type=FiniteFloatRange(0.1, 3600), default=15.0, show_default=True,
              help="Answer 408 when an upload sends no byte for this many seconds (or its whole body takes 4x).")
@click.option("--max-uploads", type=click.IntRange(min=1), default=64, show_default=True,
              help="Uploads received at once; more get 503 with Retry-After.")
@click.option("--header-timeout", type=FiniteFloatRange(0.5, 300), default=10.0, show_default=True,
              help="Close a connection (408) whose request headers are not complete this many seconds after it "
                   "opened or after its previous response (slow-header clients).")
@click.option("--max-connections", type=click.IntRange(16, 1_000_000), default=1000, show_default=True,
              help="Open connections at most (lowered to the file-descriptor limit less a reserve); a new one "
                   "closes the oldest still sending its headers, or gets 503 when none is.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="warning",
              show_default=True, help="uvicorn's log level (info adds one line per request).")
def serve(model_uri: str, tracking_uri: str | None, detector: str, detect_size: int | None, min_face: int,
          margin: float | None, runtime: str, host: str, port: int, poll_seconds: float, max_bytes: int,
          max_pixels: int, batch_window_ms: float, max_batch: int, body_timeout: float, max_uploads: int,
          header_timeout: float, max_connections: int, log_level: str) -> None:
    """Serve the model over HTTP: POST /predict, GET /health, GET /metrics, POST /reload, docs at /docs, and a
    demo page at / (drop a photo or open the webcam; docs/demo-page.md).

    \b
    curl -F image=@photo.jpg http://127.0.0.1:8000/predict
    curl --data-binary @photo.jpg http://127.0.0.1:8000/predict

    When the alias moves (fer-exp promote / rollback) the server loads the new version within --poll-seconds
    (or at once on POST /reload); requests in flight finish on the old one. With no version behind the alias yet
    it starts anyway: /health says not ready and /predict answers 503 until one is promoted.
    """
    import uvicorn

    from fer_experiments.serving.app import create_app, json_error_protocol, max_connections_for, run_server
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
    base = f"http://{host}:{bound}"
    click.echo(f"serving on {base} (demo page: {base}/, docs: {base}/docs)", err=True)
    app = create_app(holder, Limits(max_bytes, max_pixels), body_timeout=body_timeout, max_uploads=max_uploads)
    # Graceful shutdown waits for requests in flight (bounded: a stalled upload times out after --body-timeout).
    # Accepts per wake-up (and the listen backlog) below uvicorn's 2048: when accept() fails, asyncio logs and
    # retries once per accept of that loop.
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"),
                            timeout_graceful_shutdown=body_timeout + 5, backlog=512,
                            http=json_error_protocol(header_timeout, max_connections_for(max_connections)))
    try:
        run_server(config, sock)
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
