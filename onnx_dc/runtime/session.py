"""onnxruntime sessions on any model the project reads or writes."""

from __future__ import annotations

import os
import tempfile
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


def _open_rebuilt(proto: onnx.ModelProto, threads: int, spin: bool):
    """A session on the plain model, its compressed weights rebuilt one at a time into a temporary data file.

    onnxruntime's constant folding keeps every intermediate of the decoder functions until
    it ends (scripts/bench_scale.py measures it), and weights handed over as OrtValues stay
    in this process beside onnxruntime's own copies. A dense model whose weights are
    external data costs what the dense model costs: each weight is rebuilt in NumPy,
    appended to the file at a page-aligned offset (so onnxruntime can map it) and freed,
    so at most one rebuilt layer is held here at a time.
    """
    import onnxruntime as ort

    from onnx_dc.graph import layout

    plain, decoders, arrays = layout.without_decoders(proto)
    with tempfile.TemporaryDirectory(prefix="onnx_dc-", ignore_cleanup_errors=True) as tmp:
        with open(Path(tmp) / _DATA_FILE, "wb") as fh:
            for dec in decoders:
                weight = layout.decode_weight(dec, arrays)
                fh.write(bytes(-fh.tell() % _ALIGN))
                offset = fh.tell()
                weight.tofile(fh)
                plain.graph.initializer.append(_external_stub(dec.weight, weight.shape, offset, weight.nbytes))
                del weight
        path = Path(tmp) / "model.onnx"
        path.write_bytes(serialize(plain))
        del plain, arrays
        # onnxruntime has read or mapped the data when the session exists; a mapping outlives the file's name
        return ort.InferenceSession(str(path), _options(threads, spin), providers=["CPUExecutionProvider"])


_DATA_FILE = "weights.bin"
_ALIGN = 4096


def _external_stub(name: str, shape: tuple[int, ...], offset: int, length: int) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=shape,
                            data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", _DATA_FILE), ("offset", str(offset)), ("length", str(length))):
        stub.external_data.add(key=key, value=value)
    return stub


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
        decode: rebuild compressed weights in NumPy, one at a time, into a temporary
            data file that onnxruntime loads (about the dense model's time and memory); False leaves it to
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
            return _open_rebuilt(proto, threads, spin)
        del proto
        return ort.InferenceSession(data, _options(threads, spin), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        name = model if isinstance(model, (str, os.PathLike)) else "model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{name}: onnxruntime cannot load it ({first})") from None
