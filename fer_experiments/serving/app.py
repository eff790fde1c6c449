"""The REST app: ``POST /predict``, ``GET /health``, ``GET /metrics`` (Prometheus text), ``POST /reload``, ``/docs``,
and the demo page ``GET /`` (``serving/demo.py``: a photo or the webcam, each face's expression live).

Bad input never crashes a request: every refusal is a JSON ``{"error": <code>, "detail": <one line>}`` with
400 (malformed HTTP, e.g. a Content-Length that is not a number: answered by ``JsonErrorH11Protocol``),
404 / 405 (no such path / method), 408 (the body stopped arriving: ``body_timeout`` seconds without a byte),
413 (upload over ``max_bytes``, refused from Content-Length before any byte is read and by a cap on the streamed
read; or image dimensions over ``max_pixels``), 415 (not an image), 422 (empty body, no image field, damaged
image, bad query parameter) or 503 (no model behind the alias yet, or ``max_uploads`` uploads already in flight).
A client that goes away mid-upload is not a server error: it is counted in ``fer_client_disconnects_total``
(status 499 in ``fer_requests_total``) and logged in one line.
CPU work (decode, detect, classify) runs in worker threads so the event loop keeps accepting requests; with a
``MicroBatcher`` on the model, faces of concurrent requests are classified together.
The docs page (``/docs``) loads Swagger UI from the installed ``fastapi-offline`` package, not a CDN.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fer_experiments import EXPRESSIONS, __version__
from fer_experiments.serving.demo import DEMO_ASSETS, add_demo_page
from fer_experiments.serving.images import ImageRejected, decode_image
from fer_experiments.serving.predictor import Limits, ModelHolder

log = logging.getLogger("fer_experiments.serving")

#: Room for multipart boundaries and part headers on top of the image bytes.
MULTIPART_OVERHEAD = 64 * 1024
#: Latency histogram buckets (seconds).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ENDPOINTS = ("/predict", "/health", "/metrics", "/reload", "/docs", "/openapi.json", "/")
#: Status recorded for a request whose client went away before the answer (nginx's convention; never sent).
CLIENT_CLOSED = 499
#: Defaults of ``fer-exp serve``: seconds without a body byte before 408, uploads read at once before 503.
DEFAULT_BODY_TIMEOUT = 15.0
DEFAULT_MAX_UPLOADS = 64
#: Where the docs page's Swagger UI files are served from (the installed fastapi-offline package).
DOCS_ASSETS = "/docs-assets"

PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": {"type": "string", "format": "binary"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


class ErrorBody(BaseModel):
    """Every refusal and failure."""

    error: str = Field(description="stable error code, e.g. body_too_large, unsupported_media_type, not_found")
    detail: str = Field(description="one line saying what was wrong")


class BoxBody(BaseModel):
    x: int
    y: int
    w: int
    h: int


class FaceBody(BaseModel):
    box: BoxBody = Field(description="the face in pixels of the upright image")
    label: str = Field(description="the most probable expression")
    probabilities: dict[str, float] = Field(description="the 7 class probabilities: " + ", ".join(EXPRESSIONS))


class ModelBody(BaseModel):
    name: str
    version: str | None
    uri: str


class ImageSizeBody(BaseModel):
    width: int
    height: int


class PredictBody(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{
        "faces": [{"box": {"x": 250, "y": 176, "w": 134, "h": 134}, "label": "Happy",
                   "probabilities": {"Angry": 0.02, "Disgust": 0.0, "Fear": 0.03, "Happy": 0.81, "Sad": 0.04,
                                     "Surprise": 0.02, "Neutral": 0.08}}],
        "model": {"name": "fer-cnn", "version": "3", "uri": "models:/fer-cnn/3"},
        "image": {"width": 640, "height": 480}, "time_ms": 12.6, "runtime": "exported"}]}}

    faces: list[FaceBody] = Field(description="left to right; empty when no face was found")
    model: ModelBody = Field(description="the model version that answered")
    image: ImageSizeBody
    time_ms: float = Field(description="decode + detect + classify, in milliseconds")
    runtime: str = Field(description="what classified: exported (ONNX Runtime), int8 (its INT8 graph) or keras")


class RuntimeBody(BaseModel):
    runtime: str = Field(description="exported (the ONNX graph in ONNX Runtime), int8 (that graph in INT8) or keras")
    engine: str = Field(description="e.g. onnxruntime 1.32.0")
    source: str = Field(description="where the exported graph came from (its run, the cache, ...)")


class BatchingBody(BaseModel):
    window_ms: float
    max_batch: int
    batches: int
    faces: int


class HealthBody(BaseModel):
    ready: bool
    status: str
    model: ModelBody | None
    runtime: RuntimeBody | None
    batching: BatchingBody | None = Field(description="micro-batching settings and counts (None when off)")
    requested: str
    detector: str = Field(description="the face detector in use: yunet (the CNN), haar, haar-alt or a cascade path")
    detector_fallback: str | None = Field(None, description="why yunet could not run and Haar is used instead")
    reason: str | None
    last_error: str | None
    last_check: float | None
    poll_seconds: float
    reloads: int


class ReloadBody(BaseModel):
    changed: bool
    model: ModelBody
    previous: ModelBody | None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {400: "malformed request", 404: "no such path", 405: "method not allowed",
            408: "the request body stopped arriving", 413: "upload or image dimensions over the limit",
            415: "not a supported image", 422: "empty body, no image field, damaged image or bad parameter",
            500: "server error", 503: "no model behind the alias yet, or too many uploads at once"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}


class Metrics:
    """Request counts, latencies, errors and model state in the Prometheus text format (no client library)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.faces = 0
        self.in_flight = 0
        self.uploads = 0  # /predict requests reading their body now (bounded by max_uploads)
        self.disconnects = 0

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.sums[endpoint] += seconds
            self.counts[endpoint] += 1
            row = self.buckets[endpoint]
            for i, le in enumerate(BUCKETS):
                if seconds <= le:
                    row[i] += 1

    def error(self, endpoint: str, code: str) -> None:
        with self._lock:
            self.errors[(endpoint, code)] += 1

    def disconnect(self) -> None:
        with self._lock:
            self.disconnects += 1

    def add_faces(self, n: int) -> None:
        with self._lock:
            self.faces += n

    def render(self, holder: ModelHolder) -> str:
        with self._lock:
            lines = ["# HELP fer_requests_total HTTP requests by endpoint and status code.",
                     "# TYPE fer_requests_total counter"]
            lines += [f'fer_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP fer_request_duration_seconds Time from request start to the end of the response.",
                      "# TYPE fer_request_duration_seconds histogram"]
            for e in sorted(self.counts):
                lines += [f'fer_request_duration_seconds_bucket{{endpoint="{e}",le="{le}"}} {n}'
                          for le, n in zip(BUCKETS, self.buckets[e])]
                lines += [f'fer_request_duration_seconds_bucket{{endpoint="{e}",le="+Inf"}} {self.counts[e]}',
                          f'fer_request_duration_seconds_sum{{endpoint="{e}"}} {self.sums[e]:.6f}',
                          f'fer_request_duration_seconds_count{{endpoint="{e}"}} {self.counts[e]}']
            lines += ["# HELP fer_errors_total Refused or failed requests by endpoint and error code.",
                      "# TYPE fer_errors_total counter"]
            lines += [f'fer_errors_total{{endpoint="{e}",error="{c}"}} {n}' for (e, c), n in sorted(self.errors.items())]
            lines += ["# HELP fer_faces_total Faces classified.", "# TYPE fer_faces_total counter",
                      f"fer_faces_total {self.faces}",
                      "# HELP fer_requests_in_flight Requests being processed.", "# TYPE fer_requests_in_flight gauge",
                      f"fer_requests_in_flight {self.in_flight}",
                      "# HELP fer_client_disconnects_total Requests whose client went away before the answer "
                      "(not server errors).", "# TYPE fer_client_disconnects_total counter",
                      f"fer_client_disconnects_total {self.disconnects}"]
        current = holder.current
        lines += ["# HELP fer_model_ready 1 when a model is loaded and /predict answers.", "# TYPE fer_model_ready gauge",
                  f"fer_model_ready {int(current is not None)}",
                  "# HELP fer_model_reloads_total Times a new model version was swapped in while serving.",
                  "# TYPE fer_model_reloads_total counter", f"fer_model_reloads_total {holder.reloads}",
                  "# HELP fer_model_info The model version answering (value 1).", "# TYPE fer_model_info gauge"]
        if current is not None:
            lines.append(f'fer_model_info{{name="{_label(current.name)}",version="{_label(current.version or "")}"}} 1')
        lines += ["# HELP fer_detector_info The face detector in use (value 1); fallback=1 when yunet could not run "
                  "and Haar is used instead.", "# TYPE fer_detector_info gauge",
                  f'fer_detector_info{{detector="{_label(holder.detector.name)}",'
                  f'fallback="{int(holder.detector.fallback_reason is not None)}"}} 1']
        lines += ["# HELP fer_model_runtime_info What classifies: the exported graph, its INT8 graph or Keras (value 1).",
                  "# TYPE fer_model_runtime_info gauge"]
        if current is not None:
            rt = current.runtime
            lines.append(f'fer_model_runtime_info{{runtime="{_label(rt["runtime"])}",engine="{_label(rt["engine"])}"}} 1')
            batcher = current.predictor.batcher
            if batcher is not None:
                lines += ["# HELP fer_batches_total Classifier calls made by the micro-batcher.",
                          "# TYPE fer_batches_total counter", f"fer_batches_total {batcher.batches}",
                          "# HELP fer_batched_faces_total Faces classified through the micro-batcher.",
                          "# TYPE fer_batched_faces_total counter", f"fer_batched_faces_total {batcher.batched_faces}"]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class MetricsMiddleware:
    """Pure ASGI middleware (no body buffering): counts every request by endpoint and status, times it."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        endpoint = _endpoint_of(scope.get("path", ""))
        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.observe(endpoint, status, time.perf_counter() - start)


def error_response(status: int, code: str, detail: str, metrics: Metrics | None = None,
                   endpoint: str = "/predict") -> JSONResponse:
    if metrics is not None:
        metrics.error(endpoint, code)
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


async def _capped(stream: AsyncIterator[bytes], limit: int, max_bytes: int,
                  body_timeout: float) -> AsyncIterator[bytes]:
    """The request body, refused with 413 as soon as more than ``limit`` bytes have arrived and with 408 when no
    byte arrives for ``body_timeout`` seconds (or the whole body takes over 4x that: a drip-fed upload)."""
    import anyio

    total = 0
    iterator = stream.__aiter__()
    deadline = time.monotonic() + 4 * body_timeout
    while True:
        wait = min(body_timeout, deadline - time.monotonic())
        with anyio.move_on_after(max(wait, 0)) as scope:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
        if scope.cancelled_caught:
            raise ImageRejected(408, "body_timeout", f"the request body stopped arriving ({total:,} bytes in; "
                                                     f"timeout {body_timeout:g} s)")
        total += len(chunk)
        if total > limit:
            raise ImageRejected(413, "body_too_large", f"upload is over the limit of {max_bytes:,} bytes")
        yield chunk


async def read_image_bytes(request: Request, limits: Limits, body_timeout: float = DEFAULT_BODY_TIMEOUT) -> bytes:
    """The image from a multipart field ``image`` (or the only file) or from the raw body, size-capped."""
    content_type = request.headers.get("content-type", "").lower()
    multipart = content_type.startswith("multipart/form-data")
    limit = limits.max_bytes + (MULTIPART_OVERHEAD if multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ImageRejected(422, "bad_request", f"Content-Length {declared!r} is not a number") from None
        if size > limit:  # refused before reading a single byte of the body
            raise ImageRejected(413, "body_too_large", f"upload of {size:,} bytes is over the limit of "
                                                       f"{limits.max_bytes:,} bytes")
    stream = _capped(request.stream(), limit, limits.max_bytes, body_timeout)
    if not multipart:
        return b"".join([chunk async for chunk in stream])
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    try:
        form = await MultiPartParser(request.headers, stream, max_files=4, max_fields=16).parse()
    except MultiPartException as exc:
        raise ImageRejected(422, "bad_multipart", f"malformed multipart body: {exc.message}") from None

    try:
        field = form.get("image")
        if not isinstance(field, UploadFile):
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if len(files) != 1:
                raise ImageRejected(422, "no_image_field", "multipart body has no file field 'image' "
                                                           "(send it as: curl -F image=@photo.jpg ...)")
            field = files[0]
        data = await field.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            raise ImageRejected(413, "body_too_large", f"image is over the limit of {limits.max_bytes:,} bytes")
        return data
    finally:
        await form.close()


def create_app(holder: ModelHolder, limits: Limits = Limits(), *, body_timeout: float = DEFAULT_BODY_TIMEOUT,
               max_uploads: int = DEFAULT_MAX_UPLOADS) -> Any:
    """The ASGI app serving ``holder``'s model (wrapped in the metrics middleware)."""
    import anyio
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles

    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        holder.start()  # the alias poller runs only while the server does
        try:
            yield
        finally:
            holder.stop()

    app = FastAPI(title="fer-exp", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Facial expression recognition: faces found with OpenCV, classified by the fer-exp "
                              f"model ({', '.join(EXPRESSIONS)}).")
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(docs_assets_dir())), name="docs-assets")
    add_demo_page(app)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = {404: f"no such path: {request.url.path}",
                  405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        response = error_response(exc.status_code, code, detail, metrics, _endpoint(request))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return error_response(422, "bad_parameter", f"{where}: {first.get('msg', 'invalid')}"[:300], metrics,
                              _endpoint(request))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="fer-exp - docs",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")

    @app.post("/predict", openapi_extra={"requestBody": PREDICT_BODY},
              summary="Faces, labels and the 7 probabilities of one image",
              responses={200: {"model": PredictBody, "description": "the faces found (maybe none)"},
                         **_errors(408, 413, 415, 422, 500, 503)})
    async def predict(request: Request, detect: bool = True) -> JSONResponse:
        """Send the image as multipart field ``image`` or as the raw body; ``?detect=false`` classifies the whole
        image as one face (the fast path for callers who send face crops: no detection; 48x48 crops skip the
        resize too)."""
        t0 = time.perf_counter()
        model = holder.current  # one reference for the whole request: a reload mid-request does not affect it
        if model is None:
            return error_response(503, "no_model", holder.not_ready_reason or "no model loaded", metrics)
        if metrics.uploads >= max_uploads:  # the event loop is single-threaded: check and increment are atomic
            response = error_response(503, "too_many_uploads", f"{max_uploads} uploads are already being "
                                                               "received; retry shortly", metrics)
            response.headers["Retry-After"] = "1"
            return response
        metrics.uploads += 1
        try:
            try:
                data = await read_image_bytes(request, limits, body_timeout)
            finally:
                metrics.uploads -= 1

            def work() -> dict[str, Any]:  # one hop to a worker thread: decode, detect and classify together
                image = decode_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
                return model.answer(image, detect, started=t0)

            body = await anyio.to_thread.run_sync(work)
        except ImageRejected as exc:
            response = error_response(exc.status, exc.code, str(exc), metrics)
            if exc.status in (408, 413):  # the rest of the body is never read: close rather than keep the socket
                response.headers["Connection"] = "close"
            return response
        except ClientDisconnect:  # the client went away: not a server error, one line, no traceback
            metrics.disconnect()
            log.warning("client %s disconnected during the upload to /predict", _client(request))
            return JSONResponse({"error": "client_disconnected", "detail": "client went away"},
                                status_code=CLIENT_CLOSED)
        except Exception as exc:  # noqa: BLE001 - one bad request must never take the server down
            log.exception("predict failed")
            return error_response(500, "internal_error", f"{type(exc).__name__}: {str(exc)[:200]}", metrics)
        metrics.add_faces(len(body["faces"]))
        return JSONResponse(body)

    @app.get("/health", summary="Readiness, the model version answering and what runs it",
             responses={200: {"model": HealthBody, "description": "ready"},
                        503: {"model": HealthBody, "description": "not ready (no model yet); same shape"}})
    async def health() -> JSONResponse:
        current = holder.current
        batcher = current.predictor.batcher if current is not None else None
        body: dict[str, Any] = {
            "ready": current is not None, "status": "ready" if current is not None else "not ready",
            "model": current.info() if current is not None else None,
            "runtime": current.runtime if current is not None else None,
            "batching": None if batcher is None else {"window_ms": batcher.window * 1000,
                                                       "max_batch": batcher.max_batch, "batches": batcher.batches,
                                                       "faces": batcher.batched_faces},
            "requested": holder.ref.uri,
            "detector": holder.detector.name, "detector_fallback": holder.detector.fallback_reason,
            "reason": None if current is not None else holder.not_ready_reason,
            "last_error": holder.last_error, "last_check": holder.last_check, "poll_seconds": holder.poll_seconds,
            "reloads": holder.reloads}
        return JSONResponse(body, status_code=200 if current is not None else 503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics_endpoint() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(holder), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/reload", summary="Look up the alias now and swap in a new version if it moved",
              responses={200: {"model": ReloadBody, "description": "the model now answering"}, **_errors(500, 503)})
    async def reload() -> JSONResponse:
        before = holder.current
        try:
            changed = await anyio.to_thread.run_sync(holder.refresh)
        except Exception as exc:  # noqa: BLE001 - report, keep serving the old version
            holder.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
            return error_response(500, "reload_failed", holder.last_error, metrics, "/reload")
        current = holder.current
        if current is None:
            return error_response(503, "no_model", holder.not_ready_reason or "no model loaded", metrics, "/reload")
        return JSONResponse({"changed": changed, "model": current.info(),
                             "previous": before.info() if before is not None else None})

    return MetricsMiddleware(app, metrics)


def _endpoint(request: Request) -> str:
    return _endpoint_of(request.url.path)


def _endpoint_of(path: str) -> str:
    if path in _ENDPOINTS:
        return path
    for prefix in (DOCS_ASSETS, DEMO_ASSETS):
        if path.startswith(prefix + "/"):
            return prefix
    return "other"


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def docs_assets_dir() -> Path:
    """Swagger UI's JS, CSS and icon, shipped by the installed ``fastapi-offline`` package (no CDN)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


#: Seconds a client has to send a request's complete headers (from connecting, or from the end of the previous
#: response on a kept-alive connection): uvicorn and h11 have no such limit, so a client adding a header line every
#: few seconds (slowloris) held its connection, and 20,000 of them its file descriptors, for ever.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Open connections at most (further ones first evict the oldest one still sending its headers); lowered to the
#: process's file-descriptor limit less a reserve, so that accept() never fails with EMFILE.
DEFAULT_MAX_CONNECTIONS = 1000
_FD_RESERVE = 256
#: At most one log line per this many seconds for each kind of refused connection (a count of the ones in between).
LOG_EVERY = 10.0


class _Bounded:
    """One log line per ``LOG_EVERY`` seconds per kind, saying how many happened since the last line: a flood of
    slow clients or failed accepts must not write one line (or one traceback) each."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.last: dict[str, float] = {}

    def __call__(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        now = time.monotonic()
        if now - self.last.get(kind, -LOG_EVERY) >= LOG_EVERY:
            log.warning("%s (%d since the last such line)", message, self.counts[kind])
            self.counts[kind] = 0
            self.last[kind] = now


def max_connections_for(wanted: int) -> int:
    """``wanted``, lowered to the file-descriptor limit less a reserve (raised to its hard limit first)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return max(16, min(wanted, soft - _FD_RESERVE)) if soft != resource.RLIM_INFINITY else wanted


def bounded_exception_handler(loop: Any, context: dict[str, Any]) -> None:
    """The event loop's exception handler: failed accepts (EMFILE and the like: asyncio logs a traceback for each,
    up to the backlog per wake-up) as bounded one-line logs; anything else as asyncio would."""
    if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
        _LOGGED("accept", f"cannot accept connections: {context.get('exception')}")
        return
    loop.default_exception_handler(context)


_LOGGED = _Bounded()


def json_error_protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                        max_connections: int = DEFAULT_MAX_CONNECTIONS) -> type:
    """uvicorn's h11 protocol, answering requests it cannot parse (a Content-Length that is not a number, a bad
    request line) with the JSON error shape instead of its plain-text 400, closing a connection whose request
    headers are not complete within ``header_timeout`` seconds (408), and keeping at most ``max_connections`` open:
    a new one evicts the oldest connection still sending its headers (or is closed with 503 when none is)."""
    import json

    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    def raw_response(status: str, code: str, detail: str) -> bytes:
        body = json.dumps({"error": code, "detail": detail}).encode()
        return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode() + body

    timed_out = raw_response("408 Request Timeout", "header_timeout",
                             f"request headers not complete within {header_timeout:g} s")
    full = raw_response("503 Service Unavailable", "too_many_connections",
                        f"the server holds {max_connections} connections; retry")

    #: Connections still sending a request's headers, oldest first (a dict keeps insertion order).
    waiting: dict[Any, None] = {}

    class JsonErrorH11Protocol(H11Protocol):
        _deadline: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                oldest = next((c for c in waiting if c is not self), None)
                if oldest is not None:
                    oldest._drop(timed_out, "evict", f"over {max_connections} connections: closed the oldest still "
                                                      "sending its request headers")
                else:
                    self._drop(full, "full", f"over {max_connections} connections, none idle: refused one (503)")
                    return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expired)
            waiting[self] = None

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            waiting.pop(self, None)

        def _expired(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE:
                self._drop(timed_out, "slow", f"closed a connection whose request headers were not complete "
                                              f"within {header_timeout:g} s (slow client)")
            else:
                waiting.pop(self, None)

        def _drop(self, reply: bytes, kind: str, message: str) -> None:
            self._disarm()
            _LOGGED(kind, message)
            if not self.transport.is_closing():
                with contextlib.suppress(Exception):
                    self.transport.write(reply)
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
                self._disarm()  # the headers are in (the body has its own --body-timeout)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The next request on a kept-alive connection gets the same time for its headers.
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            body = json.dumps({"error": "bad_request", "detail": f"malformed HTTP request: {msg}"}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                       (b"content-length", str(len(body)).encode())]
            try:
                self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers,
                                                                 reason=b"Bad Request")))
                self.transport.write(self.conn.send(h11.Data(data=body)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:  # the connection is in no state for an answer
                pass
            self.transport.close()

    return JsonErrorH11Protocol


def run_server(config: Any, sock: Any) -> None:
    """``uvicorn.Server(config).run`` on the listening socket ``sock``, with ``bounded_exception_handler`` on its
    event loop (installed before the first accept)."""
    import asyncio

    import uvicorn

    class BoundedServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            asyncio.get_running_loop().set_exception_handler(bounded_exception_handler)
            await super().startup(sockets)

    BoundedServer(config).run(sockets=[sock])
