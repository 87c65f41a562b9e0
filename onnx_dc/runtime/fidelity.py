"""Fidelity: how closely a compressed model reproduces the original on held-out samples.

Per output, over all held-out samples (all elements flattened):

    rel_l2 = ||y_q - y|| / ||y||,     cosine = <y_q, y> / (||y_q|| ||y||)

and, where an output holds class scores, top-1 agreement: the fraction of positions
(every index but the last axis) where ``argmax`` over the last axis is the same.

An output holds class scores when its last axis has at least 2 entries and either it is
2-D (``[batch, classes]``: logits or probabilities) or the original model's values along
the last axis are non-negative and sum to 1 (a softmax, e.g. per-anchor or per-step scores).

Fidelity is poor when some output has cosine < 0.99 or top-1 agreement < 0.99; then the
layers most responsible are found by putting each one back to its original values and
measuring how much the error falls (on a few held-out samples; in a model with many
layers, only the candidates with the largest error at their own output, from the
calibration statistics, are measured).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnx_dc.data.calib import Samples, real_tokens, token_mask
from onnx_dc.runtime.session import InferenceSession
from onnx_dc.formats.models import model_bytes

POOR_COSINE = 0.99
POOR_TOP1 = 0.99


@dataclass(frozen=True)
class OutputFidelity:
    """Fidelity of one output."""

    name: str
    rel_l2: float
    cosine: float
    top1: float | None  # None: not class scores

    def poor(self) -> bool:
        """Below the cosine or top-1 bar."""
        return self.cosine < POOR_COSINE or (self.top1 is not None and self.top1 < POOR_TOP1)


@dataclass(frozen=True)
class Fidelity:
    """Per-output fidelity, what it was measured on, and (when poor) the layers most responsible."""

    outputs: tuple[OutputFidelity, ...]
    samples: int
    source: str
    culprits: tuple[tuple[str, float], ...] = field(default=())  # (weight name, error share removed when dense)
    ranked: bool = False  # whether the layers were measured (compress with samples does it; eval does not)

    def poor(self) -> bool:
        """Any output below the bar."""
        return any(o.poor() for o in self.outputs)

    def to_dict(self) -> dict:
        """Plain values for JSON."""
        return {"samples": self.samples, "source": self.source, "poor": self.poor(),
                "outputs": [{"name": o.name, "rel_l2": o.rel_l2, "cosine": o.cosine, "top1_agreement": o.top1}
                            for o in self.outputs],
                "responsible_layers": [{"layer": n, "error_removed": g} for n, g in self.culprits]}

    def to_table(self) -> str:
        """A short table, plus a warning line when fidelity is poor."""
        lines = [f"fidelity on {self.samples} held-out sample(s) of {self.source} (compressed vs original):",
                 f"  {'output':<24} {'rel L2':>9} {'cosine':>9} {'top-1 agree':>12}"]
        for o in self.outputs:
            top1 = f"{100 * o.top1:11.2f}%" if o.top1 is not None else f"{'-':>12}"
            lines.append(f"  {o.name[:24]:<24} {o.rel_l2:9.4f} {o.cosine:9.5f} {top1}")
        if self.samples < FEW_SAMPLES:
            lines.append(f"note: {self.samples} held-out sample(s): a cosine or agreement from so few means little; "
                         "give more samples")
        if self.poor():
            worst = ", ".join(f"{n} ({100 * g:.0f}% of the error)" for n, g in self.culprits) or _unranked_text(self.ranked)
            lines.append(f"warning: fidelity is poor (cosine < {POOR_COSINE} or top-1 agreement < {POOR_TOP1:.0%}); "
                         f"layers most responsible: {worst}; compress them less (config nodes:) or give more samples")
        return "\n".join(lines)


FEW_SAMPLES = 9  # fewer held-out samples than this get a caveat


def _unranked_text(measured: bool) -> str:
    if measured:
        return "none alone (putting any one layer back to dense does not lower the error)"
    return "not measured here (compress with --calib names them)"


def is_class_scores(y: np.ndarray) -> bool:
    """The module docstring's rule, on the original model's output of one batch."""
    if y.ndim < 2 or y.shape[-1] < 2 or not np.issubdtype(y.dtype, np.floating):
        return False
    if y.ndim == 2:
        return True
    return bool(np.all(y >= 0) and np.allclose(y.sum(axis=-1), 1.0, atol=1e-3))


@dataclass
class OutputSums:
    """Running sums over (original, candidate) batches of one output; :meth:`result` is its fidelity."""

    err: float = 0.0
    ref: float = 0.0
    cand: float = 0.0
    dot: float = 0.0
    agree: int = 0
    positions: int = 0
    scores: bool | None = None

    def add(self, y: np.ndarray, yq: np.ndarray, shape_of: np.ndarray | None = None) -> None:
        """Add a batch; ``shape_of``: the output as the model gives it, when ``y`` is a selection of it
        (the real tokens), for telling class scores apart."""
        a, b = y.astype(np.float64).ravel(), yq.astype(np.float64).ravel()
        self.err += float(np.sum((a - b) ** 2))
        self.ref += float(a @ a)
        self.cand += float(b @ b)
        self.dot += float(a @ b)
        if self.scores is None:
            self.scores = is_class_scores(y if shape_of is None else shape_of)
        if self.scores:
            self.agree += int(np.sum(y.argmax(axis=-1) == yq.argmax(axis=-1)))
            self.positions += int(np.prod(y.shape[:-1]))

    def result(self, name: str) -> OutputFidelity:
        rel = float(np.sqrt(self.err / self.ref)) if self.ref > 0 else float(np.sqrt(self.err))
        denom = np.sqrt(self.ref * self.cand)
        cos = float(self.dot / denom) if denom > 0 else (1.0 if self.err == 0 else 0.0)
        top1 = self.agree / self.positions if self.scores and self.positions else None
        return OutputFidelity(name, rel, cos, top1)


def float_outputs(session) -> list[str]:
    """Names of a session's floating-point outputs."""
    return [o.name for o in session.get_outputs() if "float" in o.type or "double" in o.type]


@dataclass(frozen=True)
class RecordedOutputs:
    """A reference model's float outputs on some samples, batch by batch: several candidates
    compare against it without running the reference again."""

    names: tuple[str, ...]
    batches: tuple[dict[str, np.ndarray], ...]


def record_outputs(reference, samples: Samples, batch_size: int = 64) -> RecordedOutputs:
    """The float outputs of ``reference`` (session or model) on ``samples``, held in memory (keep ``samples`` few)."""
    ref = reference if hasattr(reference, "run") else InferenceSession(reference, spin=False)
    names = float_outputs(ref)
    return RecordedOutputs(tuple(names), tuple(dict(zip(names, ref.run(names, feed)))
                                               for feed in samples.batches(batch_size)))


def compare_outputs(reference, candidate, samples: Samples, batch_size: int = 64,
                    overrides: dict[str, np.ndarray] | None = None) -> list[OutputFidelity]:
    """Per-output fidelity of ``candidate`` against ``reference`` (sessions, models, or recorded outputs
    of the reference on the same ``samples`` and ``batch_size``) on ``samples``.

    ``overrides``: extra feeds of the candidate only (values of its overridable initializers).
    """
    recorded = reference if isinstance(reference, RecordedOutputs) else None
    ref = None if recorded else reference if hasattr(reference, "run") else InferenceSession(reference, spin=False)
    cand = candidate if hasattr(candidate, "run") else InferenceSession(candidate, spin=False)
    have = {o.name for o in cand.get_outputs()}
    names = [n for n in (recorded.names if recorded else float_outputs(ref)) if n in have]
    sums = {n: OutputSums() for n in names}
    for b, feed in enumerate(samples.batches(batch_size)):
        ys = [recorded.batches[b][n] for n in names] if recorded else ref.run(names, feed)
        mask = token_mask(feed)  # token outputs are compared at the real tokens (padding feeds nothing)
        for n, y, yq in zip(names, ys, cand.run(names, {**feed, **(overrides or {})})):
            y = np.asarray(y)
            sums[n].add(real_tokens(y, mask), real_tokens(np.asarray(yq), mask), y)
    return [sums[n].result(n) for n in names]


def measure_fidelity(reference, candidate, samples: Samples, source: str = "samples",
                     batch_size: int = 64) -> Fidelity:
    """:class:`Fidelity` of ``candidate`` (model, bytes or path) against ``reference`` on ``samples``."""
    return Fidelity(tuple(compare_outputs(model_bytes(reference), model_bytes(candidate), samples, batch_size)),
                    len(samples), source)


def mean_error(outputs: list[OutputFidelity]) -> float:
    """The mean relative L2 error over outputs (the quantity culprits are ranked by)."""
    return float(np.mean([o.rel_l2 for o in outputs])) if outputs else 0.0


def responsible_layers(reference, probe, variants, samples: Samples, total: float, top: int = 3,
                       batch_size: int = 64) -> tuple[tuple[str, float], ...]:
    """Rank layers by how much of the error ``total`` goes away when each alone is dense.

    Args:
        reference: the original model (session, model, or its :func:`record_outputs` on ``samples``).
        probe: a session of the compressed model whose candidates' weights (and biases) are
            overridable initializers: one session serves every candidate.
        variants: iterable of (layer name, feeds that put that layer back to its original values).
        samples: where to measure (a few dozen held-out samples are enough to rank).
        total: the compressed model's :func:`mean_error` on the same samples.
    """
    ref = reference if isinstance(reference, RecordedOutputs) else record_outputs(
        reference if hasattr(reference, "run") else model_bytes(reference), samples, batch_size)
    gains = []
    for name, overrides in variants:
        err = mean_error(compare_outputs(ref, probe, samples, batch_size, overrides))
        gains.append((name, (total - err) / total if total > 0 else 0.0))
    gains.sort(key=lambda t: -t[1])
    # A layer whose original values raise the error (after fine-tuning the others adapted to
    # its compressed form) is not responsible for it: only layers that remove error are named.
    return tuple((n, round(g, 4)) for n, g in gains[:top] if g > 0)
