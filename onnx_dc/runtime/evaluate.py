"""Top-1 accuracy of a model on a dataset, in onnxruntime.

Evaluation is a plain function of (model, data spec, preprocessing) so that fine-tuning,
sensitivity analysis and the CLI share it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_dc import progress
from onnx_dc.data.datasets import DataSpec, Preprocess, load_dataset, resolve_preprocess
from onnx_dc.errors import DataError
from onnx_dc.graph.io import parse_unchecked
from onnx_dc.runtime.session import InferenceSession
from onnx_dc.formats.models import model_bytes


@dataclass(frozen=True)
class EvalResult:
    """Accuracy and what it was measured on."""

    accuracy: float
    correct: int
    n: int
    data: str
    preprocess: Preprocess
    seconds: float

    def to_dict(self) -> dict:
        """Plain values for JSON."""
        return {"accuracy": self.accuracy, "correct": self.correct, "n": self.n, "data": self.data,
                "preprocess": vars(self.preprocess).copy(), "seconds": round(self.seconds, 3)}


def predict(session, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Argmax of the first output over the last axis, batched (batch 1 when the model fixes it)."""
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None
    step = fixed or batch_size
    if fixed is not None and x.shape[0] % fixed:
        raise DataError(f"the model's batch size is fixed at {fixed}; {x.shape[0]} samples do not divide into it")
    preds = []
    for i in progress.bar(range(0, x.shape[0], step), desc="eval", unit="batch"):
        out = session.run(None, {inp.name: x[i : i + step]})[0]
        preds.append(np.asarray(out).reshape(out.shape[0], -1).argmax(axis=1))
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def sample_shape(session) -> tuple[int, ...] | None:
    """Per-sample input shape of a session's first input (None if not fully static)."""
    dims = session.get_inputs()[0].shape[1:]
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None


def evaluate(
    model: onnx.ModelProto | str | os.PathLike | bytes,
    data: DataSpec | str,
    preprocess: Preprocess | None = None,
    split: str = "test",
    limit: int | None = None,
    threads: int = 0,
) -> EvalResult:
    """Top-1 accuracy of ``model`` on a dataset split.

    Args:
        model: ModelProto or a ``.onnx`` / ``.dc.onnx`` / ``.dcz`` path.
        data: a data spec (``mnist:DIR``, ``fashion-mnist:DIR``, ``npz:FILE``, ``digits``; ``mnist:``
            without a folder is fetched once into the cache).
        preprocess: input preprocessing; default: the model's metadata, else the dataset's scale.
        split: ``test`` or ``train``.
        limit: evaluate on the first ``limit`` samples only.
        threads: onnxruntime intra-op threads (0: its default; sweeps use 1, the same numbers in any worker).
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit {limit}: give a positive number of samples")
    name = str(model) if isinstance(model, (str, os.PathLike)) else "model"
    raw = model_bytes(model)
    proto = parse_unchecked(raw, name)
    dataset = load_dataset(data, split)
    prep = resolve_preprocess(proto, dataset, preprocess, str(data))
    images, labels = dataset.images, dataset.labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    session = InferenceSession(raw, threads)
    start = time.perf_counter()
    try:
        x = prep.apply(images, sample_shape(session))
    except DataError as exc:
        raise DataError(f"{name} on {data}: {exc}") from None
    preds = predict(session, x)
    correct = int((preds == labels).sum())
    return EvalResult(correct / max(len(labels), 1), correct, int(len(labels)), str(data), prep,
                      time.perf_counter() - start)
