"""The envelope shared by the entropy-coded symbol streams (Huffman and range coding).

A stream starts with ``kind: u8, count: u32, alphabet: u32`` (little-endian). ``kind`` 0
is an empty stream (nothing follows), 1 a stream of one repeated symbol (``symbol: u32``
follows), 2 a coded stream whose layout belongs to the codec (docs/FORMAT.md). The
helpers here validate that envelope and pack small integer tables.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

import numpy as np

from onnx_dc.errors import FormatError

MAX_ALPHABET = 1 << 16
"""Symbols are below 2**16: the widest code / index of a ``*.dc.onnx`` file has 16 bits."""

KIND_EMPTY, KIND_SINGLE, KIND_CODED = 0, 1, 2
HEAD = struct.Struct("<BII")  # kind, count, alphabet size
SINGLE = struct.Struct("<I")  # the one symbol


def empty_stream() -> bytes:
    """The stream of zero symbols."""
    return HEAD.pack(KIND_EMPTY, 0, 0)


def single_stream(count: int, alphabet: int) -> bytes:
    """The stream of ``count`` copies of the symbol ``alphabet - 1``."""
    return HEAD.pack(KIND_SINGLE, count, alphabet) + SINGLE.pack(alphabet - 1)


def read_head(view: memoryview, count: int, bits: int, name: str) -> tuple[int, int]:
    """Validate a stream's envelope; returns (kind, alphabet size). ``name`` labels errors."""
    if len(view) < HEAD.size:
        raise FormatError(f"{name} stream of {len(view)} bytes is shorter than its {HEAD.size}-byte header")
    kind, declared, alphabet = HEAD.unpack_from(view)
    if declared != count:
        raise FormatError(f"{name} stream declares {declared} symbols, expected {count}")
    if kind not in (KIND_EMPTY, KIND_SINGLE, KIND_CODED):
        raise FormatError(f"unknown {name} stream kind {kind}")
    if (kind == KIND_EMPTY) != (count == 0):
        raise FormatError(f"{name} stream kind {kind} does not match its symbol count {count}")
    if kind == KIND_EMPTY and (alphabet != 0 or len(view) != HEAD.size):
        raise FormatError(f"empty {name} stream carries data")
    low = 2 if kind == KIND_CODED else 1
    high = min(MAX_ALPHABET, 1 << bits)
    if kind != KIND_EMPTY and not low <= alphabet <= high:
        raise FormatError(f"{name} alphabet size {alphabet} is outside {low}..{high}")
    return kind, alphabet


def single_symbol(view: memoryview, alphabet: int, name: str) -> int:
    """The symbol of a single-symbol stream."""
    if len(view) != HEAD.size + SINGLE.size:
        raise FormatError(f"single-symbol {name} stream has the wrong length")
    (symbol,) = SINGLE.unpack_from(view, HEAD.size)
    if symbol >= alphabet:
        raise FormatError(f"single-symbol {name} stream: symbol {symbol} outside its alphabet of {alphabet}")
    return symbol


def repeat_pieces(symbol: int, count: int, piece: int) -> Iterator[np.ndarray]:
    """``count`` copies of ``symbol`` as uint16 pieces of ``piece`` symbols (the last one shorter)."""
    for start in range(0, count, piece):
        yield np.full(min(piece, count - start), symbol, dtype=np.uint16)


def collect(pieces: Iterable[np.ndarray], count: int) -> np.ndarray:
    """Concatenate decoded pieces into one uint16 array of ``count`` symbols."""
    out = np.empty(count, dtype=np.uint16)
    done = 0
    for piece in pieces:
        out[done : done + piece.size] = piece
        done += piece.size
    return out


def pack_fields(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers below ``2**width`` (width 1..32) LSB-first into bytes.

    Value ``i`` occupies stream bits ``[i*width, (i+1)*width)``, stream bit ``k`` being bit
    ``k % 8`` of byte ``k // 8``; the last byte is zero-padded.
    """
    vals = np.asarray(values, dtype=np.uint64).ravel()
    shifts = np.arange(width, dtype=np.uint64)
    bits = ((vals[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def unpack_fields(data: bytes | memoryview, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fields`; ``data`` must hold exactly ``ceil(count*width/8)`` bytes.

    Raises:
        FormatError: when the byte count is wrong or the padding bits are not zero.
    """
    nbytes = (count * width + 7) // 8
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size != nbytes:
        raise FormatError(f"field table holds {buf.size} bytes, expected {nbytes}")
    bits = np.unpackbits(buf, bitorder="little")
    if bits[count * width :].any():
        raise FormatError("non-zero padding bits after a field table")
    weights = np.left_shift(np.uint64(1), np.arange(width, dtype=np.uint64))
    return bits[: count * width].reshape(count, width).astype(np.uint64) @ weights


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical entropy of a symbol array in bits per symbol (0 for an empty array)."""
    sym = np.asarray(symbols).ravel()
    if sym.size == 0:
        return 0.0
    p = np.bincount(sym) / sym.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())
