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


def _weights_outside(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, object]]:
    """The model without its decoders, and its compressed weights rebuilt in NumPy, as OrtValues.

    onnxruntime's constant folding keeps every intermediate of the decoder functions until
    it ends (scripts/bench_scale.py measures it); weights rebuilt in NumPy and handed over
    cost about what the dense model costs.
    """
    import onnxruntime as ort

    from onnx_dc.graph import layout

    plain, decoded = layout.remove_decoders(proto, full=False)
    values = {name: ort.OrtValue.ortvalue_from_numpy(weight) for name, (_, weight) in decoded.items()}
    return plain, values


def _open_with_weights(plain: onnx.ModelProto, values: dict, threads: int, spin: bool = True):
    """A session whose weights are ``values``: shared in place where onnxruntime allows it, else copied.

    onnxruntime 1.19 takes an initializer declared without data and supplied by
    ``add_initializer`` (used in place); newer versions validate initializer data at load,
    so there the weights go in as external initializers (copied once).
    """
    import onnxruntime as ort

    stubs = [onnx.TensorProto(name=n, data_type=onnx.TensorProto.FLOAT, dims=v.shape()) for n, v in values.items()]
    with_stubs = onnx.ModelProto()
    with_stubs.CopyFrom(plain)
    with_stubs.graph.initializer.extend(stubs)
    opts = _options(threads, spin)
    for name, value in values.items():
        opts.add_initializer(name, value)
    try:
        return ort.InferenceSession(serialize(with_stubs), opts, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime's own exception types: its load-time data validation
        pass
    for stub in stubs:
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value="onnx_dc-decoded")
    external = onnx.ModelProto()
    external.CopyFrom(plain)
    external.graph.initializer.extend(stubs)
    opts = _options(threads, spin)
    opts.add_external_initializers(list(values), list(values.values()))
    return ort.InferenceSession(serialize(external), opts, providers=["CPUExecutionProvider"])


def _parse(data: bytes) -> onnx.ModelProto:
    """The model in ``data``, parsed only: onnxruntime checks what it loads itself."""
    proto = onnx.ModelProto()
    proto.ParseFromString(data)
    return proto


def _options(threads: int, spin: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def InferenceSession(  # noqa: N802
    model: onnx.ModelProto | str | os.PathLike | bytes, threads: int = 0, decode: bool = True, spin: bool = True
):
    """An ``onnxruntime.InferenceSession`` on a model, ``.dc.onnx`` or ``.dcz`` (CPU provider).

    Args:
        model: a ModelProto, ONNX bytes or a path (``.onnx``, ``.dc.onnx``, ``.dcz``).
        threads: onnxruntime intra-op threads (0: its default).
        decode: rebuild compressed weights in NumPy and give them to onnxruntime as
            initializers (about the dense model's time and memory); False leaves it to
            onnxruntime's folding of the decoder functions, as any stock runtime does.
        spin: False stops idle worker threads from spinning between runs, for callers that
            do NumPy work between runs (spinning threads starve it on a small machine).
    """
    import onnxruntime as ort

    from onnx_dc.graph import layout

    try:
        data = model_bytes(model)
        proto = _parse(data) if decode else None
        if proto is not None and layout.decoder_nodes(proto.graph):
            del data
            plain, values = _weights_outside(proto)
            del proto
            session = _open_with_weights(plain, values, threads, spin)
            session._onnx_dc_weights = values  # noqa: SLF001  (onnxruntime 1.19 uses their memory in place)
            return session
        del proto
        return ort.InferenceSession(data, _options(threads, spin), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        name = model if isinstance(model, (str, os.PathLike)) else "model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{name}: onnxruntime cannot load it ({first})") from None
