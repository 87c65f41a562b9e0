"""Range coding of small unsigned integers with a static categorical model (``constriction``).

Math: with symbol counts ``c_s`` over the alphabet ``0..n-1`` (``N = sum c_s``) the model is
the integer weights

    w_s = f_s + 1,   f_s = floor(c_s * T / N) + [s among the T - sum floor(...) symbols with the
                     largest fractional parts, ties to the lower symbol],   T = 2**24 - n

so that ``sum w_s = 2**24`` and every symbol of the alphabet stays encodable. A symbol costs
``-log2(w_s / 2**24)`` bits, within a few parts per million of the empirical entropy for
streams of thousands of symbols or more. The stream stores ``f`` so that the decoder
rebuilds exactly the same model.

``constriction``'s fast quantizer turns a float probability vector ``p`` into cumulative
weights ``floor(P_s * (2**24 - n) / sum p) + s`` (``P_s`` the prefix sum). Passing ``p = f``
(integers summing to ``2**24 - n``, exact in float64) makes the scale exactly 1 and yields
``w = f + 1``; the tests check that the coded size matches this model.

The coder is ``constriction.stream.queue.RangeEncoder`` / ``RangeDecoder`` (range coding,
32-bit words, 64-bit state, 24-bit probabilities). The byte layout is specified in
docs/FORMAT.md ("Range stream"). Malformed input raises :class:`onnx_dc.errors.FormatError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import constriction
import numpy as np

from onnx_dc.errors import FormatError
from onnx_dc.numerics.symstream import (
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

PRECISION = 24
"""Probabilities are integers out of ``2**PRECISION``."""

_WIDTH = struct.Struct("<B")  # width of one stored f_s
_PIECE_SYMBOLS = 1 << 20  # symbols decoded per call (bounds scratch memory)


def quantize_counts(counts: np.ndarray) -> np.ndarray:
    """The stored model ``f`` for symbol counts (see the module docstring).

    Args:
        counts: 1-D non-negative integer array of length ``n`` (2..65536), not all zero.

    Returns:
        int64 array ``f`` with ``f.sum() == 2**24 - n``; the model weights are ``f + 1``.
    """
    c = np.asarray(counts, dtype=np.int64).ravel()
    budget = (1 << PRECISION) - c.size
    total = int(c.sum())
    scaled = c * budget  # < 2**63: total <= 2**32 and budget < 2**24
    f = scaled // total
    short = budget - int(f.sum())
    frac = scaled - f * total
    # Largest fractional part first; lexsort is stable, so ties go to the lower symbol.
    f[np.lexsort((np.arange(c.size), -frac))[:short]] += 1
    return f


def _model(f: np.ndarray) -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(f.astype(np.float64), perfect=False)


def encode(symbols: np.ndarray) -> bytes:
    """Range-code ``symbols`` into a self-describing stream (docs/FORMAT.md, "Range stream").

    Args:
        symbols: 1-D integer array with values in ``[0, 2**16)``, at most ``2**32 - 1`` of them.

    Returns:
        The encoded stream; the same input always gives the same bytes.

    Raises:
        ValueError: on symbols outside ``[0, 2**16)``.
    """
    sym = np.asarray(symbols).ravel()
    if sym.size and (not np.issubdtype(sym.dtype, np.integer) or sym.min() < 0 or sym.max() >= MAX_ALPHABET):
        raise ValueError(f"symbols must be integers in [0, {MAX_ALPHABET})")
    if sym.size >= 1 << 32:
        raise ValueError("at most 2**32 - 1 symbols per stream")
    if sym.size == 0:
        return empty_stream()
    alphabet = int(sym.max()) + 1
    counts = np.bincount(sym, minlength=alphabet)
    if np.count_nonzero(counts) == 1:
        return single_stream(sym.size, alphabet)
    f = quantize_counts(counts)
    width = int(f.max()).bit_length()
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(sym.astype(np.int32), _model(f))
    words = encoder.get_compressed().astype("<u4").tobytes()
    return b"".join(
        (HEAD.pack(KIND_CODED, sym.size, alphabet), _WIDTH.pack(width), pack_fields(f, width), words)
    )


def decode(data: bytes | memoryview, count: int, bits: int = 16) -> np.ndarray:
    """Decode a stream written by :func:`encode`; same contract as :func:`onnx_dc.numerics.huffman.decode`."""
    return collect(iter_decode(data, count, bits), count)


def iter_decode(data: bytes | memoryview, count: int, bits: int = 16) -> Iterator[np.ndarray]:
    """Like :func:`decode`, returning an iterator over consecutive pieces of the symbols.

    Each piece but the last holds a multiple of 8 symbols. The header and model are
    validated before this returns; the end of the payload after the last piece.
    """
    view = memoryview(data).cast("B")
    kind, alphabet = read_head(view, count, bits, "range")
    if kind == KIND_EMPTY:
        return iter(())
    if kind == KIND_SINGLE:
        return repeat_pieces(single_symbol(view, alphabet, "range"), count, _PIECE_SYMBOLS)
    f, payload = _read_model(view[HEAD.size :], alphabet)
    return _coded_pieces(f, payload, count)


def _read_model(view: memoryview, alphabet: int) -> tuple[np.ndarray, memoryview]:
    """The stored ``f`` (validated) and the payload that follows it."""
    if len(view) < _WIDTH.size:
        raise FormatError("range stream truncated before its model")
    (width,) = _WIDTH.unpack_from(view)
    if not 1 <= width <= PRECISION:
        raise FormatError(f"range model field width {width} is outside 1..{PRECISION}")
    nbytes = (alphabet * width + 7) // 8
    if len(view) - _WIDTH.size < nbytes:
        raise FormatError("range stream truncated in its model")
    f = unpack_fields(view[_WIDTH.size : _WIDTH.size + nbytes], width, alphabet).astype(np.int64)
    if int(f.sum()) != (1 << PRECISION) - alphabet:
        raise FormatError(f"range model weights sum to {int(f.sum()) + alphabet}, not 2**{PRECISION}")
    payload = view[_WIDTH.size + nbytes :]
    if len(payload) % 4:
        raise FormatError(f"range payload of {len(payload)} bytes is not a whole number of 32-bit words")
    return f, payload


def _coded_pieces(f: np.ndarray, payload: memoryview, count: int) -> Iterator[np.ndarray]:
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    try:
        model = _model(f)
        decoder = constriction.stream.queue.RangeDecoder(words)
        for start in range(0, count, _PIECE_SYMBOLS):
            piece = decoder.decode(model, min(_PIECE_SYMBOLS, count - start))
            yield piece.astype(np.uint16)
        exhausted = decoder.maybe_exhausted()
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # constriction reports bad data as assertion errors or panics
        raise FormatError(f"range stream does not decode: {err}") from None
    if not exhausted:
        raise FormatError("range stream has data left after its last symbol")
