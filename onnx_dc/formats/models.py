"""The one model loader: any model onnx_dc takes, as a checked ModelProto or as ONNX bytes.

A model is given as a path (``.onnx``, ``.dc.onnx`` or a packed ``.dcz``, told apart by its
first bytes, never by its name), as bytes (ONNX or ``.dcz``), or as a ModelProto (copied, never
changed). Files are read by :func:`onnx_dc.graph.io.read_model` (external data, sorting and the
checker); ``.dcz`` files are unpacked by :mod:`onnx_dc.formats.dcz`. Errors name the file and
say what is wrong with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from onnx_dc.errors import FormatError, ModelError
from onnx_dc.formats import is_dcz
from onnx_dc.graph.io import parse_model, read_model, serialize

Model = onnx.ModelProto | str | os.PathLike | bytes


def load_model(model: Model, what: str | None = None) -> onnx.ModelProto:
    """The model, read and checked: a ModelProto is copied; a ``.dcz`` (path or bytes) is unpacked first.

    Args:
        model: a path, ONNX or ``.dcz`` bytes, or a ModelProto.
        what: the model's name in messages (default: its path, or ``<bytes>``).

    Raises:
        ModelError: when the file is missing, unreadable, not ONNX, truncated or invalid.
        FormatError: when a ``.dcz`` is malformed.
    """
    if isinstance(model, onnx.ModelProto):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    if isinstance(model, (bytes, bytearray, memoryview)):
        name = what or "<bytes>"
        return parse_model(_unpacked(bytes(model), name), name)
    if is_dcz(model):
        return parse_model(_unpacked(_read(model), str(model)), what or str(model))
    return read_model(model)[0]


def model_bytes(model: Model) -> bytes:
    """Serialized ONNX of a model, for an onnxruntime session: a file's bytes as they are, a ``.dcz`` unpacked.

    Raises:
        ModelError: when the file is missing or unreadable.
        FormatError: when a ``.dcz`` is malformed.
    """
    if isinstance(model, onnx.ModelProto):
        return serialize(model)
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _unpacked(bytes(model), "<bytes>")
    return _unpacked(_read(model), str(model))


def _read(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such file")
    try:
        return p.read_bytes()
    except OSError as err:
        raise ModelError(f"{p}: cannot read ({err.strerror or err})") from None


def _unpacked(data: bytes, name: str) -> bytes:
    """``data`` itself, or the ``*.dc.onnx`` bytes a ``.dcz`` holds."""
    if not is_dcz(data):
        return data
    from onnx_dc.formats import dcz

    try:
        return dcz.unpack_bytes(data)
    except FormatError as err:
        raise FormatError(f"{name}: {err}") from None
