"""Drawing boxes and labels on images and video frames (``fer-exp predict --out``), in one place."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from fer_experiments.serving.detector import Box

#: Box and label background colour (BGR).
COLOUR = (0, 200, 0)


def draw_faces(canvas: np.ndarray, faces: Iterable[tuple[Box, str]]) -> np.ndarray:
    """Draw each (box, text) on the BGR ``canvas`` in place: a box and the text on a filled band above it (below
    it when there is no room above). Line width and font scale follow the image size."""
    import cv2

    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    font_scale = max(0.4, max(canvas.shape[:2]) / 1000)
    for b, text in faces:
        cv2.rectangle(canvas, (b.x, b.y), (b.x + b.w, b.y + b.h), COLOUR, thickness)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        y = b.y - 4 if b.y - th - base - 4 >= 0 else b.y + b.h + th + 4
        cv2.rectangle(canvas, (b.x, y - th - base), (b.x + tw, y + base), COLOUR, cv2.FILLED)
        cv2.putText(canvas, text, (b.x, y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return canvas
