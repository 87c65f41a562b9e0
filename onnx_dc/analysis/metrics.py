"""Evaluation functions of sweeps: a model -> a score in percent (accuracy on labels, or agreement with
the original model on held-out samples). Picklable, so that worker processes and Ray can run them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx

from onnx_dc.data.datasets import Preprocess


Metric = Callable[[onnx.ModelProto], float]


def score_and_error(metric: Metric, model: onnx.ModelProto) -> tuple[float, float | None]:
    """The metric's score and, when it measures one (``metric.score_and_error``), its smooth output error;
    else None."""
    both = getattr(metric, "score_and_error", None)
    return both(model) if both is not None else (metric(model), None)


@dataclass(frozen=True)
class Accuracy:
    """Evaluation function: top-1 accuracy in percent on a labeled dataset (``runtime.evaluate``).

    One onnxruntime thread, so that every worker computes the same numbers.
    """

    data: str
    preprocess: Preprocess | None = None
    split: str = "test"
    limit: int | None = None
    name: str = "top-1 accuracy"
    unit: str = "%"

    def __call__(self, model: onnx.ModelProto) -> float:
        from onnx_dc.runtime.evaluate import evaluate

        return 100.0 * evaluate(model, self.data, self.preprocess, self.split, self.limit, threads=1).accuracy

    def describe(self) -> str:
        """What is measured, on what."""
        part = f"first {self.limit} of " if self.limit else ""
        return f"{self.name} ({self.unit}) on {part}{self.data} {self.split}"


@dataclass(frozen=True)
class Agreement:
    """Evaluation function without labels: agreement with the original model on held-out samples.

    score = 100 x mean over the original's float outputs of the top-1 agreement (outputs that
    hold class scores) or the cosine similarity (others), from ``runtime.fidelity``; the
    original model scores 100. One onnxruntime thread, as :class:`Accuracy`.

    error = sum over the outputs of ||y_q - y||^2 / ||y||^2 on the same samples: 0 for the original,
    smooth where top-1 agreement on a few dozen samples moves in steps of a sample (and mostly
    does not move when one layer alone is compressed), and roughly additive over layers whose
    errors are independent. ``--target-ratio``'s knapsack minimises it (:func:`score_and_error`).
    """

    calib: Any  # a CalibSpec or spec text (images:DIR, npz:FILE, mnist:DIR, ...)
    reference: bytes  # the original model, serialized
    name: str = "fidelity (top-1 agreement, else cosine)"
    unit: str = "%"

    def __call__(self, model: onnx.ModelProto) -> float:
        return self.score_and_error(model)[0]

    def score_and_error(self, model: onnx.ModelProto) -> tuple[float, float]:
        """(score, error) of the class docstring, from one run of each model."""
        from onnx_dc.runtime.fidelity import compare_outputs
        from onnx_dc.runtime.session import InferenceSession

        samples, recorded = self._heldout()
        outputs = compare_outputs(recorded, InferenceSession(model, 1), samples)
        score = 100.0 * sum(o.top1 if o.top1 is not None else o.cosine for o in outputs) / max(len(outputs), 1)
        return score, float(sum(o.rel_l2 ** 2 for o in outputs))

    def _heldout(self):
        """The held-out samples and the original's outputs on them: read and run once per process, not once
        per evaluation."""
        key = (str(self.calib), hash(self.reference))
        if key not in _HELDOUT:
            from onnx_dc.data.calib import load_calib
            from onnx_dc.runtime.fidelity import record_outputs
            from onnx_dc.runtime.session import InferenceSession

            data = load_calib(self.calib, onnx.load_model_from_string(self.reference))
            samples = data.heldout if len(data.heldout) else data.calib
            _HELDOUT[key] = samples, record_outputs(InferenceSession(self.reference, 1), samples)
        return _HELDOUT[key]

    def describe(self) -> str:
        """What is measured, on what."""
        return f"{self.name} ({self.unit}) on held-out samples of {self.calib}"


_HELDOUT: dict = {}
