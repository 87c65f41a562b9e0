"""The packed file ``*.dcz``: a ``*.dc.onnx`` whose codes and gaps streams are entropy-coded.

This is the paper's "P+Q+H" storage. Packing is lossless at the byte level:

    file      = remainder pieces interleaved with the stream spans, in file order
    stream    = raw_data bytes of a codes / gaps initializer of a decoder node (docs/DCONNX.md),
                i.e. pack_bits(symbols, width) with ``count`` symbols
    .dcz      = header | section table | remainder compressed (zlib or xz)
                | per stream: entropy_code(unpack_bits(stream, width, count))
    unpack    = remainder with every stream re-inserted as pack_bits(decode(...), width)

Version 2 may code a sparse node's gaps as its mask and its codes as the kept entries' codes
alone (position models, onnx_dc/formats/dczmask.py), where that is smaller.

A stream whose bytes would not come back identical from ``pack_bits`` (non-zero padding
bits, odd sizes) is stored verbatim, and pack checks ``unpack(pack(x)) == x`` before it
returns. Every section carries a CRC-32, the header and section table one more, and the
reconstructed file its SHA-256; declared sizes are checked against the file size and the
limits below before anything is allocated. docs/FORMAT.md is the byte-level specification.
"""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnx_dc import progress
from onnx_dc.errors import ConfigError, FormatError, ModelError
from onnx_dc.formats import MAGIC, dczmask, is_dcz  # noqa: F401 (is_dcz: dcz.is_dcz is the format's own test)
from onnx_dc.graph import layout
from onnx_dc.graph.io import refuse_overwrite, write_bytes_atomic
from onnx_dc.numerics import huffman, rangecoder
from onnx_dc.numerics.bitpack import MAX_BITS, pack_bits, packed_size, unpack_bits
from onnx_dc.numerics.symstream import entropy_bits

VERSION = 2
READ_VERSIONS = (1, 2)
"""Version 2 adds the position models (codecs MASK and REAL_CODES, onnx_dc/formats/dczmask.py)."""
MAX_OUTPUT_BYTES = (1 << 31) - 1
"""A ``*.dc.onnx`` is one protobuf message, which cannot exceed 2 GiB."""
EXPANSION_ALLOWANCE = 64 << 20
EXPANSION_RATIO = 1024
"""A ``.dcz`` may declare at most ``EXPANSION_ALLOWANCE + EXPANSION_RATIO * len(dcz)`` output bytes."""
MAX_SECTIONS = 1 << 20
MAX_COUNT = (1 << 32) - 1

# Section codecs.
STORED, ZLIB, XZ, HUFFMAN, RANGE = 0, 1, 2, 3, 4
MASK, REAL_CODES = dczmask.MASK, dczmask.REAL_CODES
CODEC_NAMES = {STORED: "stored", ZLIB: "zlib", XZ: "xz", HUFFMAN: "huffman", RANGE: "range", MASK: "mask",
               REAL_CODES: "real-codes"}
# Section roles.
REMAINDER, CODES, GAPS = 0, 1, 2
ROLE_NAMES = {REMAINDER: "remainder", CODES: "codes", GAPS: "gaps"}
# Decoder kind of a stream's node (0 for the remainder); the layout is onnx_dc/graph/layout.py.
OP_NAMES = {1: layout.DENSE, 2: layout.SPARSE, 3: layout.SPARSE_VALUES}
_OP_IDS = {name: op for op, name in OP_NAMES.items()}
_ROLES = {layout.CODES: CODES, layout.GAPS: GAPS}
PACK_CODECS = ("auto", "huffman", "range")

_HEADER = struct.Struct("<8sHHIQ32sII")  # magic, version, flags, sections, size, sha256, table bytes, crc
# role, codec, width, op, crc, offset, raw_length, count, stored_length, name length, weight length
_ENTRY = struct.Struct("<BBBBIQQQQHH")
_CODEC_MODULES = {HUFFMAN: huffman, RANGE: rangecoder}
_XZ_MAX_INPUT = 16 << 20  # larger remainders use zlib only (xz is slow on float data)
_XZ_MEMLIMIT = 128 << 20


@dataclass(frozen=True)
class _Section:
    """A section to write: the fields of its table entry and its stored bytes."""

    role: int
    codec: int
    width: int
    op: int
    offset: int
    raw_length: int
    count: int
    name: str
    weight: str
    payload: bytes


@dataclass(frozen=True)
class _Entry:
    """A section table entry as read, with where its payload starts in the ``.dcz``."""

    role: int
    codec: int
    width: int
    op: int
    crc: int
    offset: int
    raw_length: int
    count: int
    stored_length: int
    name: str
    weight: str
    at: int

    def label(self, index: int) -> str:
        return f"section {index} ({self.name or 'remainder'})"


@dataclass(frozen=True)
class Stream:
    """A codes / gaps initializer found in a ``*.dc.onnx``: where its bytes are and how to read them.

    Attributes:
        name: the initializer; weight: the decoder node's output W; op: decoder op id
        (``OP_NAMES``); role: CODES or GAPS; width: bits per symbol; count: symbols;
        offset, length: the byte span of its ``raw_data`` in the file.
    """

    name: str
    weight: str
    op: int
    role: int
    width: int
    count: int
    offset: int
    length: int
    shape: tuple[int, ...] = ()


# ============================================================================ finding the streams
class _WireError(Exception):
    """The bytes are not protobuf wire format we can walk."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 70:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _WireError


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) of every field of the message buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire == 0:
            _, stop = _varint(buf, pos, end)
        elif wire == 1:
            stop = pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            stop = pos + length
        elif wire == 5:
            stop = pos + 4
        else:
            raise _WireError
        if stop > end:
            raise _WireError
        yield key >> 3, wire, pos, stop
        pos = stop


def _initializer_spans(data: bytes) -> dict[str, tuple[int, int]]:
    """Byte span of the ``raw_data`` of every initializer of the main graph, by name.

    ModelProto.graph is field 7, GraphProto.initializer field 5, TensorProto.name field 8 and
    TensorProto.raw_data field 9. Names seen more than once are left out.
    """
    buf = memoryview(data)
    spans: dict[str, tuple[int, int]] = {}
    seen: set[str] = set()
    try:
        for field, wire, start, stop in _fields(buf, 0, len(buf)):
            if field != 7 or wire != 2:
                continue
            for field2, wire2, start2, stop2 in _fields(buf, start, stop):
                if field2 == 5 and wire2 == 2:
                    _add_tensor_span(buf, start2, stop2, spans, seen)
    except (_WireError, UnicodeDecodeError):
        return {}
    return {name: span for name, span in spans.items() if name not in seen}


def _add_tensor_span(buf: memoryview, start: int, stop: int, spans: dict, seen: set) -> None:
    name, raw = None, None
    for field, wire, begin, end in _fields(buf, start, stop):
        if field == 8 and wire == 2:
            name = bytes(buf[begin:end]).decode("utf-8")
        elif field == 9 and wire == 2:
            raw = (begin, end - begin)
    if name is None or raw is None:
        return
    if name in spans:
        seen.add(name)
    spans[name] = raw


def _decoder_streams(model) -> dict[str, tuple]:
    """Initializer name -> (weight name, op id, role, width, count, shape) over the main graph's decoder nodes."""
    found: dict[str, tuple] = {}
    for node in layout.decoder_nodes(model.graph):
        dec = layout.read_decoder(node)
        for role, name in dec.inputs.items():
            width = {layout.CODES: dec.code_bits, layout.GAPS: dec.index_bits}.get(role, 0)
            if role in _ROLES and 1 <= width <= MAX_BITS and 0 <= dec.count <= MAX_COUNT:
                found.setdefault(name, (dec.weight, _OP_IDS[dec.kind], _ROLES[role], width, dec.count, dec.shape))
    return found


def find_streams(data: bytes) -> list[Stream]:
    """The codes / gaps streams of a serialized ``*.dc.onnx``, in file order.

    Only initializers stored as uint8 ``raw_data`` inside the file, whose size matches the
    decoder node's ``count`` and width, and whose span was located unambiguously count.

    Raises:
        ModelError: when ``data`` is not a parseable ONNX model.
    """
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as err:  # protobuf raises its own DecodeError type
        raise ModelError(f"not an ONNX model: {err}") from None
    wanted = _decoder_streams(model)
    spans = _initializer_spans(data)
    tensors = {t.name: t for t in model.graph.initializer if t.name in wanted and t.name in spans}
    streams = []
    for name, tensor in tensors.items():
        weight, op, role, width, count, shape = wanted[name]
        offset, length = spans[name]
        if tensor.data_type != onnx.TensorProto.UINT8 or length != packed_size(count, width):
            continue
        if data[offset : offset + length] != tensor.raw_data:
            continue
        streams.append(Stream(name, weight, op, role, width, count, offset, length, shape))
    return sorted(streams, key=lambda s: s.offset)


# ============================================================================ packing
def pack_bytes(dc_onnx: bytes, codec: str = "auto", positions: bool = True) -> bytes:
    """Pack a serialized ``*.dc.onnx`` into ``.dcz`` bytes.

    Args:
        dc_onnx: the bytes of the compressed ONNX file.
        codec: entropy codec of the codes / gaps streams: ``"huffman"``, ``"range"`` or
            ``"auto"`` (per stream the smaller of both). A stream is stored as it is when
            that is smaller (tiny or incompressible streams) or when re-packing its symbols
            would not reproduce its bytes.
        positions: with ``"auto"``, also try the position models of version 2 on every
            sparse node (onnx_dc/formats/dczmask.py) and keep them where they are smaller;
            False (or an explicit codec) codes every stream order-0 on its own, as version 1 did.

    Returns:
        The ``.dcz`` bytes; the same input and codec always give the same bytes, and
        :func:`unpack_bytes` returns ``dc_onnx`` exactly.

    Raises:
        ConfigError: on an unknown codec.
        ModelError: when ``dc_onnx`` is not an ONNX model or exceeds 2 GiB.
        CoderBug: when the packed bytes do not unpack to ``dc_onnx`` (a bug of onnx_dc, not of the input).
    """
    if codec not in PACK_CODECS:
        raise ConfigError(f"unknown codec {codec!r}; choose one of {', '.join(PACK_CODECS)}")
    data = bytes(dc_onnx)
    if len(data) > MAX_OUTPUT_BYTES:
        raise ModelError(f"a .dc.onnx of {len(data)} bytes exceeds the 2 GiB protobuf limit")
    streams = find_streams(data)
    symbols = [_repacking_symbols(data, s) for s in streams]  # None where re-packing would change the bytes
    coded = [_stream_section(data, s, sym, codec)
             for s, sym in progress.bar(list(zip(streams, symbols)), desc="pack", unit="stream")]
    if positions and codec == "auto":
        coded = _mask_sections(streams, symbols, coded)
    packed = _assemble(data, [_remainder_section(data, streams), *coded])
    if not _within_limits(packed, len(data)):
        # Only reachable for pathological inputs: store the file as it is, which always fits.
        packed = _assemble(data, [_Section(REMAINDER, STORED, 0, 0, 0, len(data), 0, "", "", data)])
    _check_round_trip(packed, data)
    return packed


def _remainder_section(data: bytes, streams: list[Stream]) -> _Section:
    pieces, cursor = [], 0
    for s in streams:
        pieces.append(data[cursor : s.offset])
        cursor = s.offset + s.length
    pieces.append(data[cursor:])
    remainder = b"".join(pieces)
    codec, payload = ZLIB, zlib.compress(remainder, 9)
    if len(remainder) <= _XZ_MAX_INPUT:
        xz = lzma.compress(remainder, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, preset=6)
        if len(xz) < len(payload):
            codec, payload = XZ, xz
    if len(remainder) <= len(payload):
        codec, payload = STORED, remainder
    return _Section(REMAINDER, codec, 0, 0, 0, len(remainder), 0, "", "", payload)


def _stream_section(data: bytes, s: Stream, symbols: np.ndarray | None, codec: str) -> _Section:
    raw = data[s.offset : s.offset + s.length]
    candidates = [(STORED, raw)]
    if symbols is not None:
        if codec in ("auto", "huffman"):
            candidates.append((HUFFMAN, huffman.encode(symbols)))
        if codec in ("auto", "range"):
            candidates.append((RANGE, rangecoder.encode(symbols)))
    chosen, payload = min(candidates, key=lambda c: len(c[1]))  # ties: the earlier candidate
    return _Section(s.role, chosen, s.width, s.op, s.offset, s.length, s.count, s.name, s.weight, payload)


def _mask_sections(streams: list[Stream], symbols: list[np.ndarray | None], coded: list[_Section]) -> list[_Section]:
    """Replace a sparse node's order-0 sections by its mask-coded ones where those are smaller."""
    by_weight: dict[str, dict[int, int]] = {}
    for i, s in enumerate(streams):
        by_weight.setdefault(s.weight, {})[s.role] = i
    out = list(coded)
    for roles in by_weight.values():
        node = _node_streams(streams, symbols, roles)
        if node is None:
            continue
        today = sum(len(coded[i].payload) for i in roles.values())
        found = dczmask.code_node(node, today)
        if found is None:
            continue
        out[roles[GAPS]] = dataclasses.replace(coded[roles[GAPS]], codec=MASK, payload=found.gaps_payload)
        if found.codes_payload is not None:
            out[roles[CODES]] = dataclasses.replace(coded[roles[CODES]], codec=REAL_CODES, payload=found.codes_payload)
    return out


def _node_streams(streams: list[Stream], symbols: list[np.ndarray | None],
                  roles: dict[int, int]) -> dczmask.NodeStreams | None:
    """A sparse node's symbols when its streams re-pack to their own bytes, else None."""
    if GAPS not in roles:
        return None
    gaps = streams[roles[GAPS]]
    want_codes = OP_NAMES[gaps.op] == layout.SPARSE
    if gaps.count == 0 or want_codes != (CODES in roles) or (want_codes and streams[roles[CODES]].count != gaps.count):
        return None
    node = {role: symbols[i] for role, i in roles.items()}
    if any(v is None for v in node.values()):
        return None
    code_bits = streams[roles[CODES]].width if want_codes else 0
    return dczmask.NodeStreams(gaps.shape, gaps.width, node[GAPS], node.get(CODES), code_bits)


def _repacking_symbols(data: bytes, s: Stream) -> np.ndarray | None:
    raw = data[s.offset : s.offset + s.length]
    symbols = unpack_bits(np.frombuffer(raw, dtype=np.uint8), s.width, s.count)
    return symbols if pack_bits(symbols, s.width).tobytes() == raw else None


def _assemble(data: bytes, sections: list[_Section]) -> bytes:
    table = b"".join(_entry_bytes(s) for s in sections)
    head = _HEADER.pack(
        MAGIC, VERSION, 0, len(sections), len(data), hashlib.sha256(data).digest(), len(table), 0
    )
    crc = zlib.crc32(table, zlib.crc32(head[: _HEADER.size - 4]))
    return b"".join((head[: _HEADER.size - 4], struct.pack("<I", crc), table, *(s.payload for s in sections)))


def _entry_bytes(s: _Section) -> bytes:
    name, weight = s.name.encode("utf-8"), s.weight.encode("utf-8")
    if len(name) > 0xFFFF or len(weight) > 0xFFFF:
        raise ModelError(f"tensor name of {max(len(name), len(weight))} bytes is too long to pack")
    fixed = _ENTRY.pack(
        s.role,
        s.codec,
        s.width,
        s.op,
        zlib.crc32(s.payload),
        s.offset,
        s.raw_length,
        s.count,
        len(s.payload),
        len(name),
        len(weight),
    )
    return fixed + name + weight


def _within_limits(packed: bytes, size: int) -> bool:
    return size <= EXPANSION_ALLOWANCE + EXPANSION_RATIO * len(packed)


class CoderBug(RuntimeError):
    """A packed file that does not unpack to its input: a bug in onnx_dc's coders, not a fault of the model."""


def _check_round_trip(packed: bytes, data: bytes) -> None:
    """Unpack what was just packed; a stream that does not come back is a bug, raised as one (never stored
    around, where it would show only as a worse ratio)."""
    try:
        restored = _restore(packed)[1]
    except FormatError as err:
        raise CoderBug(f"a bug in onnx_dc's coders: the packed file does not unpack ({err})") from err
    if restored == data:
        return
    entries = _read_sections(memoryview(packed))[1]
    wrong = next((e for e in entries[1:] if restored[e.offset : e.offset + e.raw_length]
                  != data[e.offset : e.offset + e.raw_length]), entries[0])
    raise CoderBug(f"a bug in onnx_dc's {CODEC_NAMES[wrong.codec]} coder: {ROLE_NAMES[wrong.role]} stream "
                   f"{wrong.name or 'remainder'!r} does not unpack to the bytes it was packed from")


# ============================================================================ reading
@dataclass(frozen=True)
class _Header:
    version: int
    sections: int
    size: int
    digest: bytes
    table_bytes: int


def _read_header(buf: memoryview) -> _Header:
    if len(buf) < _HEADER.size:
        raise FormatError(f"not a .dcz file: {len(buf)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, flags, sections, size, digest, table_bytes, crc = _HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise FormatError("not a .dcz file (bad magic bytes)")
    if version not in READ_VERSIONS:
        raise FormatError(f"unsupported .dcz version {version} (this reader knows versions 1..{VERSION})")
    if table_bytes > len(buf) - _HEADER.size:
        raise FormatError(f"section table of {table_bytes} bytes runs past the end of the file (truncated?)")
    table = buf[_HEADER.size : _HEADER.size + table_bytes]
    if zlib.crc32(table, zlib.crc32(buf[: _HEADER.size - 4])) != crc:
        raise FormatError("header or section table checksum mismatch (corrupt file)")
    if flags != 0:
        raise FormatError(f"unknown header flags {flags:#x}")
    if not 1 <= sections <= MAX_SECTIONS:
        raise FormatError(f"section count {sections} is outside 1..{MAX_SECTIONS}")
    limit = min(MAX_OUTPUT_BYTES, EXPANSION_ALLOWANCE + EXPANSION_RATIO * len(buf))
    if size > limit:
        raise FormatError(f"declared output of {size} bytes exceeds the limit of {limit} bytes for this file")
    return _Header(version, sections, size, bytes(digest), table_bytes)


def _read_table(buf: memoryview, head: _Header) -> list[_Entry]:
    """The section table, with every payload checked to lie inside the file, back to back."""
    table = buf[_HEADER.size : _HEADER.size + head.table_bytes]
    entries, pos = [], 0
    payload_at = _HEADER.size + head.table_bytes
    for index in range(head.sections):
        if len(table) - pos < _ENTRY.size:
            raise FormatError(f"section table truncated at entry {index}")
        fields = _ENTRY.unpack_from(table, pos)
        pos += _ENTRY.size
        name_len, weight_len = fields[9], fields[10]
        if len(table) - pos < name_len + weight_len:
            raise FormatError(f"section table truncated in the names of entry {index}")
        name = _utf8(table[pos : pos + name_len], index)
        weight = _utf8(table[pos + name_len : pos + name_len + weight_len], index)
        pos += name_len + weight_len
        entry = _Entry(*fields[:9], name, weight, payload_at)
        if entry.stored_length > len(buf) - payload_at:
            raise FormatError(f"{entry.label(index)} runs past the end of the file (truncated?)")
        entries.append(entry)
        payload_at += entry.stored_length
    if pos != len(table):
        raise FormatError("section table has trailing bytes")
    if payload_at != len(buf):
        raise FormatError(f"{len(buf) - payload_at} unexpected bytes after the last section")
    return entries


def _utf8(raw: memoryview, index: int) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"section {index} has a name that is not UTF-8") from None


_STREAM_CODECS = {1: (STORED, HUFFMAN, RANGE), 2: (STORED, HUFFMAN, RANGE, MASK, REAL_CODES)}
# Which role and decoder ops each version-2 codec may code.
_CODEC_USE = {MASK: (GAPS, (2, 3)), REAL_CODES: (CODES, (2,))}


def _check_entry(e: _Entry, index: int, version: int) -> None:
    if e.role not in ROLE_NAMES:
        raise FormatError(f"{e.label(index)}: unknown role {e.role}")
    if e.role == REMAINDER:
        if index != 0 or e.codec not in (STORED, ZLIB, XZ) or e.width or e.op or e.count or e.offset:
            raise FormatError(f"{e.label(index)}: malformed remainder entry")
    else:
        if index == 0 or e.codec not in _STREAM_CODECS[version] or e.op not in OP_NAMES:
            raise FormatError(f"{e.label(index)}: unknown codec {e.codec} or decoder op {e.op}")
        role, ops = _CODEC_USE.get(e.codec, (e.role, (e.op,)))
        if e.role != role or e.op not in ops:
            raise FormatError(f"{e.label(index)}: codec {CODEC_NAMES[e.codec]} cannot code a "
                              f"{ROLE_NAMES[e.role]} stream of decoder op {e.op}")
        if (
            not 1 <= e.width <= MAX_BITS
            or e.count > MAX_COUNT
            or e.raw_length != packed_size(e.count, e.width)
        ):
            raise FormatError(
                f"{e.label(index)}: {e.count} symbols of {e.width} bits do not make {e.raw_length} bytes"
            )
    if e.codec == STORED and e.stored_length != e.raw_length:
        raise FormatError(f"{e.label(index)}: stored {e.stored_length} bytes, expected {e.raw_length}")


def _check_layout(entries: list[_Entry], size: int) -> None:
    """Streams sorted, disjoint and inside the file; the remainder fills exactly the rest."""
    if entries[0].role != REMAINDER:
        raise FormatError("the first section must be the remainder")
    end = 0
    for index, e in enumerate(entries[1:], start=1):
        if e.offset < end or e.offset + e.raw_length > size:
            raise FormatError(f"{e.label(index)} overlaps another stream or lies outside the file")
        end = e.offset + e.raw_length
    left = size - sum(e.raw_length for e in entries[1:])
    if entries[0].raw_length != left:
        raise FormatError(f"remainder of {entries[0].raw_length} bytes does not fill the {left} bytes left")


def _read_sections(buf: memoryview) -> tuple[_Header, list[_Entry]]:
    head = _read_header(buf)
    entries = _read_table(buf, head)
    for index, entry in enumerate(entries):
        _check_entry(entry, index, head.version)
    _check_layout(entries, head.size)
    _check_links(entries)
    return head, entries


def _check_links(entries: list[_Entry]) -> None:
    """Each REAL_CODES section has exactly one MASK section of the same weight and entry count."""
    masks: dict[str, _Entry] = {}
    for index, e in enumerate(entries):
        if e.codec == MASK:
            if e.weight in masks:
                raise FormatError(f"{e.label(index)}: a second mask section for weight {e.weight!r}")
            masks[e.weight] = e
    for index, e in enumerate(entries):
        if e.codec == REAL_CODES:
            mask = masks.get(e.weight)
            if mask is None or mask.count != e.count or mask.op != e.op:
                raise FormatError(f"{e.label(index)}: real codes without a matching mask section for {e.weight!r}")


def _payload(buf: memoryview, e: _Entry, index: int) -> memoryview:
    payload = buf[e.at : e.at + e.stored_length]
    if zlib.crc32(payload) != e.crc:
        raise FormatError(f"{e.label(index)} checksum mismatch (corrupt file)")
    return payload


# ============================================================================ unpacking
def unpack_bytes(dcz: bytes) -> bytes:
    """Restore the exact ``*.dc.onnx`` bytes from ``.dcz`` bytes.

    Raises:
        FormatError: on any truncated, corrupt, crafted or unsupported input, naming what is wrong.
    """
    head, out = _restore(dcz)
    if hashlib.sha256(out).digest() != head.digest:
        raise FormatError("reconstructed file fails its SHA-256 check (corrupt file)")
    return bytes(out)


def _restore(dcz: bytes) -> tuple[_Header, bytearray]:
    """The header of a ``.dcz`` and the file it holds, rebuilt section by section (its SHA-256 not yet checked)."""
    buf = memoryview(dcz).cast("B")
    head, entries = _read_sections(buf)
    out = bytearray(head.size)
    _fill_remainder(out, _inflate(_payload(buf, entries[0], 0), entries[0]), entries[1:])
    real = {}  # weight -> which entries are kept weights, from its mask section
    for index, entry in enumerate(entries):
        if entry.codec == MASK:
            decoded = _mask(_payload(buf, entry, index), entry, index)
            _put(out, pack_bits(decoded.gaps, entry.width), entry, index)
            real[entry.weight] = decoded.real
    for index, entry in enumerate(entries[1:], start=1):
        if entry.codec == REAL_CODES:
            codes = _real_codes(_payload(buf, entry, index), entry, index, real)
            _put(out, pack_bits(codes, entry.width), entry, index)
        elif entry.codec != MASK:
            _fill_stream(out, _payload(buf, entry, index), entry, index)
    return head, out


def _mask(payload: memoryview, e: _Entry, index: int) -> dczmask.DecodedMask:
    try:
        return dczmask.decode_mask_section(payload, e.count, e.width)
    except FormatError as err:
        raise FormatError(f"{e.label(index)}: {err}") from None


def _real_codes(payload: memoryview, e: _Entry, index: int, real: dict[str, np.ndarray]) -> np.ndarray:
    try:
        return dczmask.decode_real_codes(payload, real[e.weight], e.width)
    except FormatError as err:
        raise FormatError(f"{e.label(index)}: {err}") from None


def _put(out: bytearray, packed: np.ndarray, e: _Entry, index: int) -> None:
    if packed.size != e.raw_length:
        raise FormatError(f"{e.label(index)} decoded to {packed.size} bytes, expected {e.raw_length}")
    out[e.offset : e.offset + e.raw_length] = packed.tobytes()


def _inflate(payload: memoryview, e: _Entry) -> bytes:
    if e.codec == STORED:
        return bytes(payload)
    try:
        if e.codec == ZLIB:
            engine = zlib.decompressobj()
            data = engine.decompress(payload, e.raw_length)
            complete = engine.eof and not engine.unconsumed_tail and not engine.unused_data
        else:
            engine = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=_XZ_MEMLIMIT)
            data = engine.decompress(payload, e.raw_length)
            complete = engine.eof and not engine.unused_data
    except (zlib.error, lzma.LZMAError) as err:
        raise FormatError(f"remainder does not decompress: {err}") from None
    if not complete or len(data) != e.raw_length:
        raise FormatError(f"remainder does not decompress to exactly {e.raw_length} bytes")
    return data


def _fill_remainder(out: bytearray, remainder: bytes, streams: list[_Entry]) -> None:
    cursor = taken = 0
    for e in streams:
        gap = e.offset - cursor
        out[cursor : e.offset] = remainder[taken : taken + gap]
        taken += gap
        cursor = e.offset + e.raw_length
    out[cursor:] = remainder[taken:]


def _fill_stream(out: bytearray, payload: memoryview, e: _Entry, index: int) -> None:
    if e.codec == STORED:
        out[e.offset : e.offset + e.raw_length] = payload
        return
    cursor = e.offset
    try:
        # Pieces hold a multiple of 8 symbols, so each packs to whole bytes.
        for piece in _CODEC_MODULES[e.codec].iter_decode(payload, e.count, e.width):
            chunk = pack_bits(piece, e.width).tobytes()
            out[cursor : cursor + len(chunk)] = chunk
            cursor += len(chunk)
    except FormatError as err:
        raise FormatError(f"{e.label(index)}: {err}") from None
    if cursor != e.offset + e.raw_length:
        raise FormatError(f"{e.label(index)} decoded to {cursor - e.offset} bytes, expected {e.raw_length}")


# ============================================================================ report
def stream_report(dcz: bytes) -> list[dict]:
    """Per compressed weight: its streams' packed (P+Q) and entropy-coded (P+Q+H) sizes and models.

    Every stream is decoded (and checksum-verified) to measure its entropy under the model
    it was coded with: order-0 for a Huffman / range / stored stream, the row / column model
    for a mask (its side information, the counts, is what the coded size holds beyond that).

    Returns:
        One dict per weight, in file order, with keys ``name`` (the weight W), ``op``,
        ``count`` (stored entries), ``kept`` (real entries: count minus fillers, or count),
        ``code_bits``, ``index_bits`` (raw bits per code / index), and for ``codes`` and
        ``gaps`` each: ``{role}_packed_bytes``, ``{role}_coded_bytes``, ``{role}_codec``,
        ``{role}_entropy_bits`` (order-0 entropy of the stream's symbols, bits/symbol, None
        when the weight has no such stream); ``codes_model`` and ``positions_model`` (the
        model chosen), ``codes_entropy_bytes`` and ``positions_entropy_bytes`` (the entropy
        of the codes and of the positions under that model, in bytes); plus
        ``packed_bytes`` and ``coded_bytes`` summed over both streams.

    Raises:
        FormatError: on malformed input.
    """
    buf = memoryview(dcz).cast("B")
    _, entries = _read_sections(buf)
    rows: dict[str, dict] = {}
    masks = {e.weight: (_mask(_payload(buf, e, i), e, i), e) for i, e in enumerate(entries) if e.codec == MASK}
    real = {w: m.real for w, (m, _) in masks.items()}
    for index, e in enumerate(entries[1:], start=1):
        row = rows.setdefault(e.weight, _empty_row(e))
        role = ROLE_NAMES[e.role]
        row[f"{role}_packed_bytes"] = e.raw_length
        row[f"{role}_coded_bytes"] = e.stored_length
        row[f"{role}_codec"] = CODEC_NAMES[e.codec]
        if e.codec == MASK:
            decoded = masks[e.weight][0]
            symbols = decoded.gaps
            row.update(dczmask.mask_row(decoded))
        elif e.codec == REAL_CODES:
            symbols = _real_codes(_payload(buf, e, index), e, index, real)
            real_codes = symbols[real[e.weight]]
            row.update(dczmask.order0_row(real_codes, role), codes_model="order-0 of kept entries")
        else:
            symbols = _symbols(_payload(buf, e, index), e, index)
            row.update(dczmask.order0_row(symbols, role))
        row[f"{role}_entropy_bits"] = entropy_bits(symbols)
        row["code_bits" if e.role == CODES else "index_bits"] = e.width
        row["packed_bytes"] += e.raw_length
        row["coded_bytes"] += e.stored_length
    return list(rows.values())


def _empty_row(e: _Entry) -> dict:
    row = {"name": e.weight, "op": OP_NAMES[e.op], "count": e.count, "kept": e.count, "code_bits": 0,
           "index_bits": 0}
    for role in ("codes", "gaps"):
        row[f"{role}_packed_bytes"] = row[f"{role}_coded_bytes"] = 0
        row[f"{role}_codec"] = row[f"{role}_entropy_bits"] = None
    row.update(codes_model="order-0", positions_model="order-0 gaps", codes_entropy_bytes=None,
               positions_entropy_bytes=None, packed_bytes=0, coded_bytes=0)
    return row


def _symbols(payload: memoryview, e: _Entry, index: int) -> np.ndarray:
    if e.codec == STORED:
        return unpack_bits(np.frombuffer(payload, dtype=np.uint8), e.width, e.count)
    try:
        return _CODEC_MODULES[e.codec].decode(payload, e.count, e.width)
    except FormatError as err:
        raise FormatError(f"{e.label(index)}: {err}") from None


# ============================================================================ files
def pack(src_path: str | os.PathLike, dst_path: str | os.PathLike, codec: str = "auto") -> None:
    """Pack the ``*.dc.onnx`` at ``src_path`` into ``dst_path`` (written atomically).

    Raises:
        ConfigError: on an unknown codec.
        ModelError: when the input cannot be read or parsed, or ``dst_path`` is the input.
        OnnxDcError: when the output cannot be written.
    """
    refuse_overwrite(dst_path, [src_path])
    data = read_file(src_path)
    if is_dcz(data):
        raise ModelError(f"{src_path}: already a packed .dcz")
    try:
        if not find_streams(data):  # the format packs any ONNX bytes; a user packing a plain model is mistaken
            raise ModelError("not a compressed model (no onnx_dc decoders); run onnx-dc compress on it first, "
                             "then pack the .dc.onnx")
        packed = pack_bytes(data, codec)
    except ModelError as err:
        raise ModelError(f"{src_path}: {err}") from None
    write_bytes_atomic(packed, dst_path)


def unpack(src_path: str | os.PathLike, dst_path: str | os.PathLike) -> None:
    """Unpack the ``.dcz`` at ``src_path`` into the exact ``*.dc.onnx`` at ``dst_path`` (atomically).

    Raises:
        FormatError: when the input is not a valid ``.dcz`` (the message names the file).
        ModelError: when the input cannot be read or ``dst_path`` is the input.
        OnnxDcError: when the output cannot be written.
    """
    refuse_overwrite(dst_path, [src_path])
    packed = read_file(src_path)
    try:
        data = unpack_bytes(packed)
    except FormatError as err:
        raise FormatError(f"{src_path}: {err}") from None
    write_bytes_atomic(data, dst_path)


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of a file, or a ModelError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None

