"""Position models of ``.dcz`` version 2: a sparse node's mask instead of its gaps stream.

Math: a sparse node stores entries ``(code_j, gap_j)``, kept weights and fillers, at flat
positions ``pos = cumsum(gap + 1) - 1`` (onnx_dc/numerics/sparse.py). Its mask is

    kept = pos[code != 0]                          (DecodeSparse: fillers hold code 0)
    kept = pos[gap != 2**b - 1] + the last entry   (DecodeSparseValues: values are not streams)

and the node is mask-coded only when ``encode_positions(kept, b)`` gives back exactly its
gaps (and, for DecodeSparse, exactly the fillers where code == 0). Then

    gaps section  (codec MASK):       the mask under the cheapest of: order-0 gaps with the
                                      fillers told apart (symbol 2**b marks a filler, model 0),
                                      or a row / column model (onnx_dc/numerics/maskcode.py)
    codes section (codec REAL_CODES): the codes of the kept entries only, order-0 coded;
                                      fillers get code 0 back from the mask

Both are chosen only where they make the node's two sections smaller than order-0 coding
of its gaps and codes streams. docs/FORMAT.md specifies the bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from onnx_dc.errors import FormatError
from onnx_dc.numerics import huffman, maskcode, rangecoder
from onnx_dc.numerics.bitpack import pack_bits, packed_size, unpack_bits
from onnx_dc.numerics.sparse import decode_positions, encode_positions
from onnx_dc.numerics.symstream import entropy_bits

MASK, REAL_CODES = 5, 6
"""Section codec ids (see onnx_dc/formats/dcz.py for the others)."""
STORED, HUFFMAN, RANGE = 0, 3, 4
POSITIONS_PER_ENTRY = 64
"""A mask may span at most ``POSITIONS_PER_ENTRY * count + 2**20`` positions (bounds decoding work)."""
ORDER0 = 0
"""Mask model 0: order-0 coded gaps, fillers tagged (the others are maskcode's models)."""
GRID_MARGIN = 0.01
"""A row / column model is coded only where its estimate beats order-0 by this fraction: on masks
without structure (random weights of VGG-16 shape) the models came within 0.1% of order-0, and
coding a mask costs about 80 ns per position against a few ns per entry for order-0. Grids of at
most GRID_MARGIN_POSITIONS (a tenth of a second or less) need no margin."""
GRID_MARGIN_POSITIONS = 1 << 20
RANGE_ONLY_SYMBOLS = 1 << 17
"""Above this many symbols only the range coder is tried: on every such stream of the VGG-16-sized
model of scripts/bench_scale.py it was smaller than Huffman (whose sync table grows with the stream)."""
_INNER = struct.Struct("<B")  # codec of the real codes
_MODEL = struct.Struct("<B")  # mask model
_CODERS = {HUFFMAN: huffman, RANGE: rangecoder}


def max_positions(count: int) -> int:
    """Largest mask accepted for a node of ``count`` entries."""
    return POSITIONS_PER_ENTRY * count + (1 << 20)


@dataclass(frozen=True)
class NodeStreams:
    """The decoded symbols of one sparse node, as the packer sees them."""

    shape: tuple[int, ...]
    width: int  # index bits
    gaps: np.ndarray
    codes: np.ndarray | None  # None for DecodeSparseValues
    code_bits: int


@dataclass(frozen=True)
class MaskCoding:
    """A node's mask-coded sections: payloads and what they cost, for the pack decision."""

    gaps_payload: bytes
    codes_payload: bytes | None
    model: int


def kept_positions(node: NodeStreams) -> np.ndarray | None:
    """The node's mask as sorted flat positions, or None where it would not reproduce its streams."""
    found = _mask_of(node)
    return None if found is None else found[0]


def _mask_of(node: NodeStreams) -> tuple[np.ndarray, np.ndarray] | None:
    """(kept positions, which entries are kept) or None where they would not reproduce the streams."""
    full = (1 << node.width) - 1
    if node.codes is not None:
        real = node.codes != 0
    else:
        real = node.gaps != full
        real[-1:] = True
    # encode_positions(kept) gives back these gaps exactly when every other entry is a filler of
    # gap 2**b - 1 and the last entry is kept: fillers then sit where it puts them, and a kept
    # entry's gap is its zero run modulo 2**b.
    if not node.shape or node.gaps.size == 0 or not real[-1] or (node.gaps[~real] != full).any():
        return None
    pos = decode_positions(node.gaps)
    numel = int(np.prod(node.shape, dtype=np.int64))
    if pos[-1] >= numel or numel > max_positions(node.gaps.size):
        return None
    return pos[real], real


def code_node(node: NodeStreams, today_bytes: int) -> MaskCoding | None:
    """Mask-code a node when that is smaller than ``today_bytes`` (its order-0 sections), else None."""
    found = _mask_of(node)
    if found is None:
        return None
    kept, real = found
    grid = maskcode.grid(kept, node.shape)
    costs = {m: maskcode.model_cost(grid, m) for m in maskcode.models_for(grid)}
    model = min(costs, key=lambda m: (costs[m], m))
    codes_payload = None if node.codes is None else encode_real_codes(node.codes[real], node.code_bits)
    options = []
    if node.width < 16:
        tagged = np.where(real, node.gaps, 1 << node.width).astype(np.uint16)  # a filler's symbol is 2**b
        options.append((ORDER0, _MODEL.pack(ORDER0) + _best_order0(tagged)))
    margin = GRID_MARGIN if grid.rows * grid.cols > GRID_MARGIN_POSITIONS else 0.0
    if costs[model] < (1 - margin) * min((len(o[1]) for o in options), default=today_bytes):
        options.append((model, maskcode.encode_mask(grid, model)))
    model, gaps_payload = min(options, key=lambda o: (len(o[1]), o[0]))
    if len(gaps_payload) + len(codes_payload or b"") >= today_bytes:
        return None
    return MaskCoding(gaps_payload, codes_payload, model)


def _best_order0(symbols: np.ndarray) -> bytes:
    options = [(codec, _CODERS[codec].encode(symbols)) for codec in _coders_for(symbols.size)]
    codec, body = min(options, key=lambda o: (len(o[1]), o[0]))
    return _INNER.pack(codec) + body


def _coders_for(count: int) -> tuple[int, ...]:
    return (RANGE,) if count > RANGE_ONLY_SYMBOLS else (HUFFMAN, RANGE)


def encode_real_codes(codes: np.ndarray, width: int) -> bytes:
    """The real entries' codes: a codec byte and the smallest of stored, Huffman and range."""
    options = [(STORED, pack_bits(codes, width).tobytes())]
    options += [(codec, _CODERS[codec].encode(codes)) for codec in _coders_for(codes.size)]
    codec, body = min(options, key=lambda o: (len(o[1]), o[0]))
    return _INNER.pack(codec) + body


# ============================================================================ decoding
@dataclass(frozen=True)
class DecodedMask:
    """A mask section decoded: the gaps stream symbols and which entries are kept weights."""

    gaps: np.ndarray
    real: np.ndarray
    kept: int
    model: int
    grid: maskcode.Grid | None = None  # None for model 0


def decode_mask_section(payload: memoryview, count: int, width: int) -> DecodedMask:
    """Gaps (``count`` symbols of ``width`` bits) and real-entry flags from a MASK section payload."""
    if maskcode.read_model(payload) == ORDER0:
        return _decode_order0(payload[_MODEL.size :], count, width)
    grid, model = maskcode.decode_mask(payload, max_positions(count), count)
    entries = encode_positions(grid.kept, width)
    if entries.gaps.size != count:
        raise FormatError(f"mask gives {entries.gaps.size} entries, the section declares {count}")
    return DecodedMask(entries.gaps, entries.real, int(grid.kept.size), model, grid)


def _decode_order0(body: memoryview, count: int, width: int) -> DecodedMask:
    if width >= 16 or len(body) < _INNER.size:
        raise FormatError(f"order-0 mask of {width}-bit gaps is malformed")
    (codec,) = _INNER.unpack_from(body)
    if codec not in _CODERS:
        raise FormatError(f"order-0 mask uses unknown codec {codec}")
    tagged = _CODERS[codec].decode(body[_INNER.size :], count, width + 1)
    filler = 1 << width
    if tagged.size and int(tagged.max()) > filler:
        raise FormatError(f"order-0 mask symbol above {filler}")
    real = tagged != filler
    if count and not real[-1]:
        raise FormatError("order-0 mask ends with a filler")
    gaps = np.where(real, tagged, filler - 1).astype(np.uint16)
    return DecodedMask(gaps, real, int(real.sum()), ORDER0)


def decode_real_codes(payload: memoryview, real: np.ndarray, width: int) -> np.ndarray:
    """The codes stream's symbols: decoded real codes at the real entries, 0 at the fillers."""
    if len(payload) < _INNER.size:
        raise FormatError("real-codes payload is empty")
    (codec,) = _INNER.unpack_from(payload)
    body = payload[_INNER.size :]
    kept = int(real.sum())
    if codec == STORED:
        if len(body) != packed_size(kept, width):
            raise FormatError(f"stored real codes hold {len(body)} bytes, expected {packed_size(kept, width)}")
        values = unpack_bits(np.frombuffer(body, dtype=np.uint8), width, kept)
    elif codec in _CODERS:
        values = _CODERS[codec].decode(body, kept, width)
    else:
        raise FormatError(f"real codes use unknown codec {codec}")
    if kept and not values.all():
        raise FormatError("a real entry decodes to code 0, which marks a filler")
    codes = np.zeros(real.size, dtype=np.uint16)
    codes[real] = values
    return codes


# ============================================================================ report
def mask_row(decoded: DecodedMask) -> dict:
    """Report fields of a mask-coded gaps section (see onnx_dc.formats.dcz.stream_report)."""
    if decoded.grid is None:
        tagged = np.where(decoded.real, decoded.gaps, decoded.gaps.astype(np.int64) + 1)
        return {"positions_model": "order-0 gaps, fillers tagged", "kept": decoded.kept,
                "positions_entropy_bytes": round(entropy_bits(tagged) * tagged.size / 8, 1)}
    bits = maskcode.mask_bits(decoded.grid, decoded.model)
    return {
        "positions_model": maskcode.MODEL_NAMES[decoded.model],
        "kept": decoded.kept,
        "positions_entropy_bytes": round(bits / 8, 1),
    }


def order0_row(symbols: np.ndarray, role: str) -> dict:
    """Report fields of an order-0 coded stream: its entropy under that model in bytes."""
    key = "positions_entropy_bytes" if role == "gaps" else "codes_entropy_bytes"
    return {key: round(entropy_bits(symbols) * symbols.size / 8, 1)}
