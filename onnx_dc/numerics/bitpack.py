"""Fixed-width bit packing of small unsigned integers.

Symbol ``i`` of width ``b`` occupies bits ``[i*b, i*b + b)`` of a little-endian bit
stream: bit ``k`` of the stream is bit ``k % 8`` of byte ``k // 8``. The last byte is
zero-padded. This is the layout the in-graph decoder of ``*.dc.onnx`` reads back
(see docs/DCONNX.md), so it must never change.
"""

from __future__ import annotations

import numpy as np

MAX_BITS = 16


def packed_size(count: int, bits: int) -> int:
    """Bytes needed to store ``count`` symbols of ``bits`` bits each."""
    return (count * bits + 7) // 8


def pack_bits(symbols: np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative integers below ``2**bits`` into a uint8 array.

    Args:
        symbols: 1-D integer array, every value in ``[0, 2**bits)``.
        bits: symbol width, 1..16.

    Returns:
        uint8 array of ``packed_size(len(symbols), bits)`` bytes.
    """
    _check_bits(bits)
    sym = np.asarray(symbols).ravel()
    if sym.size and (sym.min() < 0 or sym.max() >= (1 << bits)):
        raise ValueError(f"symbols must lie in [0, {1 << bits}) for {bits}-bit packing")
    if bits == 8:
        return sym.astype(np.uint8)
    # Spread each symbol into its bits (LSB first), then let packbits do the rest.
    shifts = np.arange(bits, dtype=np.uint32)
    bitmat = ((sym.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bitmat.ravel(), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: read ``count`` symbols of ``bits`` bits.

    Returns:
        uint16 array of length ``count``.
    """
    _check_bits(bits)
    buf = np.asarray(packed, dtype=np.uint8).ravel()
    if buf.size < packed_size(count, bits):
        raise ValueError(f"{buf.size} bytes cannot hold {count} symbols of {bits} bits")
    if bits == 8:
        return buf[:count].astype(np.uint16)
    flat = np.unpackbits(buf, bitorder="little", count=count * bits)
    weights = (1 << np.arange(bits, dtype=np.uint32)).astype(np.uint32)
    return (flat.reshape(count, bits).astype(np.uint32) @ weights).astype(np.uint16)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bit width must be 1..{MAX_BITS}, got {bits}")
