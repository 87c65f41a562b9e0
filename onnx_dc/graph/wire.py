"""Parse a model file without copying its weights: large initializers become references into the file.

Parsing a ``.onnx`` file into a ModelProto copies every tensor's bytes into the proto.
A weight held there cannot be freed before the whole proto is (protobuf allocates a
message and its fields together), so a 550 MB model costs 550 MB for as long as its proto
lives, on top of the arrays the passes work on. Instead, the protobuf wire format is
walked (ModelProto.graph = field 7, GraphProto.initializer = 5, TensorProto.raw_data = 9):
each ``raw_data`` of at least ``min_bytes`` is left out of the bytes that are parsed, and
the tensor is marked as external data at its own offset in the model file
(``location`` = the file, ``offset``, ``length``), which :mod:`onnx_dc.graph.external`
then memory-maps on demand. Every other byte is parsed as it is.
"""

from __future__ import annotations

import onnx

MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_RAW_DATA = 7, 5, 9
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14


def _varint(buf, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf, start: int, end: int):
    """(field number, wire type, field start, value start, value end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        key, value_start = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value_end = _varint(buf, value_start)[1]
        elif wire == 1:
            value_end = value_start + 8
        elif wire == 5:
            value_end = value_start + 4
        elif wire == 2:
            length, value_start = _varint(buf, value_start)
            value_end = value_start + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if value_end > end:
            raise ValueError("field runs past the end of its message (truncated file)")
        yield number, wire, pos, value_start, value_end
        pos = value_end


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:
    return _length_delimited(TENSOR_EXTERNAL_DATA,
                             _length_delimited(1, key.encode()) + _length_delimited(2, value.encode()))


def _tensor(buf, start: int, end: int, location: str, min_bytes: int) -> bytes:
    parts, moved = [], False
    for number, wire, field_start, value_start, value_end in _fields(buf, start, end):
        if number == TENSOR_RAW_DATA and wire == 2 and value_end - value_start >= min_bytes:
            parts.append(_entry("location", location) + _entry("offset", str(value_start))
                         + _entry("length", str(value_end - value_start)))
            moved = True
        else:
            parts.append(bytes(buf[field_start:value_end]))
    if moved:
        parts.append(_encode_varint(TENSOR_DATA_LOCATION << 3) + _encode_varint(onnx.TensorProto.EXTERNAL))
    return b"".join(parts)


def _graph(buf, start: int, end: int, location: str, min_bytes: int) -> bytes:
    parts = []
    for number, wire, field_start, value_start, value_end in _fields(buf, start, end):
        if number == GRAPH_INITIALIZER and wire == 2:
            parts.append(_length_delimited(number, _tensor(buf, value_start, value_end, location, min_bytes)))
        else:
            parts.append(bytes(buf[field_start:value_end]))
    return b"".join(parts)


def split_model_bytes(buf, location: str, min_bytes: int) -> bytes:
    """The model in ``buf`` (a file's bytes or memory map) with its large initializers' data left in the file.

    Args:
        buf: the serialized ModelProto (not copied: only small fields are sliced out).
        location: the file's name relative to its folder, written as each moved tensor's location.
        min_bytes: raw_data of at least this many bytes stays in the file.

    Raises:
        ValueError: when the bytes are not a well-formed protobuf message.
    """
    parts = []
    for number, wire, field_start, value_start, value_end in _fields(buf, 0, len(buf)):
        if number == MODEL_GRAPH and wire == 2:
            parts.append(_length_delimited(number, _graph(buf, value_start, value_end, location, min_bytes)))
        else:
            parts.append(bytes(buf[field_start:value_end]))
    return b"".join(parts)
