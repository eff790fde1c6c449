"""Safe image decoding for prediction: size limits, decompression bombs, EXIF orientation, training's conversion.

Every check happens before any pixel is decoded: the byte count, then the format and the pixel dimensions read
from the header (Pillow opens lazily), and only then OpenCV decodes the pixels, the same decoder
(``cv2.imdecode(..., IMREAD_UNCHANGED)``) that turns an image tree into training data.
Faces reach the model through ``to_gray`` + ``to_face_input``, the steps of ``fer_experiments.data.folders._decode``
(bit depth, then channels, then an INTER_AREA resize to 48x48), so serving cannot drift from training:
``tests/unit/test_serving_images.py`` checks both give identical pixels.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np

from fer_experiments import IMAGE_SIZE
from fer_experiments.errors import DataError

#: Largest upload accepted (bytes).
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
#: Largest decoded image accepted (pixels): 40 MP covers any phone photo; a bomb of 50k x 50k is refused.
DEFAULT_MAX_PIXELS = 40_000_000
#: Formats whose header Pillow reads and whose pixels OpenCV (or Pillow) decodes.
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM")
_EXIF_ORIENTATION = 0x0112
#: Leading bytes of the supported formats: bytes that start like one of them but do not open are a damaged image
#: of that format (422), not an unknown type (415).
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def sniff_format(data: bytes) -> str | None:
    """The supported format ``data`` claims to be from its first bytes (None when it looks like none of them)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and data[6:10] == b"\0\0\0\0":  # BMP: two reserved zero words after the file size
        return "BMP"
    if len(data) > 2 and data[:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return "PPM"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


class ImageRejected(DataError):
    """Bytes that are not an acceptable image; ``status`` is the HTTP answer and ``code`` a stable error name."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An upright image: ``gray`` (H, W) uint8 always, ``bgr`` (H, W, 3) uint8 when asked for (to draw on)."""

    gray: np.ndarray
    bgr: np.ndarray | None
    format: str
    orientation: int

    @property
    def width(self) -> int:
        return int(self.gray.shape[1])

    @property
    def height(self) -> int:
        return int(self.gray.shape[0])


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Bit depth as in training: 16-bit scaled to 8 bits (// 257), anything else clipped to 0-255."""
    if img.dtype == np.uint8:
        return img
    return (img // 257).astype(np.uint8) if img.dtype == np.uint16 else np.clip(img, 0, 255).astype(np.uint8)


def to_gray(img: np.ndarray) -> np.ndarray:
    """A decoded OpenCV image (gray, gray+alpha, BGR or BGRA, any bit depth) -> (H, W) uint8, as in training."""
    import cv2

    img = to_uint8(img)
    if img.ndim == 3:
        channels = img.shape[2]
        if channels in (1, 2):  # gray, or gray + alpha
            return np.ascontiguousarray(img[:, :, 0])
        return cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if channels == 4 else cv2.COLOR_BGR2GRAY)
    return img


def to_bgr(img: np.ndarray) -> np.ndarray:
    """A decoded OpenCV image -> (H, W, 3) uint8 BGR, for drawing boxes on."""
    import cv2

    img = to_uint8(img)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    channels = img.shape[2]
    if channels in (1, 2):
        return cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR) if channels == 4 else img


def to_face_input(gray: np.ndarray) -> np.ndarray:
    """A grayscale face crop -> the (48, 48) uint8 the model takes: training's INTER_AREA resize."""
    import cv2

    if gray.shape == (IMAGE_SIZE, IMAGE_SIZE):
        return gray
    return cv2.resize(gray, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored with EXIF ``orientation`` (1-8) upright, exactly as ``PIL.ImageOps.exif_transpose``."""
    if orientation == 2:
        out = img[:, ::-1]
    elif orientation == 3:
        out = img[::-1, ::-1]
    elif orientation == 4:
        out = img[::-1]
    elif orientation == 5:
        out = img.swapaxes(0, 1)
    elif orientation == 6:
        out = np.rot90(img, k=-1)
    elif orientation == 7:
        out = np.rot90(img, k=2).swapaxes(0, 1)
    elif orientation == 8:
        out = np.rot90(img, k=1)
    else:
        return img
    return np.ascontiguousarray(out)


def decode_image(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
                 keep_colour: bool = False) -> DecodedImage:
    """Check and decode image bytes; ImageRejected (413 / 415 / 422) with a one-line reason otherwise."""
    import cv2
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageRejected(422, "empty_body", "empty body: expected image bytes (JPEG, PNG, ...)")
    if len(data) > max_bytes:
        raise ImageRejected(413, "body_too_large", f"upload of {len(data):,} bytes is over the limit of "
                                                   f"{max_bytes:,} bytes")
    # Header only: Pillow opens lazily, so a bomb is refused from its declared size before any pixel is decoded.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            header = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:  # Pillow's own hard limit (~179 MP), far above ours
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
            raise ImageRejected(413, "image_too_large", f"image is {size}; the limit is {max_pixels:,}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            claimed = sniff_format(data)
            if claimed is not None:  # e.g. a 0x0 PNG, or a JPEG cut to 200 bytes
                why = "cannot be decoded" if isinstance(exc, UnidentifiedImageError) else str(exc)[:120]
                raise ImageRejected(422, "invalid_image", f"damaged {claimed} image ({len(data):,} bytes: "
                                                          f"{why})") from None
            raise ImageRejected(415, "unsupported_media_type", "not a supported image (expected "
                                + ", ".join(SUPPORTED_FORMATS) + ")") from None
    with header:
        fmt = header.format or "?"
        width, height = header.size
        if fmt not in SUPPORTED_FORMATS:
            raise ImageRejected(415, "unsupported_media_type", f"{fmt} images are not supported (expected "
                                + ", ".join(SUPPORTED_FORMATS) + ")")
        if width <= 0 or height <= 0:
            raise ImageRejected(422, "invalid_image", f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageRejected(413, "image_too_large", f"image is {width}x{height} pixels "
                                f"({width * height:,}); the limit is {max_pixels:,}")
        orientation = _orientation(header)
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None or img.size == 0:
            img = _pil_pixels(header)  # formats or variants OpenCV lacks (e.g. GIF); already size-checked
    if img.shape[0] * img.shape[1] > max_pixels:  # a header that lied about its size
        raise ImageRejected(413, "image_too_large", f"image is {img.shape[1]}x{img.shape[0]} pixels; the limit "
                            f"is {max_pixels:,}")
    # TIFF readers (OpenCV's and Pillow's) already return the pixels upright; every other format needs turning.
    turn = 1 if fmt == "TIFF" else orientation
    gray = apply_orientation(to_gray(img), turn)
    bgr = apply_orientation(to_bgr(img), turn) if keep_colour else None
    return DecodedImage(gray=gray, bgr=bgr, format=fmt, orientation=orientation)


def _orientation(header: "object") -> int:
    """The EXIF orientation tag (1 when absent or unreadable), read without decoding pixels."""
    try:
        if getattr(header, "format", None) == "PNG" and "exif" not in header.info:  # type: ignore[attr-defined]
            return 1  # Pillow would decode the whole PNG to look for a late eXIf chunk; orientation on PNG is rare
        value = header.getexif().get(_EXIF_ORIENTATION, 1)  # type: ignore[attr-defined]
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not reject an otherwise good photo
        return 1


def _pil_pixels(header: "object") -> np.ndarray:
    """Decode with Pillow as a fallback, into OpenCV's channel order."""
    try:
        header.seek(0)  # type: ignore[attr-defined]
        im = header.convert("RGBA" if "A" in header.getbands() else "RGB")  # type: ignore[attr-defined]
        arr = np.asarray(im)
    except Exception as exc:  # noqa: BLE001 - truncated or damaged data of a known format
        raise ImageRejected(422, "invalid_image", f"damaged or truncated image ({type(exc).__name__}: "
                                                  f"{str(exc)[:120]})") from None
    return arr[..., [2, 1, 0, 3]] if arr.shape[-1] == 4 else arr[..., ::-1]


def encode_image(bgr: np.ndarray, suffix: str) -> bytes:
    """Encode an image for writing (``.jpg``/``.png``/...); PNG for suffixes OpenCV cannot write."""
    import cv2

    ok, buf = cv2.imencode(suffix if suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp") else ".png", bgr)
    if not ok:
        raise DataError(f"could not encode the annotated image as {suffix}")
    return buf.tobytes()
