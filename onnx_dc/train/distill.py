"""Label-free fine-tuning: the compressed model learns to match the original model's outputs.

The teacher is the original model, run once in onnxruntime on the calibration samples;
its outputs ``t_o`` are the targets. The student is the compression state in the masked
(after pruning) or shared (codebook) training form of :mod:`onnx_dc.train.forms`, and the
loss over the model's float outputs ``o = 1..K`` is

    L = (1 / K) * sum_o L_o

    L_o = mean((s_o - t_o)^2) / m_o,        m_o = mean of t_o^2 over all samples (MSE, normalised)
    L_o = mean_positions( sum_c p_c * (log p_c - log softmax(z)_c) )        (KL, class scores)

The normalisation by ``m_o`` makes ``L_o`` the squared relative L2 error of output ``o``,
so outputs of different scale (a probability map and box offsets, a mask and a
recurrent state) weigh alike. An output is *class scores* when a Softmax (or
LogSoftmax) produces it: the student's logits ``z`` are that node's input and ``p`` the
teacher's probabilities over the same axis.

Samples are :class:`onnx_dc.data.calib.Samples` (entry ``i`` of each array is one full
model feed). When they stack (a free batch dimension), a step concatenates its samples
into one feed; otherwise (fixed batch size) a step runs one forward/backward per sample
and averages the gradients.

A stage is kept only when it lowered the loss over all calibration samples (measured
before and after it); otherwise it is undone. Starting from a compressed result (the
data-aware passes, ``keep_better``), every eighth calibration sample is set aside for
validation instead (``compress`` sets them aside before the data-aware passes too, so the
start is not judged on samples it was fitted to): stages train on the rest and are judged
on those, and when the whole fine-tuning (retraining, sharing again, codebooks) ends with a
larger squared relative L2 error on them than it started with, the state it started from is
restored, so fine-tuning on few samples cannot overfit the result into something worse.
Where onnxruntime-training cannot build the gradient graph (an op without a gradient),
:func:`distill` reports the op in one line and leaves the state un-fine-tuned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

from onnx_dc.data.calib import Samples
from onnx_dc.errors import ConfigError, DataError, ModelError
from onnx_dc.passes.share import share
from onnx_dc.passes.state import CompressionState
from onnx_dc.train.forms import LOSS, LossBuilder, TrainForm, downstream, taken_on_path
from onnx_dc.train.loop import Trainer, run_stage
from onnx_dc.train.optim import Optimizer
from onnx_dc.train.schedule import PruneStepFn, prune_by_magnitude, prune_steps, run_stages
from onnx_dc.train.settings import StageRecord, StageSettings, TrainSettings

log = logging.getLogger(__name__)

TARGET = "onnx_dc_train/target/"
# Defaults of label-free fine-tuning, under the config's train: section and the caller's
# settings. Calibration sets are small (256 samples by default), so batches are small too.
# Measured on the CIFAR-10 ResNet-20 (0.5 / 32, 256 photo crops, 8 epochs): retraining with
# AdamW 1e-3 reached held-out cosine 0.937 where SGD 0.01 (momentum 0.9) stalled at 0.78.
# Codebook training reassigns codes (latent values at 1e-3, ten times the centroids' rate):
# DTLN model_2 data-free + fine-tuned (960 frames, 8 epochs) held-out cosine .9846 -> .9910.
DISTILL_DEFAULTS = {"batch_size": 16, "retrain": {"optimizer": "adamw", "lr": 1e-3}, "codebook": {"reassign_lr": 1e-3}}


@dataclass(frozen=True)
class OutputTarget:
    """How one model output enters the distillation loss."""

    output: str  # graph output name
    kind: str  # "mse" or "kl"
    student: str  # tensor the loss reads: the output itself, or the logits before its Softmax
    axis: int = -1  # class axis (kl)
    scale: float = 1.0  # 1 / m_o (mse)


@dataclass
class DistillResult:
    """What label-free fine-tuning did, stage by stage; ``skipped`` is the one-line reason it could not train."""

    settings: TrainSettings
    targets: list[OutputTarget]
    records: list[StageRecord] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0
    validation: tuple[float, float] | None = None  # keep_better: error on the validation samples before, after
    restored: bool = False  # keep_better: the result fine-tuning started from was restored

    @property
    def changed(self) -> bool:
        """Whether any of fine-tuning stayed in the state (a stage ran and was kept, and nothing restored it)."""
        return self.skipped is None and not self.restored and any(r.steps and r.kept for r in self.records)

    def to_dict(self) -> dict:
        """Plain values, for JSON."""
        return {"settings": self.settings.to_dict(), "skipped": self.skipped, "seconds": round(self.seconds, 3),
                "losses": {t.output: t.kind for t in self.targets}, "stages": [r.to_dict() for r in self.records],
                "validation": self.validation, "restored": self.restored}


VALIDATION_EVERY = 8  # keep_better: every eighth calibration sample validates (with at least 16 samples)


def validation_split(samples: Samples) -> tuple[Samples, Samples]:
    """(training, validation) samples: every ``VALIDATION_EVERY``-th for validation; both all when too few."""
    n = len(samples)
    if n < 2 * VALIDATION_EVERY:
        return samples, samples
    val = np.arange(0, n, VALIDATION_EVERY)
    return samples.take(np.setdiff1d(np.arange(n), val)), samples.take(val)


def output_error(model: onnx.ModelProto, samples: Samples, teacher: Mapping[str, np.ndarray], threads: int = 0) -> float:
    """Mean over ``teacher``'s outputs of the squared relative L2 error of ``model``'s outputs on ``samples``."""
    got = run_teacher(model, samples, list(teacher), threads)
    return float(np.mean([np.sum((got[o].astype(np.float64) - t) ** 2) / max(np.sum(t.astype(np.float64) ** 2), 1e-30)
                          for o, t in teacher.items()]))


def _snapshot(state: CompressionState) -> tuple[dict, dict]:
    layers = {n: layer.copy() for n, layer in state.layers.items()}
    others = {}
    for t in state.model.graph.initializer:
        if t.name not in state.layers:
            others[t.name] = onnx.TensorProto()
            others[t.name].CopyFrom(t)
    return layers, others


def _restore(state: CompressionState, snapshot: tuple[dict, dict]) -> None:
    layers, others = snapshot
    for name, saved in layers.items():
        state.layers[name].assign(saved)
    for t in state.model.graph.initializer:
        if t.name in others:
            t.CopyFrom(others[t.name])


def _float_outputs(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT]


def output_targets(model: onnx.ModelProto, teacher: Mapping[str, np.ndarray],
                   weights: Sequence[str] | None = None) -> list[OutputTarget]:
    """Loss kind of every float output (see module docstring); ``teacher`` holds its outputs on the samples.

    With ``weights``, outputs that none of them reaches are left out: training cannot move them.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    reached = None if weights is None else {o for n, _ in downstream(model.graph, set(weights)) for o in n.output}
    out = []
    for name in _float_outputs(model):
        if reached is not None and name not in reached:
            continue
        node = producer.get(name)
        if node is not None and node.op_type in ("Softmax", "LogSoftmax") and node.domain in ("", "ai.onnx"):
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            out.append(OutputTarget(name, "kl", node.input[0], axis))
        else:
            t = teacher[name].astype(np.float64)
            out.append(OutputTarget(name, "mse", name, scale=float(1.0 / max(np.mean(t * t), 1e-12))))
    return out


def teacher_targets(targets: Sequence[OutputTarget], producers: Mapping[str, str],
                    teacher: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays fed as targets: teacher outputs (mse) or teacher log-probabilities (kl)."""
    out = {}
    for t in targets:
        y = teacher[t.output]
        if t.kind == "kl" and producers[t.output] == "Softmax":
            y = np.log(np.maximum(y.astype(np.float64), 1e-30)).astype(np.float32)
        out[TARGET + t.output] = np.ascontiguousarray(y, dtype=np.float32)
    return out


def _const(name: str, value: float) -> onnx.NodeProto:
    return oh.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.float32(value)))


def distillation_loss(targets: Sequence[OutputTarget]) -> LossBuilder:
    """A loss builder (see :func:`onnx_dc.train.forms.build_training_graph`) for ``targets``."""

    def build(model: onnx.ModelProto, name: str) -> None:
        graph = model.graph
        types = {o.name: o.type for o in graph.output}
        terms: list[str] = []
        for i, t in enumerate(targets):
            p = f"onnx_dc_train/o{i}/"
            target = TARGET + t.output
            graph.input.append(onnx.ValueInfoProto(name=target, type=types[t.output]))
            if t.kind == "kl":
                nodes = [
                    oh.make_node("LogSoftmax", [t.student], [p + "ls"], name=p + "ls", axis=t.axis),
                    oh.make_node("Exp", [target], [p + "pt"], name=p + "pt"),
                    oh.make_node("Sub", [target, p + "ls"], [p + "d"], name=p + "d"),
                    oh.make_node("Mul", [p + "pt", p + "d"], [p + "e"], name=p + "e"),
                    oh.make_node("ReduceMean", [p + "e"], [p + "m"], name=p + "m", keepdims=0),
                    oh.make_node("Shape", [p + "ls"], [p + "shape"], name=p + "shape"),
                    # mean over every element times the class count = mean over positions of the per-position KL
                    oh.make_node("Gather", [p + "shape", p + "axis"], [p + "c"], name=p + "c", axis=0),
                    oh.make_node("Cast", [p + "c"], [p + "cf"], name=p + "cf", to=TensorProto.FLOAT),
                    oh.make_node("Mul", [p + "m", p + "cf"], [p + "loss"], name=p + "loss"),
                ]
                axis = oh.make_node("Constant", [], [p + "axis"], name=p + "axis",
                                    value=numpy_helper.from_array(np.int64(t.axis)))
                graph.node.extend([axis, *nodes])
            else:
                graph.node.extend([
                    oh.make_node("Sub", [t.student, target], [p + "d"], name=p + "d"),
                    oh.make_node("Mul", [p + "d", p + "d"], [p + "sq"], name=p + "sq"),
                    oh.make_node("ReduceMean", [p + "sq"], [p + "m"], name=p + "m", keepdims=0),
                    _const(p + "scale", t.scale),
                    oh.make_node("Mul", [p + "m", p + "scale"], [p + "loss"], name=p + "loss"),
                ])
            terms.append(p + "loss")
        total = terms[0]
        for i, term in enumerate(terms[1:]):  # Add, not Sum: onnxruntime-training has no gradient for Sum
            graph.node.append(oh.make_node("Add", [total, term], [f"onnx_dc_train/sum{i}"], name=f"onnx_dc_train/sum{i}"))
            total = f"onnx_dc_train/sum{i}"
        graph.node.extend([
            _const("onnx_dc_train/inv_k", 1.0 / len(terms)),
            oh.make_node("Mul", [total, "onnx_dc_train/inv_k"], [LOSS], name="onnx_dc_train/loss"),
        ])
        del graph.output[:]
        graph.output.append(oh.make_tensor_value_info(LOSS, TensorProto.FLOAT, []))

    return build


def run_teacher(model: onnx.ModelProto | bytes, samples: Samples, outputs: Sequence[str], threads: int = 0,
                chunk: int = 256) -> dict[str, np.ndarray]:
    """The model's ``outputs`` on every sample (entry ``i`` the output of sample ``i``'s feed), in onnxruntime."""
    from onnx_dc.runtime.session import InferenceSession

    session = InferenceSession(model, threads)
    parts: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
    for feed, m in zip(samples.batches(chunk), samples.batch_sizes(chunk)):
        for o, y in zip(outputs, session.run(list(outputs), feed)):
            parts[o].append(y.reshape((m, -1, *y.shape[1:])) if samples.stackable else y[None])
    return {o: np.concatenate(p) for o, p in parts.items()}


def _join(stacked: np.ndarray) -> np.ndarray:
    """Samples ``[n, b, ...]`` as one feed ``[n * b, ...]``."""
    return stacked.reshape((-1, *stacked.shape[2:]))


def _step_fn(samples: Samples) -> tuple[Callable[[Trainer, np.ndarray, Optimizer], float],
                                        Callable[[Trainer], float]]:
    """One optimizer step on a batch of sample indices (one call on the joined feed, or one call per
    sample), and the mean loss over all samples without training.

    ``samples.arrays`` holds the model inputs and the targets.
    """

    def feed(names: Sequence[str], idx) -> list[np.ndarray]:
        return [np.asarray(samples.constants[n]) if n in samples.constants else
                _join(samples.arrays[n][idx]) if samples.stackable else np.asarray(samples.arrays[n][idx])
                for n in names]

    def full_loss(trainer: Trainer, chunk: int = 256) -> float:
        names = trainer.module.input_names()
        n = len(samples)
        groups = [np.arange(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)] if samples.stackable else range(n)
        total = sum(trainer.evaluate(*feed(names, g)) * (len(g) if samples.stackable else 1) for g in groups)
        return total / n

    def step(trainer: Trainer, idx: np.ndarray, opt: Optimizer) -> float:
        names = trainer.module.input_names()
        if samples.stackable:
            loss = trainer.accumulate(*feed(names, idx))
            trainer.apply(opt)
            return loss
        total = sum(trainer.accumulate(*feed(names, i)) for i in idx)
        trainer.apply(opt, 1.0 / len(idx))
        return total / len(idx)

    return step, full_loss


def distill(
    state: CompressionState,
    samples: Samples,
    settings: TrainSettings,
    *,
    name: str = "model",
    teacher: onnx.ModelProto | None = None,
    prune_step: PruneStepFn = prune_by_magnitude,
    share_state: Callable[[CompressionState], object] = share,
    evaluate: Callable[[onnx.ModelProto], float] | None = None,
    keep_better: bool = False,
    validation: Samples | None = None,
    teacher_outputs: Mapping[str, np.ndarray] | None = None,
    validation_outputs: Mapping[str, np.ndarray] | None = None,
) -> DistillResult:
    """Prune in steps and share as :func:`onnx_dc.train.schedule.run_stages`, training against the original model.

    Where onnxruntime-training cannot train the model, one line (``result.skipped``, also
    logged as a warning) names the op, and the state is compressed without training; a state
    that was already shared (by the data-aware passes) is then kept as it is. Progress is logged
    as :func:`~onnx_dc.train.schedule.run_stages` logs it.

    Args:
        state: from :func:`onnx_dc.api.prepare`; pass it to :func:`onnx_dc.api.finish` afterwards.
        samples: calibration samples (:func:`onnx_dc.data.calib.load_calib`'s ``calib`` part).
        settings: the schedule (:func:`~onnx_dc.train.settings.resolve_train_settings`).
        name: the model's name in messages.
        teacher: the original model (default: ``state``'s model as it is on entry, before any pruning).
        prune_step: the pruning pass of one step (default: by magnitude).
        share_state: the weight-sharing pass; it runs when the layers are not shared yet or were retrained.
        evaluate: optional function of a model, recorded after every stage.
        keep_better: validate and restore the starting state when fine-tuning made it worse
            on the validation samples (for a state that is already compressed).
        validation: with ``keep_better``, the samples that validate (none of ``samples``; they
            should not have been seen by the passes that made the starting state either);
            None: every eighth of ``samples`` (:func:`validation_split`), trained on the rest.
        teacher_outputs: the teacher's outputs on ``samples``, computed beforehand (output name ->
            array, entry ``i`` on sample ``i``, as :func:`run_teacher` gives them); the teacher is then
            not run, and ``teacher`` (default: ``state``'s model) only says which outputs are class
            scores. For a part of a model whose original inputs differ from the samples
            (:mod:`onnx_dc.train.blocks`). With ``keep_better``, give ``validation`` and
            ``validation_outputs`` (the same on ``validation``) too.

    Raises:
        TrainingUnavailable: when onnxruntime-training cannot be imported.
        ConfigError: for ``train.shift``: the teacher's outputs belong to the samples as given.
    """
    from onnx_dc.train.ort_training import training_modules

    if settings.shift:
        raise ConfigError(f"{name}: train: shift moves training images, but label-free fine-tuning matches the "
                          "original model's outputs on the samples as given; set shift: 0 (it applies with --data)")
    training_modules()
    if len(samples) == 0:
        raise DataError(f"{name}: no calibration samples to fine-tune on")
    start = time.perf_counter()
    teacher_model = teacher if teacher is not None else state.dense_model()
    if teacher_outputs is not None and keep_better and (validation is None or validation_outputs is None):
        raise ValueError("distill: teacher_outputs with keep_better needs validation and validation_outputs")
    if keep_better and validation is not None:
        train_part, val_part = samples, validation
    else:
        train_part, val_part = validation_split(samples) if keep_better else (samples, samples)

    def outputs_of(part: Samples, outputs: Sequence[str], given: Mapping[str, np.ndarray] | None) -> dict:
        if given is not None:
            return {o: given[o] for o in outputs}
        return run_teacher(teacher_model, part, outputs, settings.threads)

    teacher = outputs_of(train_part, _float_outputs(teacher_model), teacher_outputs)
    targets = output_targets(teacher_model, teacher, list(state.layers))
    producers = {o: n.op_type for n in teacher_model.graph.node for o in n.output}
    step, full_loss = _step_fn(replace(train_part, arrays={**train_part.arrays,
                                                           **teacher_targets(targets, producers, teacher)}))
    snapshot = val_teacher = None
    if keep_better and targets:
        val_teacher = outputs_of(val_part, [t.output for t in targets], validation_outputs)
        _, full_loss = _step_fn(replace(val_part, arrays={**val_part.arrays,
                                                          **teacher_targets(targets, producers, val_teacher)}))
        snapshot = _snapshot(state)
        before = output_error(state.dense_model(), val_part, val_teacher, settings.threads)
    loss = distillation_loss(targets)
    n = len(train_part)
    result = DistillResult(settings, targets)
    if not targets:
        result.skipped = f"{name}: no float output depends on a compressed weight"


    def skip(exc: ModelError) -> None:
        result.skipped = str(exc)
        log.warning("label-free fine-tuning skipped: %s; keeping the result without fine-tuning", exc)

    branches: dict[str, bool] = {}
    if result.skipped is None:
        try:
            branches = taken_on_path(state, train_part.batches, sorted({1, settings.batch_size}), name, settings.threads)
        except ModelError as exc:
            skip(exc)

    def train(form: TrainForm, stage: StageSettings, seed: int, stage_name: str) -> StageRecord:
        record = StageRecord(stage_name, form.value, stage.epochs)
        if result.skipped is not None or stage.epochs == 0:
            return record
        try:
            trainer = Trainer(state, form, settings.threads, name, loss, stage.reassign_lr, branches)
        except ModelError as exc:
            skip(exc)
            return record
        return run_stage(trainer, n, step, stage, record, batch_size=settings.batch_size, seed=seed,
                         full_loss=full_loss)

    def share_if_needed(s: CompressionState) -> None:
        if any(r.steps and r.kept for r in result.records) or any(layer.codebook is None for layer in s.layers.values()):
            share_state(s)

    run_stages(state, settings, prune_steps(state, settings), train, result.records, prune_step=prune_step,
               share_state=share_if_needed, evaluate=evaluate)
    if snapshot is not None and result.skipped is None:
        after = output_error(state.dense_model(), val_part, val_teacher, settings.threads)
        result.validation = (before, after)
        if after > before:
            _restore(state, snapshot)
            result.restored = True
            log.info("label-free fine-tuning raised the error on %d validation sample(s) from %.4g to %.4g; "
                     "keeping the result it started from", len(val_part), before, after)
    result.seconds = time.perf_counter() - start
    return result


def after_data_aware(original: onnx.ModelProto, share_again: Callable[[CompressionState], object]) -> dict:
    """Keyword arguments of :func:`distill` for a state the data-aware passes already pruned and shared.

    The masks stay as the data-aware pruning chose them. When the masked stage was kept, the
    layers are shared again by ``share_again`` (the data-aware passes on the retrained weights,
    :func:`onnx_dc.calibrate.share_again`; plain weighted k-means there lost the refit and the
    bias corrections: FastestDet after 3 epochs at 1e-4, held-out cosine .908 retrained, .842
    re-shared by weighted k-means, .893 by the data-aware passes). Fine-tuning is validated
    (``keep_better``): it never leaves the data-aware result worse on the validation samples.
    """
    return {"teacher": original, "prune_step": lambda state, step: True, "share_state": share_again,
            "keep_better": True}
