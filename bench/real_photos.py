"""Real photos for detection benchmarks and tests, assembled from images that ship inside installed packages.

Nothing is drawn or generated: every face is a real photograph. Sources (all in wheels on PyPI):
  * matplotlib ``mpl-data/sample_data/grace_hopper.jpg`` (a portrait; matplotlib is a runtime dependency),
  * scikit-image ``skimage/data``: ``astronaut.png`` (portrait), ``camera.png`` (the cameraman: a 3/4 profile
    looking into a viewfinder), ``lfw_subset.npy`` (100 real 25x25 faces from Labeled Faces in the Wild and 100
    non-face patches of the same photos), and face-free photos (cat, coffee, rocket, coins, bricks, grass, ...),
  * scikit-learn ``datasets/images``: ``china.jpg`` (a temple), ``flower.jpg``.
Every photo is 640x480 (grey; detection runs on grey). Faces are the three portraits letterboxed onto real
backgrounds, face crops of those portraits and LFW faces pasted at 48-80 px onto real photos ("a group"), and
LFW faces enlarged to 80 px (100 px tiles) on a brick wall: 23 faces in 6 photos; 12 face-free photos.

Ground truth is a square face box (brows to chin, the framing of a Haar box) in pixels of the 640x480 photo: set
by hand for the portraits, and carried through the scaling and pasting for the others. scikit-image is in the
``test`` extra; ``available()`` says whether the sources are here.

This module imports nothing of bench/_common (no side effects), so tests can import it too.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

W, H = 640, 480
#: Hand-set square face boxes (x, y, side) in the source images.
PORTRAIT_FACES = {"grace_hopper": (168, 122, 200), "astronaut": (172, 66, 100), "camera": (188, 116, 75)}


@dataclass(frozen=True)
class Photo:
    name: str
    gray: np.ndarray  # (480, 640) uint8
    faces: tuple[tuple[int, int, int, int], ...]  # x, y, w, h


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _paths() -> dict[str, Path]:
    mpl, sk, skl = _package_dir("matplotlib"), _package_dir("skimage"), _package_dir("sklearn")
    out = {}
    if mpl is not None:
        out["grace_hopper"] = mpl / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    if skl is not None:
        out["china"] = skl / "datasets" / "images" / "china.jpg"
        out["flower"] = skl / "datasets" / "images" / "flower.jpg"
    if sk is not None:
        for name in ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "coins.png",
                     "brick.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "motorcycle_left.png",
                     "page.png", "horse.png", "lfw_subset.npy"):
            out[name.split(".")[0]] = sk / "data" / name
    return out


def available() -> str | None:
    """None when every source image is installed, else what is missing."""
    missing = [n for n, p in _paths().items() if not p.is_file()]
    if len(_paths()) < 17:
        missing.append("matplotlib, scikit-image or scikit-learn")
    return ", ".join(missing) or None


def _gray(name: str) -> np.ndarray:
    import cv2

    img = cv2.imread(str(_paths()[name]), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FileNotFoundError(_paths()[name])
    return img


def _lfw() -> tuple[np.ndarray, np.ndarray]:
    """(100 faces, 100 non-faces), 25x25 uint8."""
    arr = (np.load(_paths()["lfw_subset"]) * 255).round().astype(np.uint8)
    return arr[:100], arr[100:]


def _background(name: str) -> np.ndarray:
    """A real photo covering 640x480 (scaled to cover, centre crop)."""
    import cv2

    img = _gray(name)
    s = max(W / img.shape[1], H / img.shape[0])
    img = cv2.resize(img, (max(W, round(img.shape[1] * s)), max(H, round(img.shape[0] * s))),
                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    y0, x0 = (img.shape[0] - H) // 2, (img.shape[1] - W) // 2
    return np.ascontiguousarray(img[y0:y0 + H, x0:x0 + W])


def _portrait(name: str, background: str) -> Photo:
    """The portrait scaled to 480 px high, centred on a real background."""
    import cv2

    img = _gray(name)
    s = H / img.shape[0]
    img = cv2.resize(img, (round(img.shape[1] * s), H), interpolation=cv2.INTER_AREA)
    canvas = _background(background)
    x0 = (W - img.shape[1]) // 2
    canvas[:, x0:x0 + img.shape[1]] = img
    fx, fy, side = PORTRAIT_FACES[name]
    return Photo(name, canvas, ((round(fx * s) + x0, round(fy * s), round(side * s), round(side * s)),))


def _head(name: str, pad: float = 0.6) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A square crop around a portrait's face (``pad`` x its side on each side) and the face's box in it, as
    fractions (x, y, side) of the crop."""
    img = _gray(name)
    fx, fy, side = PORTRAIT_FACES[name]
    p = round(side * pad)
    x0, y0 = max(0, fx - p), max(0, fy - p)
    x1, y1 = min(img.shape[1], fx + side + p), min(img.shape[0], fy + side + p)
    n = min(x1 - x0, y1 - y0)
    crop = img[y0:y0 + n, x0:x0 + n]
    return crop, ((fx - x0) / n, (fy - y0) / n, side / n)


#: An LFW face fills its 25x25 tile from the forehead to the chin: the face box (Haar's framing) is the central 80%.
LFW_FACE = (0.1, 0.1, 0.8)


def _paste(canvas: np.ndarray, crop: np.ndarray, rel: tuple[float, float, float], face_px: int, x: int,
           y: int) -> tuple[int, int, int, int]:
    """Paste ``crop`` scaled so that its face is ``face_px`` wide at (x, y); the face's box in the canvas."""
    import cv2

    n = round(face_px / rel[2])
    tile = cv2.resize(crop, (n, n), interpolation=cv2.INTER_AREA if n < crop.shape[0] else cv2.INTER_CUBIC)
    canvas[y:y + n, x:x + n] = tile[:H - y, :W - x]
    return (x + round(rel[0] * n), y + round(rel[1] * n), face_px, face_px)


def face_photos() -> list[Photo]:
    """6 photos with 23 real faces."""
    faces, _ = _lfw()
    photos = [_portrait("grace_hopper", "china"), _portrait("astronaut", "flower"), _portrait("camera", "grass")]
    # A group on a real background: portrait heads and LFW faces (with their surroundings) at 48-80 px.
    lfw_rel = LFW_FACE
    canvas = _background("coffee")
    boxes = []
    for (src, px, x, y) in (("grace_hopper", 80, 20, 60), ("astronaut", 64, 230, 40), ("camera", 56, 420, 90),
                            (0, 72, 120, 300), (1, 48, 330, 320), (2, 60, 520, 330)):
        if isinstance(src, str):
            crop, rel = _head(src)
        else:
            crop, rel = faces[src], lfw_rel
        boxes.append(_paste(canvas, crop, rel, px, x, y))
    photos.append(Photo("group-48-80px", canvas, tuple(boxes)))
    canvas = _background("china")
    boxes = [_paste(canvas, faces[3 + i], lfw_rel, px, x, y)
             for i, (px, x, y) in enumerate(((50, 60, 80), (66, 250, 60), (80, 450, 100), (58, 150, 330),
                                             (74, 400, 320), (62, 560, 230)))]
    photos.append(Photo("small-faces-on-a-temple", canvas, tuple(boxes)))
    canvas = _background("brick")
    boxes = [_paste(canvas, faces[10 + i], lfw_rel, 80, 30 + 150 * (i % 4), 60 + 200 * (i // 4))
             for i in range(8)]
    photos.append(Photo("lfw-tiles-on-bricks", canvas, tuple(boxes)))
    return photos


def face_free_photos() -> list[Photo]:
    """12 photos with no face (animals, objects, landscapes, textures, and LFW's non-face patches)."""
    import cv2

    names = ("chelsea", "coffee", "rocket", "coins", "grass", "gravel", "hubble_deep_field", "motorcycle_left",
             "page", "flower", "china")
    photos = [Photo(n, _background(n), ()) for n in names]
    _, patches = _lfw()
    tiles = [cv2.resize(p, (80, 80), interpolation=cv2.INTER_CUBIC) for p in patches[:48]]
    mosaic = np.vstack([np.hstack(tiles[r * 8:(r + 1) * 8]) for r in range(6)])
    photos.append(Photo("lfw-non-face-patches", np.ascontiguousarray(mosaic), ()))
    return photos


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - ix * iy
    return ix * iy / union if union > 0 else 0.0


def score(boxes: list[tuple[int, int, int, int]], truth: tuple[tuple[int, int, int, int], ...],
          match: float = 0.5) -> tuple[list[bool], int]:
    """(for each true face: found by a box with IoU >= ``match``, boxes matching no face)."""
    found = [any(iou(b, t) >= match for b in boxes) for t in truth]
    false = sum(not any(iou(b, t) >= match for t in truth) for b in boxes)
    return found, false
