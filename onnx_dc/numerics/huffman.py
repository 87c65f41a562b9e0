"""Canonical, length-limited Huffman coding of small unsigned integers, in NumPy.

Math:
    code lengths  l_s = optimal prefix code lengths for the symbol counts c_s under the limit
                  l_s <= max_len (package-merge), so that  sum_s 2**-l_s = 1  (Kraft, complete code)
    canonical code: symbols sorted by (l_s, s) get consecutive code values, the value
                  increasing by one per symbol and shifted left by one per extra bit of length
                  (the DEFLATE rule): code(s) = first_code[l_s] + rank of s among symbols of length l_s
    bit stream:   codeword bits are written most significant bit first into a little-endian
                  bit stream (stream bit k = bit k % 8 of byte k // 8), i.e. each codeword
                  occupies l_s bits holding reverse(code(s)) as a little-endian field

Encoding is vectorized: per-symbol (length, reversed code) come from a table lookup, bit
offsets from a cumulative sum, and the codewords are summed into 32-bit words with one
``np.bincount`` (fields never overlap, so the sum is the bitwise OR and stays exact in
float64 because a field shifted into a word spans at most 16 + 31 = 47 bits).

Decoding is vectorized across sync points: the encoder records the bit length of every
chunk of ``sync_interval`` symbols, so all chunks decode in lockstep, one symbol per chunk
per step, with a table that maps the next ``max_len`` stream bits to (symbol, length).

The byte layout of an encoded stream is specified in docs/FORMAT.md ("Huffman stream").
Malformed input raises :class:`onnx_dc.errors.FormatError`; every size is checked against
the bytes actually present before anything is allocated.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from onnx_dc.errors import FormatError
from onnx_dc.numerics.symstream import (  # noqa: F401  (pack_fields / unpack_fields re-exported)
    HEAD,
    KIND_CODED,
    KIND_EMPTY,
    KIND_SINGLE,
    MAX_ALPHABET,
    collect,
    empty_stream,
    pack_fields,
    read_head,
    repeat_pieces,
    single_stream,
    single_symbol,
    unpack_fields,
)

MAX_CODE_LEN = 16
"""Longest codeword the encoder writes and the decoder accepts (decode table: 2**16 entries)."""

SYNC_INTERVAL = 1024
"""Default number of symbols between two sync points."""

MAX_SYNC_INTERVAL = 1 << 16

LENGTH_FIELD_BITS = 5
"""Width of one stored code length (0..16)."""

_CODED = struct.Struct("<BIB")  # max_len, sync interval, chunk-length field width
_PIECE_SYMBOLS = 1 << 23  # symbols decoded per lockstep group (bounds scratch memory)
_LEN_BITS = 5  # an encoder table entry is (reversed code << 5) | length
_ENCODE_BLOCK = 1 << 16  # symbols per encoder block


# ----------------------------------------------------------------------------- code lengths
def code_lengths(counts: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Optimal length-limited prefix-code lengths (package-merge, Larmore and Hirschberg).

    Ties are broken by symbol index, so the result is deterministic.

    Args:
        counts: 1-D non-negative integer array, the number of occurrences of each symbol.
        max_len: longest allowed code length, 1..MAX_CODE_LEN.

    Returns:
        uint8 array like ``counts``: 0 for unused symbols, else 1..max_len. A single used
        symbol gets length 1. With two or more used symbols the code is complete
        (Kraft sum exactly 1).

    Raises:
        ValueError: on negative counts, a bad ``max_len`` or more than ``2**max_len`` used symbols.
    """
    counts = np.asarray(counts, dtype=np.int64).ravel()
    if not 1 <= max_len <= MAX_CODE_LEN:
        raise ValueError(f"max_len must be 1..{MAX_CODE_LEN}, got {max_len}")
    if counts.size and counts.min() < 0:
        raise ValueError("symbol counts must be non-negative")
    lengths = np.zeros(counts.size, dtype=np.uint8)
    used = np.flatnonzero(counts)
    if used.size <= 1:
        lengths[used] = 1
        return lengths
    if used.size > 1 << max_len:
        raise ValueError(f"{used.size} symbols do not fit in codes of at most {max_len} bits")
    order = used[np.argsort(counts[used], kind="stable")]
    lengths[order] = _package_merge(counts[order], max_len)
    return lengths


def _package_merge(weights: np.ndarray, max_len: int) -> np.ndarray:
    """Code lengths for ``weights`` sorted ascending (at least two), limited to ``max_len``.

    Coin-collector view: every symbol owns one coin of each denomination 2**-1 .. 2**-max_len,
    worth its weight. Starting from the smallest denomination, pairs of the cheapest items are
    packaged and merged with the next denomination's coins; the 2n - 2 cheapest items of the
    last list are bought, and a symbol's length is the number of its coins bought. Because
    leaves are sorted, the bought leaves of every list form a prefix of the sorted symbols,
    so only the number of bought leaves per list is needed.
    """
    n = weights.size
    leaf_flags = []  # per merged list: which items are leaves, in merged order
    current = weights
    for _ in range(max_len - 1):
        pairs = current.size // 2
        packages = current[0 : 2 * pairs : 2] + current[1 : 2 * pairs : 2]
        # Leaves go before packages of equal weight: a deterministic merge.
        leaf_pos = np.arange(n) + np.searchsorted(packages, weights, side="left")
        merged = np.empty(n + pairs, dtype=np.int64)
        is_leaf = np.zeros(n + pairs, dtype=bool)
        is_leaf[leaf_pos] = True
        merged[leaf_pos] = weights
        merged[~is_leaf] = packages
        leaf_flags.append(is_leaf)
        current = merged
    hits = np.zeros(n + 1, dtype=np.int64)
    take = 2 * n - 2
    for is_leaf in reversed(leaf_flags):
        leaves = int(np.count_nonzero(is_leaf[:take]))
        hits[leaves] += 1
        take = 2 * (take - leaves)
    hits[take] += 1  # the first list holds leaves only
    # length of sorted symbol i = number of lists that bought more than i leaves
    return np.cumsum(hits[::-1])[::-1][1:].astype(np.uint8)


def check_lengths(lengths: np.ndarray, max_len: int = MAX_CODE_LEN) -> None:
    """Check that ``lengths`` describe a complete prefix code of at least two symbols.

    Raises:
        FormatError: when a length exceeds ``max_len``, fewer than two symbols are used,
            or the Kraft sum differs from 1 (over-full: not a prefix code; under-full:
            bit patterns that decode to nothing).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and lengths.max() > max_len:
        raise FormatError(f"Huffman code length {int(lengths.max())} exceeds the limit {max_len}")
    used = lengths[lengths > 0]
    if used.size < 2:
        raise FormatError("Huffman code table uses fewer than two symbols")
    kraft = int(np.sum(np.left_shift(1, max_len - used)))
    if kraft != 1 << max_len:
        state = "over-full (not a prefix code)" if kraft > 1 << max_len else "incomplete"
        raise FormatError(f"Huffman code lengths are {state}: Kraft sum {kraft / (1 << max_len):.6f} != 1")


# ----------------------------------------------------------------------------- canonical codes
def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values for ``lengths`` (DEFLATE order: by length, then by symbol).

    Returns:
        uint32 array like ``lengths``; ``codes[s]`` read most significant bit first over
        ``lengths[s]`` bits is the codeword of ``s``; 0 for unused symbols.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.uint32)
    used = np.flatnonzero(lengths)
    if used.size == 0:
        return codes
    top = int(lengths.max())
    per_len = np.bincount(lengths[used], minlength=top + 1)
    first = np.zeros(top + 1, dtype=np.int64)
    for bits in range(1, top + 1):
        first[bits] = (first[bits - 1] + per_len[bits - 1]) << 1
    order = used[np.lexsort((used, lengths[used]))]
    group_start = np.concatenate(([0], np.cumsum(per_len)))[lengths[order]]
    rank = np.arange(order.size) - group_start
    codes[order] = (first[lengths[order]] + rank).astype(np.uint32)
    return codes


def _reverse_bits(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each code's low ``length`` bits in reverse order (first code bit -> bit 0)."""
    codes = codes.astype(np.uint32)
    lengths = lengths.astype(np.int64)
    out = np.zeros(codes.size, dtype=np.uint32)
    for j in range(int(lengths.max(initial=0))):
        bit = (codes >> np.uint32(j)) & np.uint32(1)
        dest = np.maximum(lengths - 1 - j, 0).astype(np.uint32)
        out |= np.where(lengths > j, bit << dest, np.uint32(0)).astype(np.uint32)
    return out


# ----------------------------------------------------------------------------- fixed-width fields
# ----------------------------------------------------------------------------- encoder
def encode(symbols: np.ndarray, *, max_len: int = MAX_CODE_LEN, sync_interval: int = SYNC_INTERVAL) -> bytes:
    """Huffman-code ``symbols`` into a self-describing stream (docs/FORMAT.md, "Huffman stream").

    Args:
        symbols: 1-D integer array with values in ``[0, 2**16)``.
        max_len: longest codeword, 1..16 (must allow every used symbol a code).
        sync_interval: symbols per chunk between sync points, 1..65536.

    Returns:
        The encoded stream: header, code-length table, chunk bit lengths, payload.

    Raises:
        ValueError: on symbols outside ``[0, 2**16)`` or bad parameters.
    """
    sym = _as_symbols(symbols)
    if not 1 <= sync_interval <= MAX_SYNC_INTERVAL:
        raise ValueError(f"sync_interval must be 1..{MAX_SYNC_INTERVAL}, got {sync_interval}")
    if sym.size == 0:
        return empty_stream()
    alphabet = int(sym.max()) + 1
    counts = np.bincount(sym, minlength=alphabet)
    if np.count_nonzero(counts) == 1:
        return single_stream(sym.size, alphabet)
    lengths = code_lengths(counts, max_len)
    payload, chunk_bits = _encode_payload(sym, lengths, sync_interval)
    chunk_width = max(1, int(chunk_bits.max()).bit_length())
    return b"".join(
        (
            HEAD.pack(KIND_CODED, sym.size, alphabet),
            _CODED.pack(int(lengths.max()), sync_interval, chunk_width),
            pack_fields(lengths, LENGTH_FIELD_BITS),
            pack_fields(chunk_bits, chunk_width),
            payload,
        )
    )


def _as_symbols(symbols: np.ndarray) -> np.ndarray:
    sym = np.asarray(symbols).ravel()
    if sym.size == 0:
        return sym.astype(np.int64)
    if not np.issubdtype(sym.dtype, np.integer):
        raise ValueError(f"symbols must be integers, got {sym.dtype}")
    if sym.min() < 0 or sym.max() >= MAX_ALPHABET:
        raise ValueError(f"symbols must lie in [0, {MAX_ALPHABET})")
    return sym.astype(np.intp, copy=False)


def _encode_payload(sym: np.ndarray, lengths: np.ndarray, sync_interval: int) -> tuple[bytes, np.ndarray]:
    """Bit stream of the codewords and the bit length of every chunk of ``sync_interval`` symbols."""
    entry = (
        _reverse_bits(canonical_codes(lengths), lengths).astype(np.uint64) << np.uint64(_LEN_BITS)
    ) | lengths
    sym_len = lengths[sym]
    total = int(np.sum(sym_len, dtype=np.int64))
    words = np.zeros((total + 31) // 32 + 2, dtype=np.uint64)
    offset = 0
    # Blocks keep the temporaries in cache; the bit offset carries over from block to block.
    for first in range(0, sym.size, _ENCODE_BLOCK):
        offset = _encode_block(entry[sym[first : first + _ENCODE_BLOCK]], offset, words)
    payload = words.astype("<u4").tobytes()[: (total + 7) // 8]
    return payload, _chunk_bits(sym_len, sync_interval)


def _encode_block(entries: np.ndarray, offset: int, words: np.ndarray) -> int:
    """OR the codewords ``entries`` (code << 5 | length) into ``words`` from bit ``offset``.

    Returns:
        The bit position after the last codeword.
    """
    lens = entries & np.uint64(31)
    ends = np.cumsum(lens, dtype=np.uint64)
    ends += np.uint64(offset)
    starts = ends - lens
    # A codeword starting at bit s of word s >> 5 spans at most 16 + 31 bits: exact in float64,
    # and codewords never overlap, so summing them per word is their bitwise OR.
    fields = (entries >> np.uint64(_LEN_BITS)) << (starts & np.uint64(31))
    first_word = offset >> 5
    acc = np.bincount(
        (starts >> np.uint64(5)).astype(np.intp) - first_word, weights=fields.astype(np.float64)
    )
    acc = acc.astype(np.uint64)
    words[first_word : first_word + acc.size] |= acc & np.uint64(0xFFFFFFFF)
    words[first_word + 1 : first_word + 1 + acc.size] |= acc >> np.uint64(32)
    return int(ends[-1])


def _chunk_bits(sym_len: np.ndarray, sync_interval: int) -> np.ndarray:
    """Bit length of each run of ``sync_interval`` symbols (the last run may be shorter)."""
    nchunks = -(-sym_len.size // sync_interval)
    padded = np.zeros(nchunks * sync_interval, dtype=np.int64)
    padded[: sym_len.size] = sym_len
    return padded.reshape(nchunks, sync_interval).sum(axis=1)


# ----------------------------------------------------------------------------- decoder
def decode(data: bytes | memoryview, count: int, bits: int = 16) -> np.ndarray:
    """Decode a stream written by :func:`encode`.

    Args:
        data: the encoded stream, exactly (no trailing bytes).
        count: the number of symbols the caller expects; the stream must declare the same.
        bits: every symbol must be below ``2**bits``; the stream's alphabet is checked
            against it before decoding.

    Returns:
        uint16 array of ``count`` symbols.

    Raises:
        FormatError: on any malformed, truncated or inconsistent stream.
    """
    return collect(iter_decode(data, count, bits), count)  # validates the stream before allocating


def iter_decode(data: bytes | memoryview, count: int, bits: int = 16) -> Iterator[np.ndarray]:
    """Like :func:`decode`, returning an iterator over consecutive pieces of the symbols.

    Each piece but the last holds a multiple of 8 symbols, so that pieces bit-pack to whole
    bytes. The stream is fully validated (header, tables, chunk lengths) before this returns.
    """
    view = memoryview(data).cast("B")
    kind, alphabet = read_head(view, count, bits, "Huffman")
    if kind == KIND_EMPTY:
        return iter(())
    if kind == KIND_SINGLE:
        return repeat_pieces(single_symbol(view, alphabet, "Huffman"), count, _PIECE_SYMBOLS)
    return _coded_pieces(_Coded(view[HEAD.size :], count, alphabet), count)


class _Coded:
    """Validated tables of a coded stream."""

    def __init__(self, view: memoryview, count: int, alphabet: int) -> None:
        if len(view) < _CODED.size:
            raise FormatError("Huffman stream truncated in its header")
        self.max_len, self.interval, chunk_width = _CODED.unpack_from(view)
        if not 1 <= self.max_len <= MAX_CODE_LEN:
            raise FormatError(f"Huffman max code length {self.max_len} is outside 1..{MAX_CODE_LEN}")
        if not 1 <= self.interval <= MAX_SYNC_INTERVAL:
            raise FormatError(f"Huffman sync interval {self.interval} is outside 1..{MAX_SYNC_INTERVAL}")
        if not 1 <= chunk_width <= 32:
            raise FormatError(f"Huffman chunk-length width {chunk_width} is outside 1..32")
        pos = _CODED.size
        self.lengths, pos = _take_fields(view, pos, LENGTH_FIELD_BITS, alphabet, "code-length table")
        if int(self.lengths.max()) != self.max_len:
            raise FormatError("Huffman max code length does not match the code-length table")
        check_lengths(self.lengths, self.max_len)
        nchunks = -(-count // self.interval)
        self.chunk_bits, pos = _take_fields(view, pos, chunk_width, nchunks, "chunk table")
        self._check_chunks(count)
        self.payload = view[pos:]
        self.total_bits = int(self.chunk_bits.sum())
        if len(self.payload) != (self.total_bits + 7) // 8:
            raise FormatError(
                f"Huffman payload holds {len(self.payload)} bytes, "
                f"its chunk table says {(self.total_bits + 7) // 8}"
            )
        if self.total_bits % 8 and self.payload[-1] >> (self.total_bits % 8):
            raise FormatError("non-zero padding bits after the Huffman payload")

    def _check_chunks(self, count: int) -> None:
        per_chunk = np.full(self.chunk_bits.size, self.interval, dtype=np.int64)
        per_chunk[-1] = count - self.interval * (self.chunk_bits.size - 1)
        used = self.lengths[self.lengths > 0]
        low = per_chunk * int(used.min())
        high = per_chunk * self.max_len
        bad = (self.chunk_bits.astype(np.int64) < low) | (self.chunk_bits.astype(np.int64) > high)
        if bad.any():
            raise FormatError(f"Huffman chunk {int(np.argmax(bad))} has an impossible bit length")


def _take_fields(view: memoryview, pos: int, width: int, count: int, what: str) -> tuple[np.ndarray, int]:
    nbytes = (count * width + 7) // 8
    if len(view) - pos < nbytes:
        raise FormatError(f"Huffman stream truncated in its {what}")
    return unpack_fields(view[pos : pos + nbytes], width, count), pos + nbytes


def _decode_tables(lengths: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Index ``v`` = the next ``max_len`` stream bits (little-endian) -> (symbol, code length)."""
    used = np.flatnonzero(lengths)
    lens = lengths[used].astype(np.int64)
    rev = _reverse_bits(canonical_codes(lengths)[used], lens).astype(np.int64)
    # A code of length l owns every index whose low l bits are its reversed codeword.
    reps = np.left_shift(1, max_len - lens)
    within = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    index = np.repeat(rev, reps) + (within << np.repeat(lens, reps))
    symbols = np.empty(1 << max_len, dtype=np.uint16)
    steps = np.empty(1 << max_len, dtype=np.uint32)
    symbols[index] = np.repeat(used, reps)
    steps[index] = np.repeat(lens, reps)
    return symbols, steps


def _coded_pieces(coded: _Coded, count: int) -> Iterator[np.ndarray]:
    tables = _decode_tables(coded.lengths, coded.max_len)
    starts = np.concatenate(([0], np.cumsum(coded.chunk_bits.astype(np.int64))))
    # Slack so that a lane may overrun its chunk by a full chunk of longest codes without
    # reading outside the buffer; such overruns are caught by the end-position check.
    slack = (coded.interval * coded.max_len) // 8 + 8
    padded = np.zeros(len(coded.payload) + slack, dtype=np.uint8)
    padded[: len(coded.payload)] = np.frombuffer(coded.payload, dtype=np.uint8)
    lanes_per_piece = 8 * max(1, _PIECE_SYMBOLS // (8 * coded.interval))
    nchunks = coded.chunk_bits.size
    for first in range(0, nchunks, lanes_per_piece):
        last = min(first + lanes_per_piece, nchunks)
        todo = min(count - first * coded.interval, (last - first) * coded.interval)
        yield _decode_group(padded, tables, starts[first : last + 1], coded, todo)


def _decode_group(
    padded: np.ndarray, tables: tuple[np.ndarray, np.ndarray], bounds: np.ndarray, coded: _Coded, todo: int
) -> np.ndarray:
    """Decode ``todo`` symbols of the chunks starting at bits ``bounds[:-1]``, one per chunk per step."""
    symbols, steps = tables
    lanes = bounds.size - 1
    base = int(bounds[0]) >> 3
    window = _windows(padded, base)
    pos = (bounds[:-1] - (base << 3)).astype(np.uint32)
    last_count = todo - (lanes - 1) * coded.interval
    rounds = coded.interval if lanes > 1 else last_count  # a lone short chunk needs no more
    out = np.empty((rounds, lanes), dtype=np.uint16)
    mask = np.uint32((1 << coded.max_len) - 1)
    last_end = 0
    for i in range(rounds):
        peek = window[pos >> 3]
        peek >>= pos & np.uint32(7)
        peek &= mask
        out[i] = symbols[peek]
        pos += steps[peek]
        if i + 1 == last_count:
            last_end = int(pos[-1])
    ends = pos.astype(np.int64) + (base << 3)
    ends[-1] = last_end + (base << 3)
    if not np.array_equal(ends, bounds[1:]):
        raise FormatError("Huffman chunk does not end where the chunk table says (corrupt payload)")
    return np.ascontiguousarray(out.T).ravel()[:todo]


def _windows(padded: np.ndarray, base: int) -> np.ndarray:
    """Zero-copy view: ``w[j]`` = the 4 bytes from ``base + j`` as a little-endian uint32."""
    usable = padded.size - base - 3
    return np.ndarray((usable,), dtype="<u4", buffer=padded.data, offset=base, strides=(1,))
