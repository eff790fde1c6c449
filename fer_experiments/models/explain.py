"""Inside the network: the feature maps after each conv block (the 2018 study's figures 11-13) and a Grad-CAM
class-activation map on the last conv block.

Everything is plain Keras 3 (``keras.Model`` over intermediate outputs, ``keras.ops``) except one function,
``_class_gradient``: Keras 3 has no backend-neutral way to take the gradient of an output with respect to an
intermediate activation, so that function has one small branch per backend (TensorFlow ``GradientTape``,
``jax.grad``, torch autograd), each importing its backend lazily. This module is the one place outside
``training/backend.py`` allowed to touch a backend directly.

Conv blocks are found by layer name (``block<b>_...``, as ``models/builder.py`` names them): a block's output is the
last rank-4 layer of that prefix that is not dropout or pooling (so the activations before pooling for a plain
block, the residual sum for a residual one). Models without such names fall back to the last rank-4 layer before
each pooling layer. A wrapper that holds the network as a nested model (flip test-time augmentation) is unwrapped
first: the maps and the Grad-CAM are those of the network itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fer_experiments import IMAGE_SIZE
from fer_experiments.errors import ConfigError

if TYPE_CHECKING:
    import keras

_BLOCK = re.compile(r"^(block\d+)_")


@dataclass(frozen=True, eq=False)
class Explanation:
    """What ``explain`` found for one 48x48 face."""

    probabilities: np.ndarray  # (7,) of the model as given (a TTA wrapper's averaged answer)
    class_index: int  # the class the Grad-CAM map explains (the predicted one unless asked otherwise)
    feature_maps: dict[str, np.ndarray]  # block name -> (H, W, C) activations, in network order
    cam: np.ndarray  # (48, 48) float32 in [0, 1]: the Grad-CAM map upsampled onto the face
    cam_layer: str  # the layer whose activations the map weighs


def _rank(layer: Any) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # a layer used more than once has no single output
        return None


def _kind(layer: Any) -> str:
    name = type(layer).__name__
    if "Dropout" in name:
        return "dropout"
    if "Pooling" in name and "Global" not in name:
        return "pool"
    if name in ("InputLayer", "Rescaling") or name.startswith("Random"):
        return "input"
    return "other"


def core_model(model: "keras.Model") -> "keras.Model":
    """The network itself: ``model``, or the nested model inside a wrapper (e.g. flip test-time augmentation)."""
    import keras

    if any(_BLOCK.match(layer.name) for layer in model.layers):
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inner = core_model(layer)
            if conv_block_layers(inner, unwrap=False):
                return inner
    return model


def conv_block_layers(model: "keras.Model", unwrap: bool = True) -> list[tuple[str, Any]]:
    """(block name, layer giving the block's output) for each conv block, in network order."""
    core = core_model(model) if unwrap else model
    named: dict[str, Any] = {}
    for layer in core.layers:
        m = _BLOCK.match(layer.name)
        if m and _rank(layer) == 4 and _kind(layer) == "other":
            named[m.group(1)] = layer  # layers are in topological order: the last one wins
    if named:
        return list(named.items())
    found: list[Any] = []
    last = None
    for layer in core.layers:
        kind = _kind(layer)
        if kind == "pool" and last is not None and (not found or found[-1] is not last):
            found.append(last)
        elif kind == "other" and _rank(layer) == 4:
            last = layer
    if last is not None and (not found or found[-1] is not last):
        found.append(last)
    return [(f"block{i + 1}", layer) for i, layer in enumerate(found)]


def _as_batch(face: np.ndarray) -> np.ndarray:
    face = np.asarray(face)
    if face.shape not in ((IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE, IMAGE_SIZE, 1)):
        raise ConfigError(f"explain needs one {IMAGE_SIZE}x{IMAGE_SIZE} face, got an array of shape {face.shape}")
    return face.astype(np.float32).reshape(1, IMAGE_SIZE, IMAGE_SIZE, 1)


def feature_maps(model: "keras.Model", face: np.ndarray) -> dict[str, np.ndarray]:
    """Block name -> the (H, W, C) activations of ``face`` (48x48, pixels 0-255) after that conv block."""
    import keras

    blocks = conv_block_layers(model)
    if not blocks:
        raise ConfigError(f"model {model.name!r} has no convolution blocks to show")
    core = core_model(model)
    probe = keras.Model(core.inputs, [layer.output for _, layer in blocks])
    outs = probe.predict_on_batch(_as_batch(face))
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    return {name: np.asarray(out)[0] for (name, _), out in zip(blocks, outs)}


def _score_function(core: "keras.Model", target: Any, class_index: int) -> Callable[[Any], Any]:
    """activation of ``target`` -> the score of ``class_index``: the pre-softmax logit when the network ends in a
    softmax Dense layer (Grad-CAM's choice: it does not saturate), else the log-probability."""
    import keras
    from keras import ops

    last = core.layers[-1]
    if type(last).__name__ == "Dense" and getattr(last.activation, "__name__", "") == "softmax":
        body = keras.Model(target.output, last.input)

        def logit(a: Any) -> Any:
            z = ops.matmul(ops.cast(body(a, training=False), "float32"), last.kernel) + last.bias
            return z[:, class_index]

        return logit
    head = keras.Model(target.output, core.outputs[0])

    def log_prob(a: Any) -> Any:
        return ops.log(ops.cast(head(a, training=False), "float32")[:, class_index] + 1e-12)

    return log_prob


def _class_gradient(score: Callable[[Any], Any], activation: np.ndarray) -> np.ndarray:
    """d score / d activation. Keras 3 has no backend-neutral gradient API, hence one branch per backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.convert_to_tensor(activation)
        with tf.GradientTape() as tape:
            tape.watch(a)
            s = tf.reduce_sum(score(a))
        return np.asarray(tape.gradient(s, a))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return np.asarray(jax.grad(lambda a: jnp.sum(score(a)))(jnp.asarray(activation)))
    if backend == "torch":
        a = keras.ops.convert_to_tensor(activation).detach().requires_grad_(True)  # on Keras's device
        score(a).sum().backward()
        return a.grad.detach().cpu().numpy()
    raise ConfigError(f"Grad-CAM is not implemented for the {backend!r} Keras backend (tensorflow, jax, torch are)")


def grad_cam(model: "keras.Model", face: np.ndarray, class_index: int | None = None) -> tuple[np.ndarray, int, str]:
    """Grad-CAM of ``face`` on the last conv block: (48x48 map in [0, 1], class explained, layer name).

    The map is relu(sum_k w_k A_k) with w_k the spatial mean of d score / d A_k, bilinearly upsampled to the face
    and divided by its maximum (all zeros when nothing speaks for the class).
    """
    import cv2
    import keras

    blocks = conv_block_layers(model)
    if not blocks:
        raise ConfigError(f"model {model.name!r} has no convolution blocks for Grad-CAM")
    core = core_model(model)
    target = blocks[-1][1]
    x = _as_batch(face)
    if class_index is None:
        class_index = int(np.argmax(np.asarray(model.predict_on_batch(x))[0]))
    activation = np.asarray(keras.Model(core.inputs, target.output).predict_on_batch(x), dtype=np.float32)
    try:
        score = _score_function(core, target, class_index)
    except ValueError as exc:  # the rest of the network also reads tensors from before the target layer
        raise ConfigError(f"Grad-CAM: cannot split {core.name!r} after {target.name!r}: {exc}") from None
    grads = _class_gradient(score, activation)
    weights = grads[0].mean(axis=(0, 1))
    cam = np.maximum((activation[0] * weights).sum(axis=-1), 0.0).astype(np.float32)
    cam = cv2.resize(cam, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)
    cam = np.maximum(cam, 0.0)
    top = float(cam.max())
    cam = cam / top if top > 0 else np.zeros_like(cam)
    return cam.astype(np.float32), class_index, target.name


def explain(model: "keras.Model", face: np.ndarray, class_index: int | None = None) -> Explanation:
    """Probabilities, feature maps per conv block and the Grad-CAM map of one 48x48 face (pixels 0-255)."""
    probs = np.asarray(model.predict_on_batch(_as_batch(face)), dtype=np.float64)[0]
    chosen = int(np.argmax(probs)) if class_index is None else class_index
    cam, chosen, layer = grad_cam(model, face, chosen)
    return Explanation(probs, chosen, feature_maps(model, face), cam, layer)


def explain_members(model: "keras.Model", face: np.ndarray,
                    class_index: int | None = None) -> list[tuple[str, float, Explanation]]:
    """An ensemble (``models.ensemble.build_ensemble``) explained member by member: (member name, weight, its
    explanation) each, all for the same class (``class_index``, else the ensemble's predicted one). [] for a model
    that is no ensemble. ``explain`` alone would show the first member's maps beside the ensemble's answer."""
    from fer_experiments.models.ensemble import ensemble_members

    members = ensemble_members(model)
    if not members:
        return []
    if class_index is None:
        class_index = int(np.argmax(np.asarray(model.predict_on_batch(_as_batch(face)))[0]))
    return [(member.name, weight, explain(member, face, class_index)) for member, weight in members]


def predict_one(model: "keras.Model", face: np.ndarray) -> np.ndarray:
    """The model's (7,) probabilities for one 48x48 face."""
    return np.asarray(model.predict_on_batch(_as_batch(face)), dtype=np.float64)[0]
