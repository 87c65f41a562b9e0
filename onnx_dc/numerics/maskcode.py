"""Coding the mask of a sparse weight (which positions are kept) under row / column density models.

Math: the weight is an ``R x C`` grid (``R = shape[0]``, the output channels; ``C`` the rest
flattened), its mask ``m_ij`` in {0, 1}, row counts ``r_i = sum_j m_ij``, column counts
``c_j = sum_i m_ij``, ``K = sum m``. Each model gives every position a probability of being kept:

    COLS:  p_ij = c_j / R
    ROWS:  p_ij = r_i / C
    BOTH:  p_ij = 0 if r_i = 0 or c_j = 0;  1 if r_i = C or c_j = R;
           else clip(r_i * c_j / K, 2**-16, 1 - 2**-16)      (rows and columns independent)

Positions with ``p`` 0 or 1 are implied by the counts and cost nothing (whole pruned rows or
columns are stored once, as a count of 0). The others are range-coded in row-major order as
Bernoulli(p_ij) symbols (``constriction``'s range coder with one model parameter per symbol,
so encoding and decoding run in compiled code, a block of rows per call). The cost under a
model is ``-sum log2 p(m_ij)`` (the entropy of the mask under it) plus its counts.

Counts are coded as the class ``L = bit_length(k)`` of each count (entropy-coded, Huffman or
range, whichever is smaller) and the ``L - 1`` bits below the leading one, as a field table.
docs/FORMAT.md ("Mask stream") specifies the bytes. Malformed input raises FormatError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import constriction
import numpy as np

from onnx_dc.errors import FormatError
from onnx_dc.numerics import huffman, rangecoder

COLS, ROWS, BOTH = 1, 2, 3
MODEL_NAMES = {COLS: "columns", ROWS: "rows", BOTH: "rows x columns"}
HUFFMAN, RANGE = 3, 4
"""Codec ids of a counts class stream: the ``.dcz`` section codec ids of the same coders."""
_CODERS = {HUFFMAN: huffman, RANGE: rangecoder}
CLIP = 2.0**-16
BOTH_MAX_POSITIONS = 1 << 24
"""The product model needs a pass over every position to cost it; larger weights skip it."""
_BLOCK = 1 << 20  # positions per coder call (bounds scratch memory)
_HEAD = struct.Struct("<BQQ")  # model, rows, cols
_COUNTS = struct.Struct("<BII")  # class codec, class stream bytes, low-bit table bytes
_CLASS_BITS = 6  # classes are bit lengths of counts below 2**63


@dataclass(frozen=True)
class Grid:
    """A mask as kept flat positions in an ``rows x cols`` row-major grid, with its counts."""

    rows: int
    cols: int
    kept: np.ndarray  # int64, sorted flat positions
    row_counts: np.ndarray  # int64 [rows]
    col_counts: np.ndarray  # int64 [cols]


def grid(kept: np.ndarray, shape: tuple[int, ...]) -> Grid:
    """The grid of a weight of ``shape`` (rows = ``shape[0]``) with mask positions ``kept``."""
    numel = int(np.prod(shape, dtype=np.int64))
    rows = int(shape[0]) if shape else 1
    cols = numel // max(rows, 1)
    pos = np.asarray(kept, dtype=np.int64)
    return Grid(rows, cols, pos, np.bincount(pos // cols, minlength=rows), np.bincount(pos % cols, minlength=cols))


# ============================================================================ probabilities and costs
def _probs(model: int, g_rows: np.ndarray, g_cols: np.ndarray, total: int, rows: int, cols: int,
           r0: int, r1: int) -> np.ndarray:
    """p_ij (float64, flat) for rows ``r0:r1`` of the grid, from the counts (module docstring)."""
    r = g_rows[r0:r1, None].astype(np.float64)
    c = g_cols[None, :].astype(np.float64)
    if model == COLS:
        p = np.broadcast_to(c / rows, (r1 - r0, cols))
    elif model == ROWS:
        p = np.broadcast_to(r / cols, (r1 - r0, cols))
    else:
        p = np.clip(r * c / max(total, 1), CLIP, 1.0 - CLIP)
        p = np.where((r == 0) | (c == 0), 0.0, p)
        p = np.where((r == cols) | (c == rows), 1.0, p)
    return np.ascontiguousarray(p).ravel()


def _blocks(rows: int, cols: int):
    step = max(1, _BLOCK // max(cols, 1))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def _bernoulli_bits(k: np.ndarray, n: int) -> float:
    """Sum over lines of ``-log2`` of a line of ``n`` positions with ``k`` kept at ``p = k / n``."""
    k = k[(k > 0) & (k < n)].astype(np.float64)
    return float(-(k * np.log2(k / n) + (n - k) * np.log2(1 - k / n)).sum())


def mask_bits(g: Grid, model: int) -> float:
    """Entropy of the mask under ``model``, in bits (the ideal size of the coded mask bits)."""
    if model == COLS:
        return _bernoulli_bits(g.col_counts, g.rows)
    if model == ROWS:
        return _bernoulli_bits(g.row_counts, g.cols)
    bits, total = 0.0, int(g.kept.size)
    for r0, r1 in _blocks(g.rows, g.cols):
        p = _probs(model, g.row_counts, g.col_counts, total, g.rows, g.cols, r0, r1)
        m = _block_mask(g.kept, g.cols, r0, r1)
        coded = (p > 0) & (p < 1)
        bits -= float(np.log2(np.where(m, p, 1 - p)[coded]).sum())
    return bits


def _block_mask(kept: np.ndarray, cols: int, r0: int, r1: int) -> np.ndarray:
    lo, hi = np.searchsorted(kept, [r0 * cols, r1 * cols])
    m = np.zeros((r1 - r0) * cols, dtype=bool)
    m[kept[lo:hi] - r0 * cols] = True
    return m


def models_for(g: Grid) -> list[int]:
    """The models worth trying on a grid (the product model only up to BOTH_MAX_POSITIONS)."""
    return [COLS, ROWS, BOTH] if g.rows * g.cols <= BOTH_MAX_POSITIONS else [COLS, ROWS]


def _line_counts(g: Grid, model: int) -> list[np.ndarray]:
    return {COLS: [g.col_counts], ROWS: [g.row_counts], BOTH: [g.row_counts, g.col_counts]}[model]


# ============================================================================ counts
def encode_counts(counts: np.ndarray) -> bytes:
    """Counts as entropy-coded bit-length classes plus the bits below each leading one."""
    k = np.asarray(counts, dtype=np.uint64).ravel()
    classes = _bit_length(k)
    streams = {codec: mod.encode(classes) for codec, mod in _CODERS.items()}
    codec = min(streams, key=lambda c: (len(streams[c]), c))
    low = _pack_low(k, classes)
    return _COUNTS.pack(codec, len(streams[codec]), len(low)) + streams[codec] + low


def counts_bytes(counts: np.ndarray) -> int:
    """Length of :func:`encode_counts` of ``counts``."""
    return len(encode_counts(counts))


def _bit_length(k: np.ndarray) -> np.ndarray:
    # frexp's exponent of an integer below 2**53 is exactly its bit length.
    return np.frexp(k.astype(np.float64))[1].astype(np.int64)


def _pack_low(k: np.ndarray, classes: np.ndarray) -> bytes:
    widths = np.maximum(classes - 1, 0)
    if widths.sum() == 0:
        return b""
    shifts = np.arange(int(widths.max()), dtype=np.uint64)
    bits = ((k[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits[shifts[None, :] < widths[:, None].astype(np.uint64)], bitorder="little").tobytes()


def decode_counts(view: memoryview, n: int, limit: int) -> tuple[np.ndarray, int]:
    """Read ``n`` counts (each at most ``limit``) from the start of ``view``; returns (counts, bytes used)."""
    if len(view) < _COUNTS.size:
        raise FormatError("mask stream truncated in its counts")
    codec, class_len, low_len = _COUNTS.unpack_from(view)
    if codec not in _CODERS:
        raise FormatError(f"mask counts use unknown codec {codec}")
    end = _COUNTS.size + class_len + low_len
    if len(view) < end:
        raise FormatError("mask stream truncated in its counts")
    classes = _CODERS[codec].decode(view[_COUNTS.size : _COUNTS.size + class_len], n, _CLASS_BITS).astype(np.int64)
    if classes.size and int(classes.max()) > int(limit).bit_length():
        raise FormatError(f"mask count class {int(classes.max())} exceeds a line of {limit} positions")
    widths = np.maximum(classes - 1, 0)
    total = int(widths.sum())
    if (total + 7) // 8 != low_len:
        raise FormatError(f"mask count bits take {low_len} bytes, expected {(total + 7) // 8}")
    bits = np.unpackbits(np.frombuffer(view[_COUNTS.size + class_len : end], dtype=np.uint8), bitorder="little")
    if bits[total:].any():
        raise FormatError("non-zero padding bits after the mask counts")
    owner = np.repeat(np.arange(n), widths)
    rank = np.arange(total) - np.repeat(np.cumsum(widths) - widths, widths)
    low = np.bincount(owner, weights=bits[:total] * np.exp2(rank), minlength=n).astype(np.int64)
    counts = np.where(classes > 0, (np.int64(1) << np.maximum(classes - 1, 0)) + low, 0)
    if counts.size and int(counts.max()) > limit:
        raise FormatError(f"mask count {int(counts.max())} exceeds a line of {limit} positions")
    return counts, end


# ============================================================================ mask streams
def encode_mask(g: Grid, model: int) -> bytes:
    """The mask stream of ``g`` under ``model`` (docs/FORMAT.md, "Mask stream")."""
    parts = [_HEAD.pack(model, g.rows, g.cols)] + [encode_counts(k) for k in _line_counts(g, model)]
    family = constriction.stream.model.Bernoulli(perfect=False)
    encoder = constriction.stream.queue.RangeEncoder()
    total = int(g.kept.size)
    for r0, r1 in _blocks(g.rows, g.cols):
        p = _probs(model, g.row_counts, g.col_counts, total, g.rows, g.cols, r0, r1)
        coded = (p > 0) & (p < 1)
        if coded.any():
            m = _block_mask(g.kept, g.cols, r0, r1)
            encoder.encode(m[coded].astype(np.int32), family, p[coded])
    parts.append(encoder.get_compressed().astype("<u4").tobytes())
    return b"".join(parts)


def read_model(data: bytes | memoryview) -> int:
    """The model id of a mask stream (0 when the stream is too short to hold one)."""
    view = memoryview(data).cast("B")
    return view[0] if len(view) else 0


def decode_mask(data: bytes | memoryview, max_positions: int, max_kept: int) -> tuple[Grid, int]:
    """Decode a mask stream into its grid; returns (grid, model).

    Args:
        data: the stream, exactly.
        max_positions: largest ``rows * cols`` accepted (checked before any allocation).
        max_kept: largest number of kept positions accepted (checked from the counts).

    Raises:
        FormatError: on a malformed, truncated or inconsistent stream.
    """
    view = memoryview(data).cast("B")
    if len(view) < _HEAD.size:
        raise FormatError("mask stream is shorter than its header")
    model, rows, cols = _HEAD.unpack_from(view)
    if model not in MODEL_NAMES:
        raise FormatError(f"unknown mask model {model}")
    if rows < 1 or cols < 1 or rows * cols > max_positions:
        raise FormatError(f"mask grid {rows} x {cols} is outside 1..{max_positions} positions")
    pos = _HEAD.size
    lines = {COLS: [(cols, rows)], ROWS: [(rows, cols)], BOTH: [(rows, cols), (cols, rows)]}[model]
    tables = []
    for n, limit in lines:
        counts, used = decode_counts(view[pos:], n, limit)
        tables.append(counts)
        pos += used
    total = int(tables[0].sum())
    if total > max_kept or any(int(t.sum()) != total for t in tables):
        raise FormatError(f"mask counts sum to {[int(t.sum()) for t in tables]}, at most {max_kept} allowed")
    row_counts = tables[0] if model != COLS else np.zeros(rows, np.int64)
    col_counts = tables[-1] if model != ROWS else np.zeros(cols, np.int64)
    g = grid(_decode_bits(view[pos:], model, row_counts, col_counts, total, rows, cols), (rows, cols))
    if any(not np.array_equal(t, k) for t, k in zip(tables, _line_counts(g, model))):
        raise FormatError("mask bits do not match their row / column counts")
    return g, model


def _decode_bits(payload: memoryview, model: int, row_counts: np.ndarray, col_counts: np.ndarray,
                 total: int, rows: int, cols: int) -> np.ndarray:
    if len(payload) % 4:
        raise FormatError(f"mask payload of {len(payload)} bytes is not a whole number of 32-bit words")
    family = constriction.stream.model.Bernoulli(perfect=False)
    pieces, found = [], 0
    try:
        decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
        for r0, r1 in _blocks(rows, cols):
            p = _probs(model, row_counts, col_counts, total, rows, cols, r0, r1)
            m = p >= 1.0
            coded = (p > 0) & (p < 1)
            if coded.any():
                m[coded] = decoder.decode(family, p[coded]).astype(bool)
            piece = np.flatnonzero(m) + r0 * cols
            found += piece.size
            if found > total:
                break
            pieces.append(piece)
        exhausted = decoder.maybe_exhausted()
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # constriction reports bad data as assertion errors or panics
        raise FormatError(f"mask bits do not decode: {err}") from None
    if found != total:
        raise FormatError(f"mask decodes to {found} kept positions, its counts say {total}")
    if not exhausted:
        raise FormatError("mask stream has data left after its last bit")
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


def model_cost(g: Grid, model: int) -> float:
    """Estimated bytes of the mask stream: header, counts, and the mask's entropy under ``model``."""
    side = sum(counts_bytes(k) for k in _line_counts(g, model))
    return _HEAD.size + side + mask_bits(g, model) / 8 + 4
