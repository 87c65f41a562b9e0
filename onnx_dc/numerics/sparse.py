"""Relative-index (gap) encoding of a sparse weight, with filler entries, as in the paper.

Kept weights at sorted flat positions ``p_0 < p_1 < ...`` are stored as gaps
``g_j = p_j - p_{j-1} - 1`` (``p_{-1} = -1``). A gap wider than ``2**b - 1`` (index width
``b``) is bridged by filler entries (value 0) every ``2**b`` positions, so a run of ``g``
zeros costs ``floor(g / 2**b)`` fillers. Entries: ``M(b) = kept + sum_j floor(g_j / 2**b)``;
bytes: ``ceil(M * code_bits / 8) + ceil(M * b / 8)``. :func:`best_index_bits` minimises that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx_dc.numerics.bitpack import packed_size


@dataclass(frozen=True)
class SparseEntries:
    """Stored entries of a sparse weight: positions (kept and fillers), gaps, and which are real."""

    positions: np.ndarray  # int64 [M], strictly increasing flat positions
    gaps: np.ndarray  # int64 [M], each in [0, 2**index_bits)
    real: np.ndarray  # bool [M], False for fillers
    index_bits: int


def kept_gaps(kept_positions: np.ndarray) -> np.ndarray:
    """Zero-run lengths before each kept position (sorted positions in, int64 gaps out)."""
    pos = np.asarray(kept_positions, dtype=np.int64)
    return np.diff(pos, prepend=np.int64(-1)) - 1


def filler_count(gaps: np.ndarray, index_bits: int) -> int:
    """Fillers needed to encode ``gaps`` at ``index_bits``."""
    return int(np.sum(gaps >> index_bits))


def sparse_bytes(gaps: np.ndarray, index_bits: int, value_bits: int) -> int:
    """Bytes of values (``value_bits`` each) plus indices at ``index_bits``, fillers included."""
    entries = gaps.size + filler_count(gaps, index_bits)
    return packed_size(entries, value_bits) + packed_size(entries, index_bits)


def best_index_bits(gaps: np.ndarray, value_bits: int, max_bits: int = 16) -> int:
    """Index width in 1..max_bits that gives the fewest bytes (the narrowest among equals)."""
    costs = [sparse_bytes(gaps, b, value_bits) for b in range(1, max_bits + 1)]
    return int(np.argmin(costs)) + 1


def encode_positions(kept_positions: np.ndarray, index_bits: int) -> SparseEntries:
    """Turn sorted kept positions into stored entries with fillers at ``index_bits``."""
    pos = np.asarray(kept_positions, dtype=np.int64)
    gaps = kept_gaps(pos)
    step = np.int64(1) << index_bits
    fill = gaps >> index_bits  # fillers before each kept entry
    total = pos.size + int(fill.sum())
    prev = np.concatenate(([-1], pos[:-1]))
    # Filler t (1-based) before kept entry j sits at prev_j + t * 2**b.
    owner = np.repeat(np.arange(pos.size), fill)
    rank = np.arange(owner.size) - np.repeat(np.cumsum(fill) - fill, fill) + 1
    filler_pos = prev[owner] + rank * step
    positions = np.empty(total, np.int64)
    real = np.zeros(total, bool)
    slot = np.arange(pos.size) + np.cumsum(fill)  # index of kept entry j among all entries
    positions[slot] = pos
    real[slot] = True
    positions[~real] = filler_pos
    out_gaps = np.diff(positions, prepend=np.int64(-1)) - 1
    return SparseEntries(positions, out_gaps, real, index_bits)


def decode_positions(gaps: np.ndarray) -> np.ndarray:
    """Positions from stored gaps: ``cumsum(gaps + 1) - 1`` (what the ONNX decoder computes)."""
    return np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1
