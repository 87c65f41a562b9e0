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
    # Eight symbols fill exactly ``bits`` bytes: build them in two little-endian 64-bit words.
    groups = np.zeros((-(-sym.size // 8), 8), np.uint64)
    groups.ravel()[: sym.size] = sym
    lo = np.zeros(groups.shape[0], np.uint64)
    hi = np.zeros(groups.shape[0], np.uint64)
    for j in range(8):
        offset = j * bits
        col = groups[:, j]
        if offset < 64:
            lo |= col << np.uint64(offset)
            if offset + bits > 64:
                hi |= col >> np.uint64(64 - offset)
        else:
            hi |= col << np.uint64(offset - 64)
    words = np.stack([lo, hi], axis=1).astype("<u8").view(np.uint8)
    return np.ascontiguousarray(words[:, :bits]).ravel()[: packed_size(sym.size, bits)]


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
    n_groups = -(-count // 8)
    block = np.zeros((n_groups, 16), np.uint8)
    usable = min(buf.size, n_groups * bits)
    flat = np.zeros(n_groups * bits, np.uint8)
    flat[:usable] = buf[:usable]
    block[:, :bits] = flat.reshape(n_groups, bits)
    words = block.view("<u8").astype(np.uint64)
    lo, hi = words[:, 0], words[:, 1]
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((n_groups, 8), np.uint16)
    for j in range(8):
        offset = j * bits
        if offset < 64:
            val = lo >> np.uint64(offset)
            if offset + bits > 64:
                val |= hi << np.uint64(64 - offset)
        else:
            val = hi >> np.uint64(offset - 64)
        out[:, j] = val & mask
    return out.ravel()[:count]


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bit width must be 1..{MAX_BITS}, got {bits}")
