"""Pure numerics: bit packing, pruning thresholds, 1-D k-means, relative indices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

from onnx_dc.numerics.bitpack import pack_bits, packed_size, unpack_bits
from onnx_dc.numerics.kmeans import _initial_centroids, assign, kmeans_1d
from onnx_dc.numerics.prune import magnitude_mask, quality_threshold, ratio_threshold
from onnx_dc.numerics.sparse import (
    best_index_bits, decode_positions, encode_positions, filler_count, kept_gaps, sparse_bytes,
)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 16), st.lists(st.integers(0, 2**16 - 1), max_size=300))
def test_bitpack_round_trip(bits, raw):
    symbols = np.array(raw, dtype=np.int64) % (1 << bits)
    packed = pack_bits(symbols, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_size(symbols.size, bits)
    np.testing.assert_array_equal(unpack_bits(packed, bits, symbols.size), symbols)


def test_bitpack_layout_is_little_endian_lsb_first():
    # 3-bit symbols 5 (101), 3 (011), 7 (111): stream bits 1,0,1, 1,1,0, 1,1,1 -> bytes 0b11011101, 0b1
    assert pack_bits(np.array([5, 3, 7]), 3).tolist() == [0b11011101, 0b00000001]


def test_bitpack_rejects_out_of_range():
    with pytest.raises(ValueError):
        pack_bits(np.array([8]), 3)
    with pytest.raises(ValueError):
        pack_bits(np.array([1]), 17)
    with pytest.raises(ValueError):
        unpack_bits(np.zeros(1, np.uint8), 5, 2)


def test_ratio_threshold_prunes_that_fraction():
    w = np.random.default_rng(0).normal(size=10_000).astype(np.float32)
    for ratio in (0.1, 0.5, 0.9, 0.99):
        mask = magnitude_mask(w, ratio_threshold(w, ratio))
        assert (~mask).sum() == int(ratio * w.size)  # no ties in continuous data
        assert np.abs(w[mask]).min() > np.abs(w[~mask]).max()
    assert ratio_threshold(w, 0.0) == -1.0 and magnitude_mask(w, -1.0).all()
    with pytest.raises(ValueError):
        ratio_threshold(w, 1.0)


def test_quality_threshold_is_quality_times_std():
    w = np.random.default_rng(1).normal(0, 2.0, size=5000)
    t = quality_threshold(w, 0.5)
    assert t == pytest.approx(0.5 * w.std())
    assert (~magnitude_mask(w, t)).mean() == pytest.approx(0.38, abs=0.03)  # P(|z| < 0.5) for a normal


@pytest.mark.parametrize("k", [4, 32, 256])
@pytest.mark.parametrize("dist", ["normal", "laplace"])
def test_kmeans_matches_sklearn_with_the_same_start(k, dist):
    x = getattr(np.random.default_rng(0), dist)(size=20_000).astype(np.float32)
    ours = kmeans_1d(x, k, "kmeans++", seed=0)
    ref = KMeans(k, n_init=1, random_state=0, tol=0).fit(x.reshape(-1, 1).astype(np.float64))
    assert ours.inertia <= ref.inertia_ * (1 + 1e-9)


@pytest.mark.parametrize("k", [4, 16, 32])
def test_kmeans_linear_init_no_worse_than_sklearn_from_it(k):
    x = np.random.default_rng(2).normal(size=20_000).astype(np.float32)
    ours = kmeans_1d(x, k, "linear")
    start = _initial_centroids(x, np.sort(x).astype(np.float64), k, "linear", 0).reshape(-1, 1)
    ref = KMeans(k, n_init=1, init=start, tol=0, max_iter=300).fit(x.reshape(-1, 1).astype(np.float64))
    assert ours.inertia <= ref.inertia_ * (1 + 1e-9)


@pytest.mark.parametrize("init", ["linear", "density", "random", "kmeans++"])
def test_kmeans_invariants(init):
    x = np.random.default_rng(3).normal(size=5000)
    res = kmeans_1d(x, 16, init, seed=1)
    assert res.centroids.size <= 16 and np.all(np.diff(res.centroids) > 0)
    assert res.labels.min() >= 0 and res.labels.max() < res.centroids.size
    np.testing.assert_array_equal(res.labels, assign(x, res.centroids))  # every point at its nearest centroid
    # Lloyd fixed point: each centroid is the mean of its points
    for j in range(res.centroids.size):
        assert res.centroids[j] == pytest.approx(x[res.labels == j].mean(), rel=1e-9, abs=1e-12)
    assert kmeans_1d(x, 16, init, seed=1).inertia == res.inertia  # deterministic


def test_kmeans_few_distinct_values_are_their_own_centroids():
    x = np.array([0.5, -1.0, 0.5, 2.0, -1.0])
    res = kmeans_1d(x, 8)
    np.testing.assert_array_equal(res.centroids, [-1.0, 0.5, 2.0])
    assert res.inertia == 0.0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=600), st.integers(1, 8))
def test_sparse_positions_round_trip_with_fillers(keep, bits):
    positions = np.flatnonzero(keep)
    entries = encode_positions(positions, bits)
    assert np.all(entries.gaps >= 0) and np.all(entries.gaps < (1 << bits))
    np.testing.assert_array_equal(decode_positions(entries.gaps), entries.positions)
    np.testing.assert_array_equal(entries.positions[entries.real], positions)
    assert entries.positions.size == positions.size + filler_count(kept_gaps(positions), bits)


def test_fillers_bridge_long_gaps_as_in_the_paper():
    # 3-bit indices: a gap of 8 zeros needs one filler (the paper's Figure 3 example)
    entries = encode_positions(np.array([1, 4, 15]), 3)
    assert entries.positions.tolist() == [1, 4, 12, 15]
    assert entries.real.tolist() == [True, True, False, True]
    assert entries.gaps.tolist() == [1, 2, 7, 2]


def test_best_index_bits_is_the_cheapest():
    rng = np.random.default_rng(4)
    positions = np.flatnonzero(rng.random(50_000) < 0.08)
    gaps = kept_gaps(positions)
    best = best_index_bits(gaps, 5)
    costs = {b: sparse_bytes(gaps, b, 5) for b in range(1, 17)}
    assert costs[best] == min(costs.values())
