"""Pictures of ``models.explain``: a grid of channels per conv block (the 2018 study's figures 11-13) and the
Grad-CAM map over the face. ``explain_images`` returns them as PNG bytes (``fer-exp explain`` writes them; the study
report embeds them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fer_experiments import EXPRESSIONS
from fer_experiments.evaluation.grids import _face, _figure, figure_png

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

    from fer_experiments.models.explain import Explanation

#: Channels shown per block: the first 32 (8 columns), as the study did; wider blocks say how many are hidden.
MAX_CHANNELS = 32
COLUMNS = 8


def feature_maps_figure(block: str, maps: np.ndarray, max_channels: int = MAX_CHANNELS) -> "Figure":
    """The first ``max_channels`` channels of one block's (H, W, C) activations, each scaled to its own range."""
    channels = maps.shape[-1]
    shown = min(channels, max_channels)
    cols = min(COLUMNS, shown)
    rows = -(-shown // cols)
    fig = _figure(1.0 * cols, 1.0 * rows + 0.45)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= shown:
            ax.set_axis_off()
            continue
        ch = maps[..., k].astype(np.float32)
        lo, hi = float(ch.min()), float(ch.max())
        ax.imshow(ch, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    more = f", first {shown} of {channels} channels" if shown < channels else f", {channels} channels"
    fig.suptitle(f"{block}: {maps.shape[0]}x{maps.shape[1]}{more}", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.4 / (1.0 * rows + 0.45), wspace=0.05,
                        hspace=0.05)
    return fig


def overlay(face: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The face in grey with the map in the 'jet' colours blended over it: (48, 48, 3) floats in [0, 1]."""
    from matplotlib import colormaps

    grey = np.repeat((np.asarray(face, dtype=np.float32).reshape(cam.shape) / 255.0)[..., None], 3, axis=-1)
    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return np.clip((1 - alpha) * grey + alpha * heat, 0, 1)


def grad_cam_figure(face: np.ndarray, ex: "Explanation") -> "Figure":
    """Three panels: the face, the Grad-CAM map, the map over the face; titled with the class it explains."""
    fig = _figure(6.6, 2.75)
    axes = fig.subplots(1, 3)
    _face(axes[0], np.asarray(face).reshape(ex.cam.shape))
    axes[0].set_title("face", fontsize=9)
    axes[1].imshow(ex.cam, cmap="jet", vmin=0, vmax=1, interpolation="bilinear")
    axes[1].set_title(f"Grad-CAM ({ex.cam_layer})", fontsize=9)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    axes[2].imshow(overlay(face, ex.cam), interpolation="bilinear")
    axes[2].set_title("over the face", fontsize=9)
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    top = np.argsort(ex.probabilities)[::-1][:3]
    ranked = ", ".join(f"{EXPRESSIONS[i]} {ex.probabilities[i]:.2f}" for i in top)
    fig.suptitle(f"why {EXPRESSIONS[ex.class_index]}?  ({ranked})", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.8, wspace=0.06)
    return fig


def explanation_images(face: np.ndarray, ex: "Explanation") -> dict[str, bytes]:
    """File name -> PNG bytes: ``feature-maps-<block>.png`` per conv block and ``grad-cam.png``."""
    images = {f"feature-maps-{block}.png": figure_png(feature_maps_figure(block, maps))
              for block, maps in ex.feature_maps.items()}
    images["grad-cam.png"] = figure_png(grad_cam_figure(face, ex))
    return images


def explain_images(model: "keras.Model", face: np.ndarray, class_index: int | None = None) -> dict[str, bytes]:
    """Explain one 48x48 face (pixels 0-255) with ``model``: file name -> PNG bytes (feature maps, Grad-CAM)."""
    from fer_experiments.models.explain import explain

    return explanation_images(face, explain(model, face, class_index))
