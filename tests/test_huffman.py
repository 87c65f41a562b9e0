"""Canonical length-limited Huffman coding: round trips, code-length invariants, malformed streams."""

from __future__ import annotations

import heapq
import struct

import numpy as np
import pytest
from conftest import symbol_arrays
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_dc.errors import FormatError
from onnx_dc.numerics import huffman, rangecoder
from onnx_dc.numerics.symstream import entropy_bits as _entropy


def _kraft(lengths: np.ndarray) -> float:
    used = lengths[lengths > 0].astype(np.float64)
    return float(np.sum(2.0**-used))


def _huffman_cost(counts: np.ndarray) -> int:
    """Total bits of an unrestricted Huffman code (reference, heap merge)."""
    heap = [int(c) for c in counts if c > 0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


@settings(max_examples=120, deadline=None)
@given(symbol_arrays, st.sampled_from([1, 3, 64, 1024]))
def test_round_trip(symbols: np.ndarray, interval: int) -> None:
    blob = huffman.encode(symbols, sync_interval=interval)
    out = huffman.decode(blob, symbols.size)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, symbols)


def test_empty_single_and_repeated() -> None:
    for symbols in ([], [0], [65535], [9] * 100_000):
        arr = np.array(symbols, dtype=np.uint16)
        blob = huffman.encode(arr)
        np.testing.assert_array_equal(huffman.decode(blob, arr.size), arr)
    assert len(huffman.encode(np.full(100_000, 9))) < 16  # a constant stream costs no payload


def test_full_16_bit_alphabet() -> None:
    rng = np.random.default_rng(0)
    symbols = np.concatenate([np.arange(2**16), rng.integers(0, 2**16, 50_000)]).astype(np.uint16)
    lengths = huffman.code_lengths(np.bincount(symbols))
    assert lengths.max() <= huffman.MAX_CODE_LEN and _kraft(lengths) == 1.0
    np.testing.assert_array_equal(huffman.decode(huffman.encode(symbols), symbols.size), symbols)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 10**9), min_size=2, max_size=300), st.integers(1, 16))
def test_lengths_bounded_kraft_complete(counts: list[int], max_len: int) -> None:
    counts = np.array(counts, dtype=np.int64)
    used = np.count_nonzero(counts)
    if used > 1 << max_len:
        with pytest.raises(ValueError):
            huffman.code_lengths(counts, max_len)
        return
    lengths = huffman.code_lengths(counts, max_len)
    assert lengths.max(initial=0) <= max_len
    assert np.array_equal(lengths > 0, counts > 0)
    if used >= 2:
        assert _kraft(lengths) == 1.0
        huffman.check_lengths(lengths, max_len)
        # Never better than the unrestricted optimum; equal to it when the limit does not bind.
        cost = int(np.sum(counts * lengths))
        assert cost >= _huffman_cost(counts)
        if max_len >= used - 1:
            assert cost == _huffman_cost(counts)


def test_length_limit_binds_on_fibonacci_counts() -> None:
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    lengths = huffman.code_lengths(np.array(fib), max_len=12)
    assert lengths.max() == 12 and _kraft(lengths) == 1.0
    assert huffman.code_lengths(np.array(fib), max_len=16).max() == 16


def test_canonical_codes_are_prefix_free_and_ordered() -> None:
    lengths = np.array([3, 3, 3, 3, 3, 2, 4, 4, 0])
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True) if n]
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    # DEFLATE's example (RFC 1951, 3.2.2): lengths (3,3,3,3,3,2,4,4) -> 010..110, 00, 1110, 1111
    assert words == ["010", "011", "100", "101", "110", "00", "1110", "1111"]


def test_bits_per_symbol_close_to_entropy() -> None:
    rng = np.random.default_rng(1)
    gaps = np.minimum(rng.geometric(0.12, size=200_000) - 1, 255).astype(np.uint16)
    weights = rng.normal(size=200_000)
    codes = np.digitize(weights, np.linspace(-2.5, 2.5, 31)).astype(np.uint16)
    for symbols in (gaps, codes):
        bits = 8 * len(huffman.encode(symbols)) / symbols.size
        assert _entropy(symbols) <= bits <= 1.03 * _entropy(symbols)


def test_check_lengths_rejects_non_codes() -> None:
    with pytest.raises(FormatError, match="over-full"):
        huffman.check_lengths(np.array([1, 1, 1]))
    with pytest.raises(FormatError, match="incomplete"):
        huffman.check_lengths(np.array([1, 2]))
    with pytest.raises(FormatError, match="fewer than two"):
        huffman.check_lengths(np.array([1, 0]))
    with pytest.raises(FormatError, match="exceeds"):
        huffman.check_lengths(np.array([1, 17]), 16)


def _coded_blob(
    lengths: list[int], count: int, chunk_bits: list[int], payload: bytes, interval: int = 1024
) -> bytes:
    """A hand-made coded stream (docs/FORMAT.md layout) for malformed-input tests."""
    width = max(1, max(chunk_bits).bit_length())
    return b"".join(
        (
            struct.pack("<BII", huffman.KIND_CODED, count, len(lengths)),
            struct.pack("<BIB", max(lengths), interval, width),
            huffman.pack_fields(np.array(lengths), huffman.LENGTH_FIELD_BITS),
            huffman.pack_fields(np.array(chunk_bits), width),
            payload,
        )
    )


def test_decode_of_hand_made_stream() -> None:
    # lengths (1, 2, 2): codes 0, 10, 11; symbols 0 1 2 0 -> bits 0 | 1 0 | 1 1 | 0, LSB first.
    blob = _coded_blob([1, 2, 2], 4, [6], bytes([0b011010]))
    np.testing.assert_array_equal(huffman.decode(blob, 4), [0, 1, 2, 0])


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (_coded_blob([1, 1, 1], 4, [4], b"\x00"), "over-full"),
        (_coded_blob([1, 2, 0], 4, [4], b"\x00"), "incomplete"),
        (_coded_blob([1, 2, 2], 4, [6], bytes([0b011010]) + b"\x00"), "payload holds"),
        (_coded_blob([1, 2, 2], 4, [7], bytes([0b011010])), "does not end where"),
        (_coded_blob([1, 2, 2], 4, [9], bytes([0b011010])), "impossible bit length"),
        (_coded_blob([1, 2, 2], 4, [6], bytes([0b1011010])), "padding"),
        (_coded_blob([1, 2, 2], 4, [6], bytes([0b011010]), interval=0), "sync interval"),
        (_coded_blob([1, 2, 2], 4, [6], bytes([0b011010]))[:12], "truncated"),
        (struct.pack("<BII", 7, 4, 3), "unknown Huffman stream kind"),
        (struct.pack("<BII", huffman.KIND_SINGLE, 4, 3) + struct.pack("<I", 3), "outside its alphabet"),
        (struct.pack("<BII", huffman.KIND_EMPTY, 0, 0) + b"x", "carries data"),
        (b"\x02\x04", "shorter than"),
    ],
)
def test_decode_rejects_malformed(blob: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        huffman.decode(blob, 4 if blob[:1] != b"\x00" else 0)


def test_decode_checks_count_and_width_before_allocating() -> None:
    blob = huffman.encode(np.full(10, 300))
    with pytest.raises(FormatError, match="declares 10 symbols"):
        huffman.decode(blob, 2**31)
    with pytest.raises(FormatError, match="alphabet size"):
        huffman.decode(blob, 10, bits=8)
    lying = bytearray(huffman.encode(np.arange(50) % 7))
    struct.pack_into("<I", lying, 1, 2**32 - 1)  # count far beyond what the payload can hold
    with pytest.raises(FormatError):
        huffman.decode(bytes(lying), 2**32 - 1)


@pytest.mark.parametrize("codec", [huffman, rangecoder], ids=["huffman", "range"])
def test_mutated_streams_raise_format_error_only(codec) -> None:
    rng = np.random.default_rng(2)
    symbols = np.minimum(rng.geometric(0.2, size=5000) - 1, 40).astype(np.uint16)
    blob = huffman.encode(symbols, sync_interval=256) if codec is huffman else codec.encode(symbols)
    for _ in range(400):
        bad = bytearray(blob)
        op = rng.integers(3)
        if op == 0:
            bad[rng.integers(len(bad))] ^= 1 << rng.integers(8)
        elif op == 1:
            del bad[rng.integers(len(bad)) :]
        else:
            at = rng.integers(len(bad) - 4)
            bad[at : at + 4] = struct.pack("<I", int(rng.integers(2**32)))
        try:
            out = codec.decode(bytes(bad), symbols.size)
        except FormatError:
            continue
        # Without a checksum a payload flip may decode to other symbols (the .dcz adds CRCs).
        assert out.shape == symbols.shape


def test_pieces_are_byte_aligned_for_any_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huffman, "_PIECE_SYMBOLS", 5000)
    symbols = (np.arange(30_005) % 11).astype(np.uint16)
    pieces = list(huffman.iter_decode(huffman.encode(symbols, sync_interval=1000), symbols.size))
    assert len(pieces) > 1 and all(p.size % 8 == 0 for p in pieces[:-1])
    np.testing.assert_array_equal(np.concatenate(pieces), symbols)


def test_encode_rejects_bad_symbols() -> None:
    with pytest.raises(ValueError):
        huffman.encode(np.array([-1, 2]))
    with pytest.raises(ValueError):
        huffman.encode(np.array([2**16]))
    with pytest.raises(ValueError):
        huffman.encode(np.array([0.5]))


def _reference_decode(blob: bytes) -> list[int]:
    """A bit-by-bit decoder written from docs/FORMAT.md alone (checks the spec, not speed)."""
    kind, count, n = struct.unpack_from("<BII", blob)
    assert kind == huffman.KIND_CODED
    max_len, interval, width = struct.unpack_from("<BIB", blob, 9)

    def fields(start: int, w: int, k: int) -> list[int]:
        return [
            sum(((blob[start + (i * w + b) // 8] >> ((i * w + b) % 8)) & 1) << b for b in range(w))
            for i in range(k)
        ]

    lengths = fields(15, 5, n)
    chunks = -(-count // interval)
    chunk_at = 15 + (5 * n + 7) // 8
    chunk_bits = fields(chunk_at, width, chunks)
    payload = blob[chunk_at + (chunks * width + 7) // 8 :]
    bl_count = [lengths.count(bits) if bits else 0 for bits in range(max_len + 1)]
    next_code, code = [0] * (max_len + 1), 0
    for bits in range(1, max_len + 1):
        code = (code + bl_count[bits - 1]) << 1
        next_code[bits] = code
    table = {}
    for s, bits in enumerate(lengths):
        if bits:
            table[(bits, next_code[bits])] = s
            next_code[bits] += 1
    out, pos = [], 0
    for j in range(chunks):
        assert pos == sum(chunk_bits[:j])  # every chunk starts at its sync point
        for _ in range(min(interval, count - j * interval)):
            value, bits = 0, 0
            while (bits, value) not in table:
                value = (value << 1) | ((payload[pos // 8] >> (pos % 8)) & 1)  # first code bit first
                bits, pos = bits + 1, pos + 1
            out.append(table[(bits, value)])
    assert pos == sum(chunk_bits)
    return out


def test_format_spec_reference_decoder_agrees() -> None:
    rng = np.random.default_rng(9)
    symbols = np.minimum(rng.geometric(0.15, size=3000) - 1, 60).astype(np.uint16)
    blob = huffman.encode(symbols, sync_interval=100)
    assert _reference_decode(blob) == symbols.tolist()
