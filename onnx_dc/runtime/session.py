"""onnxruntime sessions on any model the project reads or writes."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnx_dc.errors import ModelError
from onnx_dc.graph.io import load_model, serialize


def model_bytes(model: onnx.ModelProto | str | os.PathLike | bytes) -> bytes:
    """Serialized ONNX of a ModelProto, a ``.onnx`` / ``.dc.onnx`` path, or a packed ``.dcz`` path."""
    if isinstance(model, onnx.ModelProto):
        return serialize(model)
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    from onnx_dc.formats import dcz

    if dcz.is_dcz(path):
        return dcz.load_dc_bytes(path)
    return path.read_bytes()


def load_any(model: onnx.ModelProto | str | os.PathLike | bytes) -> onnx.ModelProto:
    """Like :func:`onnx_dc.graph.io.load_model`, also accepting ``.dcz`` paths."""
    if isinstance(model, (str, os.PathLike)) and Path(model).is_file():
        from onnx_dc.formats import dcz

        if dcz.is_dcz(model):
            return load_model(dcz.load_dc_bytes(model), str(model))
    return load_model(model)


def InferenceSession(model: onnx.ModelProto | str | os.PathLike | bytes, threads: int = 0,  # noqa: N802
                     spin: bool = True):
    """An ``onnxruntime.InferenceSession`` on a model, ``.dc.onnx`` or ``.dcz`` (CPU provider).

    The compressed weights are rebuilt and folded by onnxruntime at session creation.
    ``spin=False`` stops idle worker threads from spinning between runs, for callers that
    do NumPy work between runs (spinning threads starve it on a small machine).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model_bytes(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        name = model if isinstance(model, (str, os.PathLike)) else "model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{name}: onnxruntime cannot load it ({first})") from None
