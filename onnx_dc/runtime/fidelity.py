"""Fidelity: how closely a compressed model reproduces the original on held-out samples.

Per output, over all held-out samples (all elements flattened):

    rel_l2 = ||y_q - y|| / ||y||,     cosine = <y_q, y> / (||y_q|| ||y||)

and an agreement that fits what the output is (its kind, from the original model's values
on the first batch and the output's name):

* class scores -- top-1 agreement: the fraction of positions (every index but the last axis)
  where ``argmax`` over the last axis is the same. Scores are a distribution along the last
  axis (non-negative, summing to 1: a softmax, per anchor or per step), an output whose name
  says logits / scores / probabilities / classes, or a 2-D ``[batch, classes]`` output that is
  not an embedding (a classifier head's logits).
* embedding -- nearest-neighbour agreement within the held-out samples: the fraction of
  samples whose nearest other sample (by cosine) is the same one under both models, which is
  what a search or clustering over the embeddings sees. An embedding is a 2-D ``[batch, dim]``
  output whose rows have unit L2 norm, or whose name says embedding.
* anything else (maps, token outputs, audio) -- cosine and relative error only.

Fidelity is poor when some output has cosine < 0.99 or top-1 agreement < 0.99 (nearest-neighbour
agreement is reported, not judged: near-ties among the held-out samples flip it while the embeddings
barely move -- 5 of minilm's 97 held-out sentences at class_num 256, cosine .999); then the
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
MAX_EMBEDDING_ROWS = 4096  # rows kept for nearest-neighbour agreement (an N x N similarity per model)
SCORE_WORDS = ("logit", "score", "prob", "class")


@dataclass(frozen=True)
class OutputFidelity:
    """Fidelity of one output."""

    name: str
    rel_l2: float
    cosine: float
    top1: float | None  # None: not class scores
    neighbours: float | None = None  # nearest-neighbour agreement; None: not an embedding

    def poor(self) -> bool:
        """Below the cosine or top-1 bar."""
        return self.cosine < POOR_COSINE or (self.top1 is not None and self.top1 < POOR_TOP1)

    def agreement(self) -> str:
        """The agreement column: ``top-1 98.10%``, ``NN 96.91%`` or ``-``."""
        if self.top1 is not None:
            return f"top-1 {100 * self.top1:6.2f}%"
        if self.neighbours is not None:
            return f"NN {100 * self.neighbours:6.2f}%"
        return "-"


@dataclass(frozen=True)
class Fidelity:
    """Per-output fidelity, what it was measured on, and (when poor) the layers most responsible."""

    outputs: tuple[OutputFidelity, ...]
    samples: int
    source: str
    culprits: tuple[tuple[str, float], ...] = field(default=())  # (weight name, error share removed when dense)
    ranked: bool = False  # whether the layers were measured (compress with samples does it; eval does not)
    names: dict[str, str] = field(default_factory=dict)  # weight name -> the layer's name in messages

    def poor(self) -> bool:
        """Any output below the bar."""
        return any(o.poor() for o in self.outputs)

    def to_dict(self) -> dict:
        """Plain values for JSON."""
        return {"samples": self.samples, "source": self.source, "poor": self.poor(),
                "outputs": [{"name": o.name, "rel_l2": o.rel_l2, "cosine": o.cosine, "top1_agreement": o.top1,
                             "nn_agreement": o.neighbours} for o in self.outputs],
                "responsible_layers": [{"layer": n, "name": self.names.get(n, n), "error_removed": g}
                                       for n, g in self.culprits]}

    def to_table(self) -> str:
        """A short table, plus a warning line when fidelity is poor."""
        lines = [f"fidelity on {self.samples} held-out sample(s) of {self.source} (compressed vs original):",
                 f"  {'output':<24} {'rel L2':>9} {'cosine':>9} {'agreement':>15}"]
        for o in self.outputs:
            lines.append(f"  {o.name[:24]:<24} {o.rel_l2:9.4f} {o.cosine:9.5f} {o.agreement():>15}")
        if any(o.neighbours is not None for o in self.outputs):
            lines.append("  (NN: the held-out samples whose nearest neighbour by cosine is the same under both models)")
        if self.samples < FEW_SAMPLES:
            lines.append(f"note: {self.samples} held-out sample(s): a cosine or agreement from so few means little; "
                         "give more samples")
        if self.poor():
            # a layer whose share rounds to 0% is not responsible for anything worth naming
            worst = ", ".join(f"{self.names.get(n, n)} ({100 * g:.0f}% of the error)" for n, g in self.culprits
                              if round(100 * g) >= 1) or _unranked_text(self.ranked)
            lines.append(f"warning: fidelity is poor (cosine < {POOR_COSINE} or top-1 agreement < {POOR_TOP1:.0%}); "
                         f"layers most responsible: {worst}; compress them less (config nodes:) or give more samples")
        return "\n".join(lines)


FEW_SAMPLES = 9  # fewer held-out samples than this get a caveat


def _unranked_text(measured: bool) -> str:
    if measured:
        return "none alone (putting any one layer back to dense removes less than 1% of the error)"
    return "not measured here (compress with --calib names them)"


def is_class_scores(y: np.ndarray, name: str = "") -> bool:
    """The module docstring's rule, on the original model's output of one batch (and the output's name)."""
    if y.ndim < 2 or y.shape[-1] < 2 or not np.issubdtype(y.dtype, np.floating):
        return False
    if np.all(y >= 0) and np.allclose(y.sum(axis=-1), 1.0, atol=1e-3):
        return True
    if any(w in name.lower() for w in SCORE_WORDS):
        return True
    return y.ndim == 2 and not is_embedding(y, name)


def is_embedding(y: np.ndarray, name: str = "") -> bool:
    """A ``[batch, dim]`` output of unit-norm rows, or one whose name says embedding."""
    if y.ndim != 2 or y.shape[-1] < 2 or not np.issubdtype(y.dtype, np.floating):
        return False
    if "embed" in name.lower():
        return True
    return bool(np.allclose(np.linalg.norm(y.astype(np.float64), axis=-1), 1.0, atol=1e-3))


def neighbour_agreement(y: np.ndarray, yq: np.ndarray) -> float | None:
    """Share of rows whose nearest other row by cosine is the same in ``y`` and ``yq`` (None: fewer than 3 rows)."""
    if y.shape[0] < 3:
        return None

    def nearest(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
        sim = a @ a.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    return float(np.mean(nearest(y) == nearest(yq)))


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
    name: str = ""
    embedding: bool | None = None
    rows: list = field(default_factory=list)  # embeddings: (original, candidate) batches, MAX_EMBEDDING_ROWS at most
    kept: int = 0

    def add(self, y: np.ndarray, yq: np.ndarray, shape_of: np.ndarray | None = None) -> None:
        """Add a batch; ``shape_of``: the output as the model gives it, when ``y`` is a selection of it
        (the real tokens), for telling its kind."""
        a, b = y.astype(np.float64).ravel(), yq.astype(np.float64).ravel()
        self.err += float(np.sum((a - b) ** 2))
        self.ref += float(a @ a)
        self.cand += float(b @ b)
        self.dot += float(a @ b)
        if self.scores is None:
            whole = y if shape_of is None else shape_of
            self.embedding = is_embedding(whole, self.name)
            self.scores = not self.embedding and is_class_scores(whole, self.name)
        if self.embedding and self.kept < MAX_EMBEDDING_ROWS:
            take = min(y.shape[0], MAX_EMBEDDING_ROWS - self.kept)
            self.rows.append((y[:take].copy(), yq[:take].copy()))
            self.kept += take
        if self.scores:
            self.agree += int(np.sum(y.argmax(axis=-1) == yq.argmax(axis=-1)))
            self.positions += int(np.prod(y.shape[:-1]))

    def result(self, name: str) -> OutputFidelity:
        rel = float(np.sqrt(self.err / self.ref)) if self.ref > 0 else float(np.sqrt(self.err))
        denom = np.sqrt(self.ref * self.cand)
        cos = float(self.dot / denom) if denom > 0 else (1.0 if self.err == 0 else 0.0)
        top1 = self.agree / self.positions if self.scores and self.positions else None
        neighbours = None
        if self.embedding and self.rows:
            neighbours = neighbour_agreement(np.concatenate([a for a, _ in self.rows]),
                                             np.concatenate([b for _, b in self.rows]))
        return OutputFidelity(name, rel, cos, top1, neighbours)


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
    sums = {n: OutputSums(name=n) for n in names}
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
