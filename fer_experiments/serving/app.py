"""The REST app: ``POST /predict``, ``GET /health``, ``GET /metrics`` (Prometheus text), ``POST /reload``, ``/docs``.

Bad input never crashes a request: every refusal is a JSON ``{"error": <code>, "detail": <one line>}`` with
413 (upload over ``max_bytes``, refused from Content-Length before any byte is read and by a cap on the streamed
read; or image dimensions over ``max_pixels``), 415 (not an image), 422 (empty body, no image field, damaged
image) or 503 (no model behind the alias yet). CPU work (decode, detect, classify) runs in worker threads so the
event loop keeps accepting requests.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from fer_experiments import EXPRESSIONS, __version__
from fer_experiments.serving.images import ImageRejected, decode_image
from fer_experiments.serving.predictor import Limits, ModelHolder

log = logging.getLogger("fer_experiments.serving")

#: Room for multipart boundaries and part headers on top of the image bytes.
MULTIPART_OVERHEAD = 64 * 1024
#: Latency histogram buckets (seconds).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ENDPOINTS = ("/predict", "/health", "/metrics", "/reload", "/docs", "/openapi.json")

PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": {"type": "string", "format": "binary"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


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
                      f"fer_requests_in_flight {self.in_flight}"]
        current = holder.current
        lines += ["# HELP fer_model_ready 1 when a model is loaded and /predict answers.", "# TYPE fer_model_ready gauge",
                  f"fer_model_ready {int(current is not None)}",
                  "# HELP fer_model_reloads_total Times a new model version was swapped in while serving.",
                  "# TYPE fer_model_reloads_total counter", f"fer_model_reloads_total {holder.reloads}",
                  "# HELP fer_model_info The model version answering (value 1).", "# TYPE fer_model_info gauge"]
        if current is not None:
            lines.append(f'fer_model_info{{name="{_label(current.name)}",version="{_label(current.version or "")}"}} 1')
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

        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"
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


async def _capped(stream: AsyncIterator[bytes], limit: int, max_bytes: int) -> AsyncIterator[bytes]:
    """The request body, refused with 413 as soon as more than ``limit`` bytes have arrived."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise ImageRejected(413, "body_too_large", f"upload is over the limit of {max_bytes:,} bytes")
        yield chunk


async def read_image_bytes(request: Request, limits: Limits) -> bytes:
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
    stream = _capped(request.stream(), limit, limits.max_bytes)
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


def create_app(holder: ModelHolder, limits: Limits = Limits()) -> Any:
    """The ASGI app serving ``holder``'s model (wrapped in the metrics middleware)."""
    import anyio

    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        holder.start()  # the alias poller runs only while the server does
        try:
            yield
        finally:
            holder.stop()

    app = FastAPI(title="fer-exp", version=__version__, lifespan=lifespan,
                  description="Facial expression recognition: faces found with OpenCV, classified by the fer-exp "
                              f"model ({', '.join(EXPRESSIONS)}).")

    @app.post("/predict", openapi_extra={"requestBody": PREDICT_BODY},
              summary="Faces, labels and the 7 probabilities of one image",
              responses={413: {"description": "upload or image dimensions over the limit"},
                         415: {"description": "not a supported image"},
                         422: {"description": "empty body, no image field or damaged image"},
                         503: {"description": "no model behind the alias yet"}})
    async def predict(request: Request, detect: bool = True) -> JSONResponse:
        """Send the image as multipart field ``image`` or as the raw body; ``?detect=false`` classifies the whole
        image as one face (for 48x48 crops)."""
        t0 = time.perf_counter()
        model = holder.current  # one reference for the whole request: a reload mid-request does not affect it
        if model is None:
            return error_response(503, "no_model", holder.not_ready_reason or "no model loaded", metrics)
        try:
            data = await read_image_bytes(request, limits)

            def work() -> dict[str, Any]:  # one hop to a worker thread: decode, detect and classify together
                image = decode_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
                return model.answer(image, detect, started=t0)

            body = await anyio.to_thread.run_sync(work)
        except ImageRejected as exc:
            return error_response(exc.status, exc.code, str(exc), metrics)
        except Exception as exc:  # noqa: BLE001 - one bad request must never take the server down
            log.exception("predict failed")
            return error_response(500, "internal_error", f"{type(exc).__name__}: {str(exc)[:200]}", metrics)
        metrics.add_faces(len(body["faces"]))
        return JSONResponse(body)

    @app.get("/health", summary="Readiness and the model version answering")
    async def health() -> JSONResponse:
        current = holder.current
        body: dict[str, Any] = {
            "ready": current is not None, "status": "ready" if current is not None else "not ready",
            "model": current.info() if current is not None else None, "requested": holder.ref.uri,
            "detector": holder.detector.name, "reason": None if current is not None else holder.not_ready_reason,
            "last_error": holder.last_error, "last_check": holder.last_check, "poll_seconds": holder.poll_seconds,
            "reloads": holder.reloads}
        return JSONResponse(body, status_code=200 if current is not None else 503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics_endpoint() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(holder), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/reload", summary="Look up the alias now and swap in a new version if it moved")
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
