"""Tensors whose bytes live outside the ``.onnx`` file (external data), read and written lazily.

Protobuf cannot serialize a message over 2 GB, so larger models keep their weights in
separate files. Reading: every external location is checked (relative, inside the model's
folder, a regular file holding ``offset + length`` bytes of the right size) before any byte
is read, and a tensor's bytes are read through a read-only memory map when a pass needs
them. Writing: a model that fits in one protobuf is written as one file; a larger one
keeps its big tensors in ``<output>.data`` beside it, written tensor by tensor.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import helper as oh

from onnx_dc.errors import ModelError
from onnx_dc.graph.walk import all_graphs

# Below protobuf's hard 2 GiB limit, with room for the graph itself.
MAX_PROTO_BYTES = 2_000_000_000
# Tensors at least this large go to the data file when an output does not fit in one protobuf.
EXTERNAL_MIN_BYTES = 1024


def initializers(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every initializer of the model, subgraphs included."""
    for graph in all_graphs(model.graph):
        yield from graph.initializer


def is_external(tensor: onnx.TensorProto) -> bool:
    """Whether a tensor's bytes are stored outside the model file."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _fields(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of a tensor's raw data from its dims and type (None for strings and sub-byte types)."""
    try:
        itemsize = oh.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if tensor.data_type in (onnx.TensorProto.STRING,) or itemsize == 0:
        return None
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def resolve(tensor: onnx.TensorProto, base_dir: Path, model_name: str) -> tuple[Path, int, int]:
    """Where a tensor's bytes are: (file, offset, length), checked; raises :class:`ModelError`.

    A location outside the model's folder is refused (a crafted model must not read other
    files), and so is a file too short for the tensor (truncated by a copy or a download).
    """
    info = _fields(tensor)
    location = info.get("location", "")
    where = f"{model_name}: tensor {tensor.name!r}"
    if not location:
        raise ModelError(f"{where} has external data without a location; re-save the model")
    if os.path.isabs(location):
        raise ModelError(f"{where}: external data path {location!r} is absolute; "
                         "it must be relative to the model's folder")
    base = base_dir.resolve()
    path = (base / location).resolve()
    if base not in path.parents:
        raise ModelError(f"{where}: external data path {location!r} points outside the model's folder {base}")
    if not path.is_file():
        raise ModelError(f"{where}: its external data file {location!r} is missing; keep it beside the model")
    offset = int(info.get("offset", 0) or 0)
    size = path.stat().st_size
    expected = tensor_nbytes(tensor)
    length = int(info["length"]) if info.get("length") else (expected if expected is not None else size - offset)
    if expected is not None and length != expected:
        raise ModelError(f"{where}: external data length {length} B does not match its shape ({expected} B)")
    if offset + length > size:
        raise ModelError(
            f"{where}: external data file {location!r} is truncated ({size} B, the tensor needs bytes "
            f"{offset}..{offset + length}); copy the complete file"
        )
    return path, offset, length


def check_external(model: onnx.ModelProto, base_dir: Path, model_name: str, model_path: Path | None = None) -> int:
    """Check every external tensor of ``model``; returns the bytes of the distinct data files used.

    ``model_path``, the model file itself, is not counted (tensors left in it by
    :func:`onnx_dc.graph.wire.split_model_bytes` point there).
    """
    files: set[Path] = set()
    for tensor in initializers(model):
        if is_external(tensor):
            files.add(resolve(tensor, base_dir, model_name)[0])
    files.discard(model_path.resolve() if model_path is not None else None)
    return sum(p.stat().st_size for p in files)


def pin_locations(model: onnx.ModelProto, base_dir: Path, model_name: str) -> None:
    """Rewrite external locations (checked) to absolute paths, so the bytes are found wherever the proto goes.

    Such a proto is for this process only: :func:`write_model` never writes these paths out.
    """
    for tensor in initializers(model):
        if is_external(tensor):
            path, offset, length = resolve(tensor, base_dir, model_name)
            _set_location(tensor, str(path), offset, length)


def _set_location(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _pinned(tensor: onnx.TensorProto) -> tuple[str, int, int]:
    info = _fields(tensor)
    return info["location"], int(info.get("offset", 0) or 0), int(info["length"])


def read_bytes(tensor: onnx.TensorProto, writable: bool = False) -> memoryview:
    """The raw bytes of a pinned external tensor, through a memory map (no copy).

    ``writable`` maps copy-on-write: writes stay in this process, the file never changes.
    Pages are read when touched, so a pass that works layer by layer holds one layer at a time.
    """
    location, offset, length = _pinned(tensor)
    if length == 0:
        return memoryview(bytearray() if writable else b"")
    with open(location, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY if writable else mmap.ACCESS_READ)
    return memoryview(mapped)[offset : offset + length]


def to_array(tensor: onnx.TensorProto, writable: bool = False) -> np.ndarray:
    """A tensor's values as a NumPy array; pinned external tensors are memory-mapped (see :func:`read_bytes`)."""
    if not is_external(tensor):
        return onnx.numpy_helper.to_array(tensor)
    dtype = oh.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.frombuffer(read_bytes(tensor, writable), dtype=dtype).reshape(tuple(tensor.dims))


def embed_all(model: onnx.ModelProto) -> None:
    """Move every pinned external tensor's bytes into the proto (for a model that fits in one protobuf)."""
    for tensor in initializers(model):
        if is_external(tensor):
            embed(tensor)


def embed(tensor: onnx.TensorProto) -> None:
    """Move a pinned external tensor's bytes into the proto (in place)."""
    data = read_bytes(tensor)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = bytes(data)


def external_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all external tensors of a model."""
    return sum(_pinned(t)[2] for t in initializers(model) if is_external(t))


def fits(model: onnx.ModelProto) -> bool:
    """Whether the model, its external tensors embedded, can be one protobuf."""
    return model.ByteSize() + external_bytes(model) < MAX_PROTO_BYTES


def write_data(model: onnx.ModelProto, fh, data_name: str) -> int:
    """Append each large tensor's bytes to ``fh`` (4 KiB aligned) and point the tensor there (in place).

    Every tensor of at least :data:`EXTERNAL_MIN_BYTES` moves to the data file ``data_name``
    (:func:`onnx_dc.graph.io.write_model` writes it beside the model). Returns the bytes written.
    """
    offset = 0
    for tensor in initializers(model):
        external = is_external(tensor)
        size = _pinned(tensor)[2] if external else len(tensor.raw_data)
        if not external and (size < EXTERNAL_MIN_BYTES or not tensor.HasField("raw_data")):
            continue
        pad = -offset % 4096
        fh.write(b"\0" * pad)
        offset += pad
        fh.write(read_bytes(tensor) if external else tensor.raw_data)
        tensor.ClearField("raw_data")
        _set_location(tensor, data_name, offset, size)
        offset += size
    return offset
