"""onnxruntime sessions on any model the project reads or writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnx_dc.errors import ConfigError, ModelError
from onnx_dc.runtime.ort import onnxruntime_errors
from onnx_dc.graph.io import serialize
from onnx_dc.formats.models import model_bytes


def _open_rebuilt(proto: onnx.ModelProto, ort_args: dict, name: str):
    """A session on the plain model, its compressed weights rebuilt one at a time into a temporary data file.

    onnxruntime's constant folding keeps every intermediate of the decoder functions until
    it ends (scripts/bench_scale.py measures it), and weights handed over as OrtValues stay
    in this process beside onnxruntime's own copies. A dense model whose weights are
    external data costs what the dense model costs: each weight is rebuilt in NumPy,
    appended to the file at a page-aligned offset (so onnxruntime can map it) and freed,
    so at most one rebuilt layer is held here at a time.
    """
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
        return _ort_session(str(path), ort_args, name)


_DATA_FILE = "weights.bin"
_ALIGN = 4096


def _external_stub(name: str, shape: tuple[int, ...], offset: int, length: int) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=shape,
                            data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", _DATA_FILE), ("offset", str(offset)), ("length", str(length))):
        stub.external_data.add(key=key, value=value)
    return stub


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    """The model in ``data``, parsed only: onnxruntime checks what it loads itself."""
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError:
        raise ModelError(f"{name}: not an ONNX model, or the file is truncated (protobuf cannot parse it)") from None
    return proto


def _ort_session(source: bytes | str, ort_args: dict, name: str):
    """onnxruntime's session on ONNX bytes or a path (``ort_args``: its keyword arguments); a model it refuses
    becomes a :class:`ModelError`.

    Only onnxruntime's own load errors are caught: an error in onnx_dc's decoding of the
    weights before this call is a bug, not the model's fault, and shows as what it is.
    """
    import onnxruntime as ort

    try:
        return ort.InferenceSession(source, **ort_args)
    except onnxruntime_errors() as exc:
        raise ModelError(f"{name}: onnxruntime cannot load it ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _options(threads: int, spin: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def InferenceSession(  # noqa: N802
    model: onnx.ModelProto | str | os.PathLike | bytes, threads: int = 0, decode: bool = True, spin: bool = True,
    *, sess_options=None, providers=None, provider_options=None,
):
    """An ``onnxruntime.InferenceSession`` on a model, ``.dc.onnx`` or ``.dcz``, on any execution provider.

    Args:
        model: a ModelProto, ONNX bytes or a path (``.onnx``, ``.dc.onnx``, ``.dcz``).
        threads: onnxruntime intra-op threads (0: its default).
        decode: rebuild compressed weights in NumPy, one at a time, into a temporary
            data file that onnxruntime loads (about the dense model's time and memory); False leaves it to
            onnxruntime's folding of the decoder functions, as any stock runtime does.
        spin: False stops idle worker threads from spinning between runs, for callers that
            do NumPy work between runs (spinning threads starve it on a small machine).
        sess_options: an ``onnxruntime.SessionOptions``, used as given (instead of ``threads`` and ``spin``).
        providers, provider_options: passed on to onnxruntime as they are (default: the CPU provider).

    Raises:
        ModelError: when the model cannot be read or onnxruntime refuses it.
        ConfigError: when ``sess_options`` is given with ``threads`` or ``spin``.
    """
    from onnx_dc.graph import layout

    name = str(model) if isinstance(model, (str, os.PathLike)) else "model"
    if sess_options is not None and (threads or not spin):
        raise ConfigError("InferenceSession: give threads / spin or sess_options, not both (set "
                          "intra_op_num_threads on the SessionOptions)")
    ort_args = {"sess_options": sess_options if sess_options is not None else _options(threads, spin),
                "providers": providers if providers is not None else ["CPUExecutionProvider"],
                "provider_options": provider_options}
    try:
        data = model_bytes(model)
    except OSError as exc:
        raise ModelError(f"{name}: cannot read it ({exc.strerror or exc})") from None
    proto = _parse(data, name) if decode else None
    if proto is not None and layout.decoder_nodes(proto.graph):
        del data
        return _open_rebuilt(proto, ort_args, name)
    del proto
    return _ort_session(data, ort_args, name)
