"""An exported inference graph for a model of the family: ONNX, run with ONNX Runtime.

Why ONNX Runtime: on this CPU a Keras call carries ~1-75 ms of framework overhead per call (``predict_on_batch`` the
least), which dominates one face at a time; ONNX Runtime's call overhead is tens of microseconds and its CPU kernels
are at least as fast for these convolutions. OpenVINO was measured as well (its converter takes the Keras model
directly): same probabilities, no faster here, and a 59 MB wheel against ONNX Runtime's 28 MB, and MLflow has an
``onnx`` flavour, so the exported graph is logged as an ordinary MLflow model beside the Keras one.

The export (``export_onnx``) goes through Keras's own ``model.export(format="onnx")`` (tf2onnx on the TensorFlow
backend): every model that is a plain Keras graph of standard layers converts, whatever its blocks (residual adds,
separable convolutions, a flip-average wrapper, a mean of several members), since the graph is traced, not parsed
layer by layer. The exported graph takes the same input as the Keras model, (N, 48, 48, 1) float32 pixels 0-255, and
returns the same (N, 7) probabilities (tests/unit/test_export.py checks 1e-5 on PrivateTest faces).

No MLflow here: ``tracking.exported`` logs and finds the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fer_experiments import IMAGE_SIZE

if TYPE_CHECKING:
    import keras

log = logging.getLogger("fer_experiments.export")

#: The file name of the graph inside an exported-model folder (MLflow's onnx flavour uses the same name).
ONNX_FILE = "model.onnx"
#: Names the runtime in /health, /metrics and reports: the exported graph (float32, the Keras model's probabilities
#: within 1e-5), its INT8 quantization (ONNX Runtime's VNNI kernels: ~3x the faces/s, probabilities within a few
#: points of a percent), or the Keras model itself.
RUNTIME_EXPORTED = "exported"
RUNTIME_INT8 = "int8"
RUNTIME_KERAS = "keras"
RUNTIMES = (RUNTIME_EXPORTED, RUNTIME_INT8, RUNTIME_KERAS)


class ExportError(Exception):
    """The model could not be exported (the Keras model is still usable as it is)."""


def export_onnx(model: "keras.Model", path: str | Path) -> Path:
    """Write ``model``'s inference graph to ``path`` (ONNX, dynamic batch); ExportError when it cannot be converted.

    Takes ~2-20 s on this CPU (tracing and conversion, more under load); quiet: tf2onnx's and Keras's progress
    lines are swallowed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tf2onnx_log = logging.getLogger("tf2onnx")
    level = tf2onnx_log.level
    tf2onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if not getattr(model, "_called", True):  # a freshly loaded model: Keras exports only called models
                model(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32))
            model.export(str(tmp), format="onnx", verbose=False)
        os.replace(tmp, path)  # atomic: a reader never sees half a graph
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many types; the caller decides what a failure means
        raise ExportError(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}") from exc
    finally:
        tf2onnx_log.setLevel(level)
        tmp.unlink(missing_ok=True)
    return path


def quantize_int8(fp32_path: str | Path, path: str | Path, calibration: np.ndarray) -> Path:
    """Write the static INT8 quantization of the exported graph at ``fp32_path`` to ``path``; ExportError on failure.

    QDQ format, int8 weights per output channel, uint8 activations whose ranges are calibrated (min-max) on
    ``calibration``: (N, 48, 48[, 1]) faces, uint8 or float 0-255. Training faces are what it should see (never
    PrivateTest). Measured here for seed-deep-bn: ~3x the faces/s of the float graph on one core of a CPU with
    AVX512-VNNI; ONNX Runtime runs it on any x86-64 CPU (slower without VNNI).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pre = path.with_name(f".{path.name}.{os.getpid()}.pre.onnx")
    faces = np.ascontiguousarray(calibration, dtype=np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)
    if len(faces) == 0:
        raise ExportError("no calibration faces for the INT8 graph")
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        input_name = ExportedModel(fp32_path).input_name

        class _Faces(CalibrationDataReader):
            def __init__(self) -> None:
                self._batches = iter(faces[i:i + 32] for i in range(0, len(faces), 32))

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self._batches, None)
                return None if batch is None else {input_name: batch}

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            # Folds BatchNorm into the convolutions first, so that they quantize as one operation.
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            import onnx

            quantize_static(str(pre), str(tmp), _Faces(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=_softmax_and_after(onnx.load(str(pre)).graph))
        ExportedModel(tmp)  # loads and has the model's input: else it is no use
        os.replace(tmp, path)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; the caller falls back
        raise ExportError(f"INT8 quantization failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
    return path


def _softmax_and_after(graph: Any) -> list[str]:
    """Names of the Softmax nodes and of every node fed by them (a TTA or ensemble mean): they stay in float, so
    the graph's output are probabilities that sum to 1, not multiples of 1/255."""
    tainted: set[str] = set()
    names: list[str] = []
    for node in graph.node:  # ONNX lists nodes in topological order
        if node.op_type == "Softmax" or any(i in tainted for i in node.input):
            names.append(node.name)
            tainted.update(node.output)
    return names


def runtime_version() -> str:
    """``onnxruntime <version>`` (what /health reports), or '' when ONNX Runtime is not installed."""
    try:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        return ""


class ExportedModel:
    """An exported graph loaded in ONNX Runtime: (N, 48, 48, 1) float32 pixels 0-255 -> (N, 7) probabilities.

    ``threads`` caps ONNX Runtime's intra-op threads (0: its default, one per core). Its worker threads do not spin
    waiting for work: spinning buys microseconds on an idle machine and burns a shared CPU.
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a damaged file is reported, the caller can fall back to Keras
            raise ExportError(f"{self.path}: not a loadable ONNX graph ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or list(inputs[0].shape[1:]) != [IMAGE_SIZE, IMAGE_SIZE, 1]:
            raise ExportError(f"{self.path}: graph takes {[i.shape for i in inputs]}, not one "
                              f"(N, {IMAGE_SIZE}, {IMAGE_SIZE}, 1) input")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, 48, 48, 1) float32 -> (N, 7) float32."""
        return self.session.run([self.output_name], {self.input_name: x})[0]


def exported_predict_proba(exported: ExportedModel, x: np.ndarray) -> np.ndarray:
    """Class probabilities for uint8 or float (N, 48, 48[, 1]) images, like ``models.predict.predict_proba``."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), IMAGE_SIZE, IMAGE_SIZE, 1)
    return np.asarray(exported(x))


def describe(obj: Any) -> str:
    """A one-line name for what answers: ``onnxruntime 1.32.0`` or ``keras 3.15.1 (tensorflow)``."""
    if isinstance(obj, ExportedModel):
        return runtime_version()
    import keras

    return f"keras {keras.__version__} ({keras.backend.backend()})"
