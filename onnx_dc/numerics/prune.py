"""Magnitude pruning masks.

    keep = |W| > t,   t = the k-th smallest |W|, k = floor(sparse_ratio * n)   (Caffe's sparse_ratio)
    keep = |W| > t,   t = quality * std(W)                                     (Han et al. 2015)

With ties at the threshold every tied weight is pruned, so at least ``k`` weights go.
"""

from __future__ import annotations

import numpy as np


def ratio_threshold(weights: np.ndarray, sparse_ratio: float) -> float:
    """Magnitude threshold that prunes a ``sparse_ratio`` fraction of ``weights``.

    Returns -1.0 (prune nothing) when ``floor(sparse_ratio * n)`` is 0.
    """
    if not 0.0 <= sparse_ratio < 1.0:
        raise ValueError(f"sparse_ratio must be in [0, 1), got {sparse_ratio}")
    mags = np.abs(weights.ravel())
    k = int(np.floor(sparse_ratio * mags.size))
    if k == 0:
        return -1.0
    mags.partition(k - 1)  # in place: mags is a temporary, and the layer may be hundreds of MB
    return float(mags[k - 1])


def quality_threshold(weights: np.ndarray, quality: float) -> float:
    """Threshold ``quality * std(W)``."""
    if not quality > 0:
        raise ValueError(f"prune quality must be positive, got {quality}")
    return float(quality * np.std(weights, dtype=np.float64))


def magnitude_mask(weights: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of the weights to keep: ``|W| > threshold``."""
    # Two comparisons need two bool temporaries, |W| a float one four times their size.
    mask = weights > threshold
    mask |= weights < -threshold
    return mask
