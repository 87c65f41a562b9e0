"""The compression schedule with fine-tuning, between ``prepare`` and ``finish``:

    for each pruning step s:  prune the step's layers to their step ratio;  retrain (masked form)
    share weights (k-means);  train the codebooks and biases (shared form)

Pruning steps are layer-wise (``prune_steps: [[conv1], [conv2], ...]``, as the Caffe
fork's LeNet demo: conv1 -> conv2 -> fc1 -> fc2, retraining after each) or iterative
(``prune_steps: N``: every layer at ``r * f(i / N)`` in step ``i``, with ``prune_ramp``
``linear`` (f(t) = t) or ``cubic`` (f(t) = 1 - (1 - t)^3, Zhu & Gupta 2017: big steps while
many weights are left, small ones near the end)). Layers that prune but
are named in no step are pruned in a last step of their own.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx_dc.data.datasets import DataSpec, Preprocess, load_dataset, resolve_preprocess
from onnx_dc.errors import ConfigError
from onnx_dc.passes.prune import prune_layer
from onnx_dc.passes.share import share
from onnx_dc.passes.state import CompressionState, LayerState
from onnx_dc.train.forms import TrainForm, model_input
from onnx_dc.train.loop import fit
from onnx_dc.train.settings import StageRecord, StageSettings, TrainSettings

log = logging.getLogger(__name__)

# One pruning step: weight name -> (sparse_ratio, prune_quality) to prune it to.
PruneStep = dict[str, tuple[float | None, float | None]]


@dataclass
class ScheduleResult:
    """What the schedule did, stage by stage."""

    settings: TrainSettings
    preprocess: Preprocess
    steps: list[PruneStep] = field(default_factory=list)
    records: list[StageRecord] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Plain values, for JSON."""
        return {"settings": self.settings.to_dict(), "preprocess": vars(self.preprocess).copy(),
                "prune_steps": [{w: list(v) for w, v in s.items()} for s in self.steps],
                "stages": [r.to_dict() for r in self.records], "seconds": round(self.seconds, 3)}


def _layer_matches(layer: LayerState, pattern: str) -> bool:
    names = [layer.name, *(c.node for c in layer.entry.site.consumers)]
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def prune_steps(state: CompressionState, settings: TrainSettings) -> list[PruneStep]:
    """Resolve ``settings.prune_steps`` against the state's layers.

    Raises:
        ConfigError: for patterns that match no pruning layer and layers named twice.
    """
    pruning = [layer for layer in state.layers.values() if layer.entry.settings.prunes]
    if isinstance(settings.prune_steps, int):
        n = settings.prune_steps
        out = []
        for i in range(1, n + 1):
            step: PruneStep = {}
            f = settings.prune_ramp.fraction(i, n)
            for layer in pruning:
                s = layer.entry.settings
                if s.prune_quality is not None:
                    step[layer.name] = (None, s.prune_quality * f)
                else:
                    step[layer.name] = (s.sparse_ratio * f, None)
            out.append(step)
        return out
    problems: list[str] = []
    seen: dict[str, int] = {}
    out = []
    for i, patterns in enumerate(settings.prune_steps):
        step = {}
        for pattern in patterns:
            hits = [layer for layer in pruning if _layer_matches(layer, pattern)]
            if not hits:
                known = ", ".join(sorted(c.node for layer in pruning for c in layer.entry.site.consumers)[:8])
                problems.append(f"prune_steps[{i}]: {pattern!r} matches no layer that prunes (pruning layers: {known})")
            for layer in hits:
                if layer.name in seen and seen[layer.name] != i:
                    problems.append(f"prune_steps: layer {layer.label} is named in steps {seen[layer.name]} and {i}")
                seen[layer.name] = i
                s = layer.entry.settings
                step[layer.name] = (None if s.prune_quality is not None else s.sparse_ratio, s.prune_quality)
        out.append(step)
    if problems:
        raise ConfigError("train: " + "; ".join(problems))
    rest = {layer.name: (None if layer.entry.settings.prune_quality is not None else layer.entry.settings.sparse_ratio,
                         layer.entry.settings.prune_quality)
            for layer in pruning if layer.name not in seen}
    if rest:
        out.append(rest)
    return out


def training_data(state: CompressionState, data: DataSpec | str, preprocess: Preprocess | None,
                  split: str = "train") -> tuple[np.ndarray, np.ndarray, Preprocess]:
    """Model input and labels of a dataset split, preprocessed as the model wants."""
    dataset = load_dataset(data, split)
    prep = resolve_preprocess(state.model, dataset, preprocess, str(data))
    _, sample_shape = model_input(state.model)
    return prep.apply(dataset.images, sample_shape), dataset.labels.astype(np.int64), prep


def run_schedule(
    state: CompressionState,
    data: DataSpec | str,
    settings: TrainSettings,
    preprocess: Preprocess | None = None,
    *,
    evaluate: Callable[[onnx.ModelProto], float] | None = None,
) -> ScheduleResult:
    """Prune (in steps, retraining after each), share, and train the codebooks; updates ``state``.

    Logs each step and epoch (INFO).

    Args:
        state: from :func:`onnx_dc.api.prepare`; pass it to :func:`onnx_dc.api.finish` afterwards.
        data: training data spec (its ``train`` split is used).
        settings: the schedule (:func:`~onnx_dc.train.settings.resolve_train_settings`).
        preprocess: input preprocessing (default: the model's metadata, else the dataset's scale).
        evaluate: optional accuracy function of a model, recorded after every stage.
    """
    from onnx_dc.train.ort_training import training_modules

    training_modules()  # fail early, in one line, where training is unavailable
    start = time.perf_counter()
    steps = prune_steps(state, settings)
    x, y, prep = training_data(state, data, preprocess)
    result = ScheduleResult(settings, prep, steps)

    def train(form: TrainForm, stage: StageSettings, seed: int, name: str) -> StageRecord:
        return fit(state, form, x, y, stage, batch_size=settings.batch_size, seed=seed, name=name,
                   threads=settings.threads, shift=settings.shift, channels_last=prep.layout == "nhwc")

    run_stages(state, settings, steps, train, result.records, evaluate=evaluate)
    result.seconds = time.perf_counter() - start
    return result


# Trains the state in a form for one stage: (form, stage, seed, stage name) -> its record.
StageFn = Callable[[TrainForm, StageSettings, int, str], StageRecord]
# Prunes the layers of one step; returns whether any changed.
PruneStepFn = Callable[[CompressionState, PruneStep], bool]


def prune_by_magnitude(state: CompressionState, step: PruneStep) -> bool:
    """Prune each layer of ``step`` to its step ratio (or quality) by magnitude."""
    return any([prune_layer(state.layers[w], sparse_ratio=r, prune_quality=q) for w, (r, q) in step.items()])


def prune_step_summary(state: CompressionState, step: PruneStep) -> str:
    """One short line on a pruning step: how many layers, the range of their kept shares (each layer with
    --verbose)."""
    if not step:
        return "no layer is pruned (no sparse_ratio or prune_quality set)"
    kept = [100.0 * state.layers[w].kept() / state.layers[w].weights.size for w in step]
    if len(kept) == 1:
        return f"{state.layers[next(iter(step))].label} {kept[0]:.1f}% kept"
    if max(kept) - min(kept) < 0.05:
        return f"{len(kept)} layers, {kept[0]:.1f}% kept each"
    return f"{len(kept)} layers, {min(kept):.1f}-{max(kept):.1f}% kept (mean {sum(kept) / len(kept):.1f}%)"


def run_stages(
    state: CompressionState,
    settings: TrainSettings,
    steps: list[PruneStep],
    train: StageFn,
    records: list[StageRecord],
    *,
    prune_step: PruneStepFn = prune_by_magnitude,
    share_state: Callable[[CompressionState], object] = share,
    evaluate: Callable[[onnx.ModelProto], float] | None = None,
) -> None:
    """Prune in ``steps`` (retraining after each, masked form), share, train the codebooks (shared form).

    ``train`` is what a stage trains against (labels, or the original model's outputs);
    ``prune_step`` and ``share_state`` are the pruning and weight-sharing passes. Records
    are appended to ``records``.
    """

    def record(rec: StageRecord) -> None:
        if evaluate is not None:
            rec.accuracy = evaluate(state.dense_model())
        records.append(rec)
        if rec.steps or rec.accuracy is not None:
            acc = f", accuracy {rec.accuracy:.4f}" if rec.accuracy is not None else ""
            log.info("%s: %d steps in %.1f s%s", rec.name, rec.steps, rec.seconds, acc)

    for i, step in enumerate(steps):
        changed = prune_step(state, step)
        if log.isEnabledFor(logging.INFO):
            log.info("prune step %d/%d: %s", i + 1, len(steps), prune_step_summary(state, step))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("prune step %d/%d, per layer: %s", i + 1, len(steps), ", ".join(
                    f"{state.layers[w].label} {100.0 * state.layers[w].kept() / state.layers[w].weights.size:.1f}% "
                    "kept" for w in step))
        if changed:
            record(train(TrainForm.MASKED, settings.retrain, settings.seed + i, f"retrain {i + 1}"))
    share_state(state)
    if evaluate is not None:
        record(StageRecord("share", "shared", 0))
    record(train(TrainForm.SHARED, settings.codebook, settings.seed + len(steps), "codebook"))


def finetune_codebooks(
    state: CompressionState,
    data: DataSpec | str,
    settings: TrainSettings,
    preprocess: Preprocess | None = None,
) -> ScheduleResult:
    """Train the codebooks and biases of an already-shared state (the ``codebook`` stage only)."""
    start = time.perf_counter()
    x, y, prep = training_data(state, data, preprocess)
    result = ScheduleResult(settings, prep)
    result.records.append(fit(state, TrainForm.SHARED, x, y, settings.codebook, batch_size=settings.batch_size,
                              seed=settings.seed, name="codebook", threads=settings.threads, shift=settings.shift,
                              channels_last=prep.layout == "nhwc"))
    result.seconds = time.perf_counter() - start
    return result
