"""Safe decoding for serving: limits, bombs, EXIF orientation, formats, and pixel identity with training's decode."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from fer_experiments.errors import ConfigError, DataError
from fer_experiments.serving.detector import Box, DetectorConfig, FaceDetector, cascade_path
from fer_experiments.serving.images import ImageRejected, decode_image, to_face_input
from fer_experiments.serving.predictor import parse_model_uri
from fer_experiments.serving.pyfunc import input_values, to_bytes

RNG = np.random.default_rng(3)


def _encode(img: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok
    return buf.tobytes()


def _pil_bytes(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid-looking PNG that declares ``width`` x ``height`` 1-bit pixels but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------ same pixels as training
@pytest.mark.parametrize("kind", ["gray48", "colour_odd_jpeg", "bgra_png", "gray16_png", "gray_alpha_png", "big_png"])
def test_crop_conversion_matches_training_decode(tmp_path: Path, kind: str) -> None:
    """decode_image + to_face_input gives exactly the pixels fer_experiments.data.folders._decode gives in training."""
    from fer_experiments.data.folders import _decode

    if kind == "gray48":
        data = _encode(RNG.integers(0, 256, (48, 48), dtype=np.uint8), ".png")
    elif kind == "colour_odd_jpeg":
        data = _encode(RNG.integers(0, 256, (61, 97, 3), dtype=np.uint8), ".jpg")
    elif kind == "bgra_png":
        data = _encode(RNG.integers(0, 256, (50, 53, 4), dtype=np.uint8), ".png")
    elif kind == "gray16_png":
        data = _encode(RNG.integers(0, 65536, (40, 44), dtype=np.uint16), ".png")
    elif kind == "gray_alpha_png":
        data = _pil_bytes(Image.fromarray(RNG.integers(0, 256, (33, 47, 2), dtype=np.uint8), "LA"), "PNG")
    else:
        data = _encode(RNG.integers(0, 256, (300, 211, 3), dtype=np.uint8), ".png")
    path = tmp_path / f"{kind}.{'jpg' if 'jpeg' in kind else 'png'}"
    path.write_bytes(data)
    training, _ = _decode(path)
    serving = to_face_input(decode_image(data).gray)
    assert serving.dtype == np.uint8 and serving.shape == (48, 48)
    np.testing.assert_array_equal(serving, training)


# ------------------------------------------------------------------------------------------ EXIF orientation
@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "JPEG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(fmt: str, orientation: int) -> None:
    rgb = RNG.integers(0, 256, (30, 52, 3), dtype=np.uint8)
    rgb[:5, :9] = (255, 0, 0)  # an asymmetric mark
    exif = Image.Exif()
    exif[0x0112] = orientation
    kwargs = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    data = _pil_bytes(Image.fromarray(rgb), fmt, exif=exif, **kwargs)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    decoded = decode_image(data, keep_colour=True)
    assert decoded.orientation == orientation
    got = decoded.bgr[..., ::-1]
    assert got.shape == expected.shape
    if fmt == "JPEG":  # two JPEG decoders: equal up to rounding
        assert np.abs(got.astype(int) - expected.astype(int)).mean() < 2.0
    else:
        np.testing.assert_array_equal(got, expected)
    assert decoded.gray.shape == expected.shape[:2]


# ------------------------------------------------------------------------------------------------ refusals
def test_empty_body_is_422() -> None:
    with pytest.raises(ImageRejected) as err:
        decode_image(b"")
    assert err.value.status == 422 and err.value.code == "empty_body"
    assert isinstance(err.value, DataError)


# A bare PNG or GIF signature is a damaged image of that format: 422 (test_damaged_image_of_a_known_format...).
@pytest.mark.parametrize("data", [b"hello, not an image", bytes(range(256)) * 10, b'{"image": "x"}'])
def test_non_image_bytes_are_415(data: bytes) -> None:
    with pytest.raises(ImageRejected) as err:
        decode_image(data)
    assert err.value.status == 415 and "not a supported image" in str(err.value)


def test_unsupported_format_is_415() -> None:
    data = _pil_bytes(Image.new("RGB", (20, 20)), "ICO")
    with pytest.raises(ImageRejected) as err:
        decode_image(data)
    assert err.value.status == 415 and "ICO" in str(err.value)


def test_over_byte_limit_is_413() -> None:
    data = _encode(np.zeros((10, 10), np.uint8), ".png")
    with pytest.raises(ImageRejected) as err:
        decode_image(data, max_bytes=len(data) - 1)
    assert err.value.status == 413 and err.value.code == "body_too_large"


@pytest.mark.parametrize("size", [(50_000, 50_000), (10_000, 10_000), (7_000, 6_000)])
def test_decompression_bomb_refused_from_header(size: tuple[int, int]) -> None:
    data = _png_header_only(*size)
    assert len(data) < 200
    t0 = time.perf_counter()
    with pytest.raises(ImageRejected) as err:
        decode_image(data)
    assert time.perf_counter() - t0 < 0.5  # nothing was decoded
    assert err.value.status == 413 and err.value.code == "image_too_large"


def test_pixel_limit_is_configurable() -> None:
    data = _encode(np.zeros((100, 100), np.uint8), ".png")
    assert decode_image(data, max_pixels=10_000).gray.shape == (100, 100)
    with pytest.raises(ImageRejected):
        decode_image(data, max_pixels=9_999)


def test_truncated_image_is_refused_or_partial() -> None:
    full = _encode(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), ".png")
    with pytest.raises(ImageRejected) as err:
        decode_image(full[: len(full) // 2])
    assert err.value.status in (415, 422)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP", "PPM"])
def test_other_formats_decode(fmt: str) -> None:
    rgb = RNG.integers(0, 256, (21, 35, 3), dtype=np.uint8)
    decoded = decode_image(_pil_bytes(Image.fromarray(rgb), fmt), keep_colour=True)
    assert decoded.gray.shape == (21, 35) and decoded.bgr.shape == (21, 35, 3) and decoded.format == fmt


def test_colour_and_odd_sizes() -> None:
    bgr = RNG.integers(0, 256, (481, 641, 3), dtype=np.uint8)
    decoded = decode_image(_encode(bgr, ".png"), keep_colour=True)
    np.testing.assert_array_equal(decoded.bgr, bgr)
    np.testing.assert_array_equal(decoded.gray, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    assert (decoded.width, decoded.height) == (641, 481)


# ------------------------------------------------------------------------------------------------ detector
def test_detector_specs(tmp_path: Path) -> None:
    assert cascade_path("haar").name == "haarcascade_frontalface_default.xml"
    assert cascade_path("haar-alt").name == "haarcascade_frontalface_alt2.xml"
    assert cascade_path(str(cascade_path("haar-alt"))).is_file()
    with pytest.raises(ConfigError, match="haar, haar-alt"):
        cascade_path("yunet")
    bad = tmp_path / "bad.xml"
    bad.write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(ConfigError, match="not a loadable cascade"):
        FaceDetector(DetectorConfig(spec=str(bad)))
    with pytest.raises(ConfigError, match="detect-size"):
        DetectorConfig(detect_size=10)


def test_detector_finds_nothing_in_flat_or_tiny_images() -> None:
    det = FaceDetector()
    assert det.detect(np.full((480, 640), 128, np.uint8)) == []
    assert det.detect(np.zeros((10, 10), np.uint8)) == []


def test_box_expand_clips_to_image() -> None:
    assert Box(10, 10, 100, 100).expand(0.1, 640, 480) == Box(0, 0, 120, 120)
    assert Box(600, 400, 100, 100).expand(0.0, 640, 480) == Box(600, 400, 40, 80)


# ------------------------------------------------------------------------------------- model refs and pyfunc
def test_parse_model_uri(tmp_path: Path) -> None:
    ref = parse_model_uri("models:/fer-cnn@champion")
    assert (ref.kind, ref.name, ref.alias, ref.moves) == ("alias", "fer-cnn", "champion", True)
    ref = parse_model_uri("models:/fer-cnn/3")
    assert (ref.kind, ref.version, ref.moves) == ("version", "3", False)
    assert parse_model_uri("runs:/abc/model").kind == "other"
    f = tmp_path / "m.keras"
    f.write_bytes(b"x")
    assert parse_model_uri(str(f)).kind == "file"
    with pytest.raises(ConfigError, match="no such file"):
        parse_model_uri(str(tmp_path / "missing.keras"))


def test_pyfunc_inputs() -> None:
    import pandas as pd

    raw = b"\x89PNG..."
    encoded = base64.encodebytes(raw).decode()  # MLflow's encoding: with newlines
    assert to_bytes(encoded) == raw and to_bytes(raw) == raw
    with pytest.raises(ImageRejected, match="base64"):
        to_bytes("not base64!")
    assert input_values(pd.DataFrame({"image": [raw, raw]})) == [raw, raw]
    assert input_values(pd.DataFrame({"x": [raw]})) == [raw]
    assert input_values({"image": [raw]}) == [raw] and input_values(raw) == [raw] and input_values([raw]) == [raw]


# ------------------------------------------------------------------------------------------- server socket
def test_listen_socket_sets_tcp_nodelay_and_reports_a_busy_port() -> None:
    """Without TCP_NODELAY every kept-alive request waited ~40 ms for a delayed ACK (bench/serve_latency.py)."""
    import socket

    from fer_experiments.cli.serve import listen_socket

    sock = listen_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only on such sockets
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            conn, _ = sock.accept()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            listen_socket("127.0.0.1", port)
    finally:
        sock.close()


# ------------------------------------------------------------------- damaged, not unknown (issue 11 point 6)
@pytest.mark.parametrize("kind", ["png_0x0", "jpeg_200_bytes", "gif_header_only", "bmp_header_only",
                                  "png_signature_only"])
def test_damaged_image_of_a_known_format_is_422_not_415(kind: str) -> None:
    """A 0x0 PNG or a JPEG cut to 200 bytes is a damaged image (422), not an unknown type (415)."""
    import cv2

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    assert ok
    data = {
        "png_0x0": b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""),
        "jpeg_200_bytes": jpeg.tobytes()[:200],
        "gif_header_only": b"GIF89a" + b"\0" * 20,
        "bmp_header_only": b"BM" + struct.pack("<I", 1000) + b"\0\0\0\0" + b"\x36\0\0\0",
        "png_signature_only": b"\x89PNG\r\n\x1a\n",
    }[kind]
    with pytest.raises(ImageRejected) as info:
        decode_image(data)
    assert (info.value.status, info.value.code) == (422, "invalid_image"), str(info.value)
    assert "damaged" in str(info.value) and "0x" not in str(info.value)


@pytest.mark.parametrize("data", [b"hello, I am not a photo", b"BMW is a car", b"P5x", b"PK\x03\x04zip"])
def test_bytes_of_no_known_format_stay_415(data: bytes) -> None:
    with pytest.raises(ImageRejected) as info:
        decode_image(data)
    assert (info.value.status, info.value.code) == (415, "unsupported_media_type")


def test_pyfunc_wrapper_keeps_the_detection_settings_it_was_logged_with() -> None:
    import keras

    from fer_experiments.serving.pyfunc import LEGACY_MIN_NEIGHBORS, LEGACY_SCALE_FACTOR, ServiceModel

    inputs = keras.Input((48, 48, 1))
    model = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs)))
    common = {"model_name": "fer-cnn", "model_version": "1", "runtime": "keras"}
    # A wrapper logged before the settings were stored: the defaults of that time, not today's.
    old = ServiceModel.from_keras(model, detector="haar", detect_size=360, **common)
    cfg = old.loaded.predictor.detector.config
    assert (cfg.spec, cfg.detect_size, cfg.scale_factor, cfg.min_neighbors) == (
        "haar", 360, LEGACY_SCALE_FACTOR, LEGACY_MIN_NEIGHBORS)
    # A wrapper logged now stores them (serving/mlflow_service.py): they are used as stored, whatever today's are.
    new = ServiceModel.from_keras(model, detector="haar", detect_size=280, scale_factor=1.1, min_neighbors=3, **common)
    assert new.loaded.predictor.detector.config == DetectorConfig(spec="haar", detect_size=280, scale_factor=1.1,
                                                                  min_neighbors=3)
