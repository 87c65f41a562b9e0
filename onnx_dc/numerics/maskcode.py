"""Coding the mask of a sparse weight (which positions are kept) under row / column density models.

Math: the weight is an ``R x C`` grid (``R = shape[0]``, the output channels; ``C`` the rest
flattened), its mask ``m_ij`` in {0, 1}, row counts ``r_i = sum_j m_ij``, column counts
``c_j = sum_i m_ij``, ``K = sum m``. A line (row or column) of ``n`` positions with count
``k`` has the class ``L = bit_length(k)``; its density is represented by the class's level
``q_L = floor(mean of k over the lines of class L)`` (so ``q_0 = 0``, ``q_L = n`` only when
every line of the class is full). With ``a_i``, ``b_j`` the levels of row i and column j:

    COLS:  p_ij = b_j / R
    ROWS:  p_ij = a_i / C
    BOTH:  p_ij = 0 if a_i = 0 or b_j = 0;  1 if a_i = C or b_j = R;
           else clip(a_i * b_j / K, 2**-16, 1 - 2**-16)      (rows and columns independent)

Positions with ``p`` 0 or 1 are implied and cost nothing (a whole pruned row or column is
stored once, as class 0). The others are range-coded in row-major order as Bernoulli(p_ij)
symbols (``constriction``'s range coder with one model parameter per symbol, so coding runs
in compiled code, a block of rows per call). The cost of a model is ``-sum log2 p(m_ij)``
(the entropy of the mask under it) plus its side information: the classes, entropy-coded
(Huffman or range, whichever is smaller), and one level per class used. Levels instead of
exact counts measured smaller on LeNet masks: the bits below a count's leading one cost
more than the finer densities save. docs/FORMAT.md ("Mask stream") specifies the bytes.
Malformed input raises FormatError.
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
BOTH_MAX_POSITIONS = 1 << 22
"""The product model needs a pass over every position to cost it; larger weights skip it."""
_BLOCK = 1 << 20  # positions per coder call (bounds scratch memory)
_HEAD = struct.Struct("<BQQQ")  # model, rows, cols, kept
_LEVELS = struct.Struct("<BI")  # class codec, class stream bytes
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


# ============================================================================ levels
def levels(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class of every line, level of every class 0..max) for line counts (module docstring)."""
    k = np.asarray(counts, dtype=np.int64).ravel()
    classes = np.frexp(k.astype(np.float64))[1].astype(np.int64)  # exact bit length below 2**53
    top = int(classes.max()) if classes.size else 0
    sums = np.bincount(classes, weights=k, minlength=top + 1)
    lines = np.bincount(classes, minlength=top + 1)
    table = np.where(lines > 0, np.floor(sums / np.maximum(lines, 1)), 0).astype(np.int64)
    return classes, table


def line_levels(counts: np.ndarray) -> np.ndarray:
    """The level of every line: the density a model codes it with."""
    classes, table = levels(counts)
    return table[classes]


def encode_levels(counts: np.ndarray, limit: int) -> bytes:
    """Side information of lines of ``limit`` positions: classes (entropy-coded), then class levels."""
    classes, table = levels(counts)
    streams = {codec: mod.encode(classes) for codec, mod in _CODERS.items()}
    codec = min(streams, key=lambda c: (len(streams[c]), c))
    return _LEVELS.pack(codec, len(streams[codec])) + streams[codec] + _pack(table[1:], int(limit).bit_length())


def _pack(values: np.ndarray, width: int) -> bytes:
    shifts = np.arange(width, dtype=np.uint64)
    bits = ((values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def decode_levels(view: memoryview, n: int, limit: int) -> tuple[np.ndarray, int]:
    """The levels of ``n`` lines of ``limit`` positions from the start of ``view``; returns (levels, bytes used)."""
    if len(view) < _LEVELS.size:
        raise FormatError("mask stream truncated in its line classes")
    codec, class_len = _LEVELS.unpack_from(view)
    if codec not in _CODERS:
        raise FormatError(f"mask line classes use unknown codec {codec}")
    if len(view) < _LEVELS.size + class_len:
        raise FormatError("mask stream truncated in its line classes")
    classes = _CODERS[codec].decode(view[_LEVELS.size : _LEVELS.size + class_len], n, _CLASS_BITS).astype(np.int64)
    width = int(limit).bit_length()
    top = int(classes.max()) if classes.size else 0
    if top > width:
        raise FormatError(f"mask line class {top} exceeds a line of {limit} positions")
    start = _LEVELS.size + class_len
    end = start + (top * width + 7) // 8
    if len(view) < end:
        raise FormatError("mask stream truncated in its class levels")
    bits = np.unpackbits(np.frombuffer(view[start:end], dtype=np.uint8), bitorder="little")
    if bits[top * width :].any():
        raise FormatError("non-zero padding bits after the mask class levels")
    table = np.concatenate(([0], bits[: top * width].reshape(top, width) @ (1 << np.arange(width))))
    _check_table(table.astype(np.int64), np.bincount(classes, minlength=top + 1) > 0, limit)
    return table[classes].astype(np.int64), end


def _check_table(table: np.ndarray, used: np.ndarray, limit: int) -> None:
    cls = np.arange(table.size)
    low = np.where(cls > 0, np.left_shift(1, np.maximum(cls - 1, 0)), 0)
    high = np.minimum((np.left_shift(1, cls)) - 1, limit)
    bad = np.where(used, (table < low) | (table > high), table != 0)
    if bad.any():
        raise FormatError(f"mask class {int(np.flatnonzero(bad)[0])} has an impossible level")


# ============================================================================ probabilities and costs
def _probs(model: int, a: np.ndarray, b: np.ndarray, total: int, rows: int, cols: int, r0: int, r1: int) -> np.ndarray:
    """p_ij (float64, flat) for rows ``r0:r1`` from row levels ``a`` and column levels ``b``."""
    r = a[r0:r1, None].astype(np.float64)
    c = b[None, :].astype(np.float64)
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


def _line_bits(k: np.ndarray, level: np.ndarray, n: int) -> float:
    """Sum over lines of ``-log2`` P(line) for lines of ``n`` positions, ``k`` kept, coded at ``level / n``."""
    coded = (level > 0) & (level < n)
    p = level[coded] / n
    k = k[coded].astype(np.float64)
    return float(-(k * np.log2(p) + (n - k) * np.log2(1 - p)).sum())


def _model_levels(g: Grid, model: int) -> tuple[np.ndarray, np.ndarray]:
    a = line_levels(g.row_counts) if model != COLS else np.zeros(g.rows, np.int64)
    b = line_levels(g.col_counts) if model != ROWS else np.zeros(g.cols, np.int64)
    return a, b


def mask_bits(g: Grid, model: int) -> float:
    """Entropy of the mask under ``model``, in bits (the ideal size of the coded mask bits)."""
    a, b = _model_levels(g, model)
    if model == COLS:
        return _line_bits(g.col_counts, b, g.rows)
    if model == ROWS:
        return _line_bits(g.row_counts, a, g.cols)
    bits, total = 0.0, int(g.kept.size)
    for r0, r1 in _blocks(g.rows, g.cols):
        p = _probs(model, a, b, total, g.rows, g.cols, r0, r1)
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


def _sides(g: Grid, model: int) -> list[tuple[np.ndarray, int]]:
    """(line counts, line length) of the side information of ``model``: rows first."""
    rows, cols = (g.row_counts, g.cols), (g.col_counts, g.rows)
    return {COLS: [cols], ROWS: [rows], BOTH: [rows, cols]}[model]


def model_cost(g: Grid, model: int) -> float:
    """Estimated bytes of the mask stream: header, side information, and the mask's entropy under ``model``."""
    side = sum(len(encode_levels(k, n)) for k, n in _sides(g, model))
    return _HEAD.size + side + mask_bits(g, model) / 8 + 4


# ============================================================================ mask streams
def encode_mask(g: Grid, model: int) -> bytes:
    """The mask stream of ``g`` under ``model`` (docs/FORMAT.md, "Mask stream")."""
    total = int(g.kept.size)
    parts = [_HEAD.pack(model, g.rows, g.cols, total)] + [encode_levels(k, n) for k, n in _sides(g, model)]
    a, b = _model_levels(g, model)
    family = constriction.stream.model.Bernoulli(perfect=False)
    encoder = constriction.stream.queue.RangeEncoder()
    for r0, r1 in _blocks(g.rows, g.cols):
        p = _probs(model, a, b, total, g.rows, g.cols, r0, r1)
        coded = (p > 0) & (p < 1)
        if coded.any():
            encoder.encode(_block_mask(g.kept, g.cols, r0, r1)[coded].astype(np.int32), family, p[coded])
    parts.append(encoder.get_compressed().astype("<u4").tobytes())
    return b"".join(parts)


def read_model(data: bytes | memoryview) -> int:
    """The model id of a mask stream (0 when the stream is empty)."""
    view = memoryview(data).cast("B")
    return view[0] if len(view) else 0


def decode_mask(data: bytes | memoryview, max_positions: int, max_kept: int) -> tuple[Grid, int]:
    """Decode a mask stream into its grid; returns (grid, model).

    Args:
        data: the stream, exactly.
        max_positions: largest ``rows * cols`` accepted (checked before any allocation).
        max_kept: largest number of kept positions accepted.

    Raises:
        FormatError: on a malformed, truncated or inconsistent stream.
    """
    view = memoryview(data).cast("B")
    if len(view) < _HEAD.size:
        raise FormatError("mask stream is shorter than its header")
    model, rows, cols, total = _HEAD.unpack_from(view)
    if model not in MODEL_NAMES:
        raise FormatError(f"unknown mask model {model}")
    if rows < 1 or cols < 1 or rows * cols > max_positions:
        raise FormatError(f"mask grid {rows} x {cols} is outside 1..{max_positions} positions")
    if total > min(max_kept, rows * cols):
        raise FormatError(f"mask declares {total} kept positions, at most {min(max_kept, rows * cols)} allowed")
    pos = _HEAD.size
    a, b = np.zeros(rows, np.int64), np.zeros(cols, np.int64)
    if model != COLS:
        a, used = decode_levels(view[pos:], rows, cols)
        pos += used
    if model != ROWS:
        b, used = decode_levels(view[pos:], cols, rows)
        pos += used
    kept = _decode_bits(view[pos:], model, a, b, total, rows, cols)
    return grid(kept, (rows, cols)), model


def _decode_bits(payload: memoryview, model: int, a: np.ndarray, b: np.ndarray,
                 total: int, rows: int, cols: int) -> np.ndarray:
    if len(payload) % 4:
        raise FormatError(f"mask payload of {len(payload)} bytes is not a whole number of 32-bit words")
    family = constriction.stream.model.Bernoulli(perfect=False)
    pieces, found = [], 0
    try:
        decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
        for r0, r1 in _blocks(rows, cols):
            p = _probs(model, a, b, total, rows, cols, r0, r1)
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
        raise FormatError(f"mask decodes to {found} or more kept positions, its header says {total}")
    if not exhausted:
        raise FormatError("mask stream has data left after its last bit")
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
