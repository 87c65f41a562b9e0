"""Range coding with a stored categorical model: round trips, model exactness, malformed streams."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import symbol_arrays
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_dc.errors import FormatError
from onnx_dc.numerics import rangecoder
from onnx_dc.numerics.symstream import entropy_bits as _entropy


@settings(max_examples=120, deadline=None)
@given(symbol_arrays)
def test_round_trip(symbols: np.ndarray) -> None:
    blob = rangecoder.encode(symbols)
    out = rangecoder.decode(blob, symbols.size)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, symbols)


def test_empty_single_repeated_and_full_alphabet() -> None:
    rng = np.random.default_rng(0)
    full = np.concatenate([np.arange(2**16), rng.integers(0, 2**16, 20_000)]).astype(np.uint16)
    for arr in (np.array([], np.uint16), np.array([7], np.uint16), np.full(100_000, 4, np.uint16), full):
        np.testing.assert_array_equal(rangecoder.decode(rangecoder.encode(arr), arr.size), arr)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 // 70000), min_size=2, max_size=70000).filter(lambda c: sum(c) > 0))
def test_quantized_model_sums_to_precision(counts: list[int]) -> None:
    f = rangecoder.quantize_counts(np.array(counts))
    assert f.min() >= 0 and int(f.sum()) == 2**rangecoder.PRECISION - len(counts)


def test_coded_size_matches_the_documented_model() -> None:
    """The payload costs -sum(log2(w_s / 2**24)) with w = f + 1, as docs/FORMAT.md states."""
    rng = np.random.default_rng(3)
    symbols = np.minimum(rng.geometric(0.3, size=300_000) - 1, 40).astype(np.uint16)
    blob = rangecoder.encode(symbols)
    weights = rangecoder.quantize_counts(np.bincount(symbols)) + 1
    ideal_bits = -np.log2(weights[symbols] / 2**24).sum()
    width = blob[9]
    payload_bits = 8 * (len(blob) - 10 - (weights.size * width + 7) // 8)
    assert ideal_bits <= payload_bits <= ideal_bits + 96


@pytest.mark.parametrize("p_zero", [0.5, 0.9, 0.99])
def test_bits_per_symbol_close_to_entropy(p_zero: float) -> None:
    rng = np.random.default_rng(4)
    n = 400_000
    symbols = np.where(rng.random(n) < p_zero, 0, rng.integers(1, 32, n)).astype(np.uint16)
    bits = 8 * len(rangecoder.encode(symbols)) / n
    assert _entropy(symbols) <= bits <= 1.01 * _entropy(symbols) + 0.001


def test_deterministic() -> None:
    symbols = np.random.default_rng(5).integers(0, 300, 50_000)
    assert rangecoder.encode(symbols) == rangecoder.encode(symbols.copy())


def _with_model(f: list[int], width: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack("<BII", rangecoder.KIND_CODED, 4, len(f))
        + struct.pack("<B", width)
        + rangecoder.pack_fields(np.array(f), width)
        + payload
    )


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (_with_model([5, 7], 24), "sum to"),
        (_with_model([2**24 - 2, 0], 0), "field width"),
        (_with_model([2**24 - 2, 0], 24, b"\x00\x00\x00"), "whole number"),
        (_with_model([2**24 - 2, 0], 24)[:12], "truncated"),
        (struct.pack("<BII", 9, 4, 2), "unknown range stream kind"),
        (struct.pack("<BII", rangecoder.KIND_CODED, 4, 1), "alphabet size"),
        (struct.pack("<BII", rangecoder.KIND_SINGLE, 4, 2) + struct.pack("<I", 2), "outside its alphabet"),
        (b"\x01", "shorter than"),
    ],
)
def test_decode_rejects_malformed(blob: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        rangecoder.decode(blob, 4)


def test_decode_checks_count_and_width() -> None:
    blob = rangecoder.encode(np.arange(20) % 300 + 280)
    with pytest.raises(FormatError, match="declares 20 symbols"):
        rangecoder.decode(blob, 2**40)
    with pytest.raises(FormatError, match="alphabet size"):
        rangecoder.decode(blob, 20, bits=8)


def test_encode_rejects_bad_symbols() -> None:
    with pytest.raises(ValueError):
        rangecoder.encode(np.array([-3]))
    with pytest.raises(ValueError):
        rangecoder.encode(np.array([1.5]))


def _reference_decode(blob: bytes) -> list[int]:
    """The range decoder of docs/FORMAT.md in plain Python (checks the spec, not speed)."""
    kind, count, n = struct.unpack_from("<BII", blob)
    assert kind == rangecoder.KIND_CODED
    width = blob[9]
    f = [
        sum(((blob[10 + (i * width + b) // 8] >> ((i * width + b) % 8)) & 1) << b for b in range(width))
        for i in range(n)
    ]
    weights = [x + 1 for x in f]
    cumulative = [sum(weights[:s]) for s in range(n)]
    start = 10 + (n * width + 7) // 8
    words = list(struct.unpack_from(f"<{(len(blob) - start) // 4}I", blob, start))

    def word(i: int) -> int:
        return words[i] if i < len(words) else 0

    mask = 2**64 - 1
    lower, rng, point, nxt = 0, mask, (word(0) << 32) | word(1), 2
    out = []
    for _ in range(count):
        scale = rng >> 24
        q = ((point - lower) & mask) // scale
        assert q < 2**24
        s = max(t for t in range(n) if cumulative[t] <= q)
        lower = (lower + scale * cumulative[s]) & mask
        rng = scale * weights[s]
        if rng < 2**32:
            lower, rng = (lower << 32) & mask, rng << 32
            point = ((point << 32) & mask) | word(nxt)
            nxt += 1
        out.append(s)
    assert (point - lower) & mask < 2**33 - 1
    return out


def test_format_spec_reference_decoder_agrees() -> None:
    rng = np.random.default_rng(10)
    symbols = np.minimum(rng.geometric(0.2, size=2000) - 1, 30).astype(np.uint16)
    assert _reference_decode(rangecoder.encode(symbols)) == symbols.tolist()
