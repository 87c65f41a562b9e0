"""One-dimensional k-means (Lloyd) on sorted values: the weight-sharing numerics.

For sorted ``x`` and sorted centroids ``c``, the nearest-centroid assignment is a
partition of ``x`` into contiguous runs split at the midpoints ``(c[i] + c[i+1]) / 2``.
So one Lloyd step is a ``searchsorted`` of the midpoints plus prefix sums:

    split_i = searchsorted(x, m_i),   c_i <- (S[split_{i+1}] - S[split_i]) / (split_{i+1} - split_i)

where ``S`` is the prefix sum of ``x``. That is O(n) after one O(n log n) sort, versus
O(n k) per step for a general k-means; it converges to a local optimum with the same
fixed-point conditions as scikit-learn's KMeans (the reference in tests).

With per-value weights ``h`` (data-aware sharing: ``h_i = E[x_j^2]`` of the input the weight
multiplies) the same steps minimise ``sum_i h_i (x_i - c(x_i))^2``: the prefix sums become
``S = cumsum(h x)`` and ``N = cumsum(h)``, and a centroid is its run's weighted mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INITS = ("linear", "density", "random", "kmeans++")
_KMEANS_PP_SAMPLE = 100_000


@dataclass(frozen=True)
class KMeansResult:
    """Sorted centroids, per-value labels (0-based, in the caller's order) and inertia."""

    centroids: np.ndarray  # float64 [k'] sorted ascending; k' <= k when values are few
    labels: np.ndarray  # int64 [n]
    inertia: float
    iterations: int


def kmeans_1d(
    values: np.ndarray, k: int, init: str = "linear", seed: int = 0, max_iter: int = 300, tol: float = 0.0,
    weights: np.ndarray | None = None,
) -> KMeansResult:
    """Cluster 1-D ``values`` into at most ``k`` groups.

    Args:
        values: any-shaped array; flattened.
        k: number of clusters (>= 1).
        init: one of ``INITS``.
        seed: seed of the random and k-means++ initialisations.
        max_iter: Lloyd iterations at most.
        tol: stop when no centroid moves more than ``tol`` (0: until assignments are stable).
        weights: non-negative weight per value (same size), or None for all ones. Initial
            centroids ignore the weights.

    Returns:
        A :class:`KMeansResult`. When there are at most ``k`` distinct values, each is
        its own centroid. Empty clusters are dropped.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    flat = np.asarray(values).ravel()
    if flat.size == 0:
        return KMeansResult(np.zeros(0), np.zeros(0, np.int64), 0.0, 0)
    ws = None
    if weights is None:
        xs = np.sort(flat.astype(np.float32, copy=False) if flat.dtype == np.float32 else flat).astype(np.float64)
    else:
        order = np.argsort(flat, kind="stable")
        xs = flat[order].astype(np.float64)
        ws = np.asarray(weights, dtype=np.float64).ravel()[order]
    is_new = np.empty(xs.size, bool)
    is_new[0] = True
    np.not_equal(xs[1:], xs[:-1], out=is_new[1:])
    if np.count_nonzero(is_new) <= k:  # few distinct values: each is its own centroid
        centroids, iterations = xs[is_new], 0
    else:
        centroids = _initial_centroids(flat, xs, k, init, seed)
        centroids, iterations = _lloyd_sorted(xs, centroids, max_iter, tol, ws)
    # Labels by binary search of the midpoints: cheaper than keeping an argsort of the input.
    labels = assign(flat, centroids)
    return KMeansResult(centroids, labels, _inertia(xs, centroids, _splits(xs, centroids), ws), iterations)


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centroids`` for each value (ties go to the lower one)."""
    mids = (centroids[1:] + centroids[:-1]) / 2.0
    return np.searchsorted(mids, np.asarray(values, dtype=np.float64), side="left").astype(np.int64)


def _splits(xs: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    mids = (centroids[1:] + centroids[:-1]) / 2.0
    # side="right" on xs equals side="left" of mids in assign(): x == mid goes to the lower cluster.
    inner = np.searchsorted(xs, mids, side="right")
    return np.concatenate(([0], inner, [xs.size]))


def _lloyd_sorted(xs: np.ndarray, centroids: np.ndarray, max_iter: int, tol: float,
                  ws: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    wx = xs if ws is None else ws * xs
    prefix = np.concatenate(([0.0], np.cumsum(wx)))
    prefix2 = np.concatenate(([0.0], np.cumsum(wx * xs)))
    prefix_w = None if ws is None else np.concatenate(([0.0], np.cumsum(ws)))
    splits = _splits(xs, centroids)
    for it in range(1, max_iter + 1):
        counts = np.diff(splits) if prefix_w is None else prefix_w[splits[1:]] - prefix_w[splits[:-1]]
        sums = prefix[splits[1:]] - prefix[splits[:-1]]
        new = centroids.copy()
        nonempty = counts > 0
        new[nonempty] = sums[nonempty] / counts[nonempty]
        if not nonempty.all():
            new = _reseed_empty(new, nonempty, splits, prefix, prefix2, xs, counts)
        moved = float(np.max(np.abs(new - centroids))) if new.size == centroids.size else np.inf
        new_splits = _splits(xs, new)
        centroids = new
        if np.array_equal(new_splits, splits) or moved <= tol:
            return centroids, it
        splits = new_splits
    return centroids, max_iter


def _reseed_empty(
    centroids: np.ndarray, nonempty: np.ndarray, splits: np.ndarray, prefix: np.ndarray, prefix2: np.ndarray,
    xs: np.ndarray, counts: np.ndarray,
) -> np.ndarray:
    """Move each empty cluster's centroid into the cluster with the largest squared error.

    The new centroid goes halfway between that cluster's mean and its farther end, which
    splits the worst cluster in two (scikit-learn relocates empty clusters the same way,
    to far points); clusters stay sorted and distinct.
    """
    counts = counts.astype(np.float64)
    sums = prefix[splits[1:]] - prefix[splits[:-1]]
    sse = prefix2[splits[1:]] - prefix2[splits[:-1]] - np.where(counts > 0, sums * sums / np.maximum(counts, 1), 0)
    kept = list(centroids[nonempty])
    sse = list(sse[nonempty])
    lo, hi = list(splits[:-1][nonempty]), list(splits[1:][nonempty])
    for _ in range(int((~nonempty).sum())):
        j = int(np.argmax(sse))
        if sse[j] <= 0:
            break  # nothing left to split: fewer distinct values than clusters in play
        mean, first, last = kept[j], xs[lo[j]], xs[hi[j] - 1]
        far = last if last - mean >= mean - first else first
        kept.append((mean + far) / 2.0)
        sse[j] = 0.0  # split each cluster at most once per step
        sse.append(0.0)
        lo.append(lo[j])
        hi.append(hi[j])
    return np.unique(np.asarray(kept, dtype=np.float64))


def _inertia(xs: np.ndarray, centroids: np.ndarray, splits: np.ndarray, ws: np.ndarray | None = None) -> float:
    total = 0.0
    for i in range(centroids.size):
        seg = xs[splits[i] : splits[i + 1]]
        if seg.size:
            d = seg - centroids[i]
            total += float(d @ d) if ws is None else float((ws[splits[i] : splits[i + 1]] * d) @ d)
    return total


def _initial_centroids(flat: np.ndarray, xs: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    """Starting centroids; ``xs`` is ``flat`` sorted (random draws use the caller's order)."""
    if init == "linear":
        c = np.linspace(xs[0], xs[-1], k)
    elif init == "density":
        c = np.quantile(xs, (np.arange(k) + 0.5) / k)
    elif init == "random":
        rng = np.random.default_rng(seed)
        c = np.unique(rng.choice(flat, size=k, replace=False))
    else:
        from sklearn.cluster import kmeans_plusplus

        rng = np.random.default_rng(seed)
        sample = flat if flat.size <= _KMEANS_PP_SAMPLE else rng.choice(flat, _KMEANS_PP_SAMPLE, replace=False)
        centers, _ = kmeans_plusplus(sample.reshape(-1, 1).astype(np.float64), k, random_state=seed)
        c = np.unique(centers.ravel())
    return np.unique(c.astype(np.float64))
