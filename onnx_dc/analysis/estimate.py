"""Sensitivity points estimated from each layer's own output error, the model measured at a few anchors.

A full sweep runs the whole model once per (layer, setting): on ResNet-20 87% of a point's time, on
FastestDet 95%, on MiniLM 77% is that inference, and the layer's compression the rest. The compression
alone also gives the layer's own output error on the calibration samples, left after bias correction
(:func:`onnx_dc.passes.bias_correct.residual_error`):

    e(l, s) = sum_i d_i^T (E[x x^T] - E[x] E[x]^T) d_i,      d_i = w_i - wq_i (row i of the layer)

To second order the model's output error E (the metric's summed squared relative error) grows with
the layer's own error by a factor of the layer's place in the network, so per layer the model is run at
a few anchor settings only and the rest follow a power law through them:

    log E(l, s) = log E(l, a) + p_l (log e(l, s) - log e(l, a))      (a: the anchor nearest in e)

with p_l the slope between the layer's two anchors (1 with one anchor, kept within [P_MIN, P_MAX]).
The anchors are the settings at the QUANTILES of the layer's own errors, smallest to largest, so they
bracket the settings a size target picks from; with finer codebooks in the grid (``channel``, ``group:G``)
they are taken among the one-codebook-a-layer settings only, so adding those options to a sweep leaves
the other points' estimates as they were (the new points follow the same power law). A point's drop (the score lost) is its anchor's drop
scaled by E / E(a), 0 where the anchor lost nothing; where every anchor left the outputs exactly as
they were (E = 0), so are the other settings estimated. Settings whose own error is not known (a layer
without statistics) are all measured. Estimated points say so (``Point.estimated``); the size target
measures every round it chooses on the whole model, so what it reports is measured, not estimated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

QUANTILES = (0.2, 0.6)
P_MIN, P_MAX = 0.5, 2.0


def anchor_indices(own: Sequence[float | None], quantiles: Sequence[float] = QUANTILES,
                   among: Sequence[int] | None = None) -> list[int]:
    """Which settings of one layer to measure: every one when some own error is unknown, else those at the
    ``quantiles`` of the own errors (positive ones; the smallest with none positive), in setting order.
    ``among``: the settings anchors may be chosen from (None or empty: all)."""
    if any(e is None for e in own):
        return list(range(len(own)))
    eligible = set(among or range(len(own)))
    ranked = sorted((i for i, e in enumerate(own) if e > 0 and i in eligible), key=lambda i: (own[i], i))
    if not ranked:
        return [min(eligible)] if own else []
    picks = {ranked[round(q * (len(ranked) - 1))] for q in quantiles}
    return sorted(picks)


def estimate(own: Sequence[float | None], measured: dict[int, tuple[float, float | None]],
             baseline: float) -> list[tuple[float, float | None, bool]]:
    """(score, error, estimated) per setting of one layer: the ``measured`` ones (index -> (score, error))
    as they are, the others by the power law of the module docstring through the anchors."""
    anchors = [(own[i], score, error) for i, (score, error) in measured.items()
               if own[i] is not None and own[i] > 0 and error is not None and error > 0]
    anchors.sort()
    slope = 1.0
    if len(anchors) >= 2 and anchors[-1][0] > anchors[0][0]:
        (e1, _, m1), (e2, _, m2) = anchors[0], anchors[-1]
        slope = min(P_MAX, max(P_MIN, math.log(m2 / m1) / math.log(e2 / e1)))
    out = []
    for i, e in enumerate(own):
        if i in measured:
            out.append((*measured[i], False))
        elif e is None:
            raise ValueError(f"setting {i} has neither a measurement nor an own error to estimate it from")
        elif e <= 0 or not anchors:  # nothing changed, or the anchors left the outputs exactly as they were
            out.append((baseline, 0.0, True))
        else:
            a_own, a_score, a_error = min(anchors, key=lambda a: abs(math.log(e / a[0])))
            error = a_error * (e / a_own) ** slope
            out.append((baseline - (baseline - a_score) * error / a_error, error, True))
    return out
