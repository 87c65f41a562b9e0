"""The training loop: onnxruntime-training computes loss and gradients, NumPy steps the parameters.

A :class:`Trainer` generates the training artifacts of a :class:`TrainingGraph` into a
temporary folder, opens an ``api.Module`` on them, and for each batch

    loss, {dL/dp} = Module(x, y);   optimizer step on p (NumPy);   write p back by name.

The module accumulates gradients over calls until they are reset, so a batch may also be
several calls (micro-batches, for models whose batch size is fixed) followed by one step
on the averaged gradient.

For masked layers the gradient is multiplied by the mask before the step; for shared
layers the step is on the codebook (Eq. 3, see :mod:`onnx_dc.train.forms`) and the
written parameter is ``codebook[codes]``. With the stage's ``reassign_lr`` > 0 a shared
layer also keeps latent float values ``v`` of its kept weights, starting at
``codebook[codes]`` and stepped by the same dense gradient (the straight-through estimator:
the forward pass sees ``codebook[codes]``, the gradient goes to ``v``); after every step each
kept weight takes the code of the centroid nearest its ``v``, so a weight whose value wants
to move past the midpoint between two centroids changes cluster, which Eq. 3 alone never
lets it do (with a codebook per group of rows, ``codebook: group``, the nearest of its own group's
centroids). With channel scales (``codebook: channel``) ``W_i = s_i codebook[code_i]``: a centroid's
gradient sums ``s_i G_i``, the latent values live in the codebook's (normalised) domain and step
by ``s_i G_i`` too. When a stage ends, :meth:`Trainer.commit`
puts weights, codebooks and biases back into the :class:`CompressionState` by name.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import numpy_helper

from onnx_dc import progress
from onnx_dc.errors import ConfigError, ModelError
from onnx_dc.passes.share import set_codebook
from onnx_dc.passes.state import CompressionState
from onnx_dc.train.augment import random_shift
from onnx_dc.train.forms import (LossBuilder, TrainForm, TrainingGraph, build_training_graph, cross_entropy_loss,
                                 model_input, taken_on_path)
from onnx_dc.train.gradients import GradientBuildError, build, explain
from onnx_dc.train.optim import Optimizer
from onnx_dc.train.ort_training import training_modules
from onnx_dc.train.settings import StageRecord, StageSettings

log = logging.getLogger(__name__)


@dataclass
class _Shared:
    """NumPy side of one shared layer: its codebook and where its kept weights sit."""

    codebook: np.ndarray  # float32 [k + 1] with entry 0 == 0 when pruned, else [k]
    codes: np.ndarray  # intp codes of the kept weights (or of all weights when none is pruned)
    index: np.ndarray | None  # flat positions of the kept weights; None: every weight
    weights: np.ndarray  # float32 dense W = codebook[codes], written to onnxruntime each step
    latent: np.ndarray | None = None  # float32 latent values of the kept weights (reassign_lr > 0)
    scale: np.ndarray | None = None  # float32 channel scale of each kept weight (codebook: channel)
    group: np.ndarray | None = None  # codebook group of each kept weight (codebook: group), k values a group
    group_size: int = 0

    def values(self) -> np.ndarray:
        """The kept weights the codes stand for: ``codebook[codes]`` (times the channel scales)."""
        v = self.codebook[self.codes]
        return v if self.scale is None else v * self.scale

    def reassign(self) -> None:
        """Each kept weight takes the code of the centroid nearest its latent value (entry 0 stays reserved).

        In centroid order a weight keeps rank r while mids[r - 1] < v <= mids[r]; one step moves
        few weights past a midpoint, so only those are searched again (half the time of a full
        search on 69M weights).
        """
        first = 0 if self.index is None else 1
        if self.group is not None:
            self._reassign_groups(first)
            return
        order = np.argsort(self.codebook[first:], kind="stable")
        ordered = self.codebook[first:][order]
        mids = (ordered[1:] + ordered[:-1]) / 2
        rank_of = np.empty_like(order)
        rank_of[order] = np.arange(order.size)
        rank = rank_of[self.codes - first]
        lower = np.concatenate([[-np.inf], mids]).astype(np.float32)
        upper = np.concatenate([mids, [np.inf]]).astype(np.float32)
        moved = np.flatnonzero((self.latent > upper[rank]) | (self.latent <= lower[rank]))
        rank[moved] = np.searchsorted(mids, self.latent[moved])
        self.codes = order[rank] + first

    def _reassign_groups(self, first: int) -> None:
        """:meth:`reassign` with a codebook per group: each weight's nearest value within its own group's k."""
        k = self.group_size
        for b in np.unique(self.group):
            members = np.flatnonzero(self.group == b)
            values = self.codebook[first + b * k: first + (b + 1) * k]
            order = np.argsort(values, kind="stable")
            ordered = values[order]
            rank = np.searchsorted((ordered[1:] + ordered[:-1]) / 2, self.latent[members])
            self.codes[members] = first + b * k + order[rank]


class Trainer:
    """One training stage's onnxruntime session over a compression state."""

    def __init__(self, state: CompressionState, form: TrainForm, threads: int = 0, name: str = "model",
                 loss: LossBuilder = cross_entropy_loss, reassign_lr: float = 0.0,
                 branches: Mapping[str, bool] | None = None):
        training_modules()
        self.state = state
        self.form = form
        self.graph: TrainingGraph = build_training_graph(state, form, name, loss, branches)
        self._tmp = tempfile.TemporaryDirectory(prefix="onnx_dc_train_")
        try:
            self.checkpoint, self.module = build(self.graph.model, self.graph.requires_grad, self.graph.frozen,
                                                 Path(self._tmp.name), threads)
        except GradientBuildError as exc:
            self._tmp.cleanup()
            raise ModelError(f"{name}: {explain(exc.cause, self.graph.model, self.graph.requires_grad)}") from None
        self.module.train()
        params = self.checkpoint.parameters
        self._params = {n: params[n] for n in self.graph.requires_grad}
        # Master copies: the arrays the optimizer steps and writes back.
        self.values = {n: np.array(self._params[n].data, dtype=np.float32, copy=True) for n in self._params}
        self.masks = {b.parameter: state.layers[w].mask for w, b in self.graph.layers.items() if b.kind == "masked"}
        for param, mask in self.masks.items():
            self.values[param] *= mask  # pruned positions start (and stay) at exactly zero
        self.shared: dict[str, _Shared] = {}
        for wname, binding in self.graph.layers.items():
            if binding.kind == "shared":
                layer = state.layers[wname]
                flat = layer.codes.ravel()
                index = np.flatnonzero(flat) if layer.mask is not None else None
                codes = (flat[index] if index is not None else flat).astype(np.intp)
                scale = None
                if layer.scale is not None:
                    scale = layer.scale_at(index if index is not None else np.arange(flat.size))
                sh = _Shared(layer.codebook.astype(np.float32, copy=True), codes, index, self.values[binding.parameter],
                             scale=scale)
                if layer.group_rows:
                    sh.group = layer.group_of(index if index is not None else np.arange(flat.size))
                    sh.group_size = layer.group_size()
                if reassign_lr > 0:
                    sh.latent = sh.codebook[codes]
                self.shared[wname] = sh
        self.reassign_lr = reassign_lr

    def close(self) -> None:
        """Drop the session and its temporary files."""
        self.module = None
        self.checkpoint = None
        self._params = {}
        self._tmp.cleanup()

    def step(self, x: np.ndarray, y: np.ndarray, opt: Optimizer) -> float:
        """One forward/backward in onnxruntime and one optimizer step; returns the batch loss."""
        loss = self.accumulate(x, y)
        self.apply(opt)
        return loss

    def evaluate(self, *inputs: np.ndarray) -> float:
        """The loss on the training model's inputs with the current parameters, without gradients."""
        self.module.eval()
        try:
            return float(self.module(*inputs))
        finally:
            self.module.train()

    def accumulate(self, *inputs: np.ndarray) -> float:
        """One forward/backward on the training model's inputs, in order; gradients add up until :meth:`apply`."""
        return float(self.module(*inputs))

    def apply(self, opt: Optimizer, grad_scale: float = 1.0) -> None:
        """One optimizer step on the accumulated gradients (times ``grad_scale``), then reset them."""
        lr = opt.begin_step()
        for name, param in self._params.items():
            grad = param.grad if grad_scale == 1.0 else param.grad * np.float32(grad_scale)
            binding = self.graph.layers.get(name)
            if binding is not None and binding.kind == "shared":
                self._step_shared(name, grad, opt, lr, lr * self.reassign_lr / opt.stage.lr)
            else:
                w = self.values[name]
                mask = self.masks.get(name)
                if mask is not None:
                    grad = grad * mask  # dL/dP = dL/dW * M: zero at pruned positions
                opt.update(name, w, grad, lr, decay=binding is not None)
                param.data = w
        self.module.lazy_reset_grad()

    def _step_shared(self, name: str, grad: np.ndarray, opt: Optimizer, lr: float, latent_lr: float) -> None:
        sh = self.shared[name]
        g = grad.ravel()
        if sh.index is not None:
            g = g[sh.index]
        if sh.scale is not None:  # dL/dc sums s_i G_i: the gradient in the codebook's domain
            g = g * sh.scale
        # Eq. 3: a centroid's gradient is the sum of the gradients of the weights sharing it.
        cb_grad = np.bincount(sh.codes, weights=g, minlength=sh.codebook.size).astype(np.float32)
        if sh.index is not None:  # pruned: entry 0 is the reserved zero
            cb_grad[0] = 0.0
        opt.update(f"{name}/codebook", sh.codebook, cb_grad, lr, decay=False)
        if sh.index is not None:
            sh.codebook[0] = 0.0
        if sh.latent is not None:  # straight-through: the step the weights want goes to the latent values
            opt.update(f"{name}/latent", sh.latent, g.astype(np.float32, copy=False), latent_lr, decay=False)
            sh.reassign()
        flat = sh.weights.reshape(-1)
        if sh.scale is not None:
            flat[sh.index if sh.index is not None else slice(None)] = sh.values()
        elif sh.index is not None:
            flat[sh.index] = sh.codebook[sh.codes]
        else:
            np.take(sh.codebook, sh.codes, out=flat)
        self._params[name].data = sh.weights

    def commit(self) -> None:
        """Put the trained weights, codebooks and other parameters back into the state, by name."""
        for wname, binding in self.graph.layers.items():
            if binding.kind == "shared":
                sh, layer = self.shared[wname], self.state.layers[wname]
                if sh.latent is not None:
                    codes = layer.codes.reshape(-1).copy()
                    codes[sh.index if sh.index is not None else slice(None)] = sh.codes
                    layer.codes = codes.reshape(layer.codes.shape)
                set_codebook(layer, sh.codebook)
            else:
                self.state.set_weights(wname, self.values[binding.parameter])
        updates = {n: self.values[n] for n in self.graph.others}
        for init in self.state.model.graph.initializer:
            if init.name in updates:
                init.CopyFrom(numpy_helper.from_array(updates[init.name].reshape(tuple(init.dims)), init.name))


def batches(n: int, batch_size: int, rng: np.random.Generator):
    """Shuffled index batches of one epoch (the last one may be smaller)."""
    order = rng.permutation(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


_BRANCH_SAMPLES = 256  # training samples whose If conditions decide the branch trained


def fit(
    state: CompressionState,
    form: TrainForm,
    x: np.ndarray,
    y: np.ndarray,
    stage: StageSettings,
    *,
    batch_size: int = 64,
    seed: int = 0,
    name: str = "train",
    threads: int = 0,
    shift: int = 0,
    channels_last: bool = False,
) -> StageRecord:
    """Train ``state`` in ``form`` on ``(x, y)`` for ``stage.epochs`` epochs; updates the state.

    Logs one line per epoch (INFO).

    Args:
        state: the compression state (its weights, codebooks and biases are updated).
        form: dense, masked or shared (see :mod:`onnx_dc.train.forms`).
        x: float32 model input, ``(N, *sample_shape)``.
        y: int64 labels ``(N,)``.
        stage: epochs, learning rate, optimizer.
        batch_size: samples per step.
        seed: shuffling seed.
        name: stage name for the record.
        threads: onnxruntime intra-op threads (0: its default).
        shift: move each training image by up to this many pixels (:mod:`onnx_dc.train.augment`; 0: off).
        channels_last: the images are NHWC (else NCHW).
    """
    if shift and x.ndim != 4:
        raise ConfigError(f"train: shift: {shift} moves images, but the model input has shape {x.shape[1:]}; "
                          "set shift: 0")
    moves = np.random.default_rng([seed, 1])

    def step(trainer: Trainer, idx: np.ndarray, opt: Optimizer) -> float:
        return trainer.step(random_shift(x[idx], shift, moves, channels_last), y[idx], opt)

    trainer = None
    if stage.epochs and len(y):
        input_name, _ = model_input(state.model)
        first = x[:_BRANCH_SAMPLES]
        branches = taken_on_path(state, lambda size: ({input_name: first[i:i + size]} for i in range(0, len(first), size)),
                                 sorted({1, batch_size}), name, threads)
        trainer = Trainer(state, form, threads, reassign_lr=stage.reassign_lr, branches=branches)
    return run_stage(trainer,
                     len(y), step, stage,
                     StageRecord(name, form.value, stage.epochs), batch_size=batch_size, seed=seed)


# One optimizer step of a stage on the samples ``idx``; returns their mean loss.
StepFn = Callable[[Trainer, np.ndarray, Optimizer], float]


def run_stage(
    trainer: Trainer | None,
    n: int,
    step: StepFn,
    stage: StageSettings,
    record: StageRecord,
    *,
    batch_size: int,
    seed: int,
    full_loss: Callable[[Trainer], float] | None = None,
) -> StageRecord:
    """Run ``stage.epochs`` shuffled epochs over ``n`` samples, commit to the state and close the trainer.

    With ``full_loss`` (the loss over all samples, without training), the stage is committed
    only when it lowered that loss; otherwise the state stays as it was (``record.kept``).
    Logs one line per epoch, and one when the stage is undone (INFO).

    Args:
        trainer: the stage's trainer (None: nothing to train, the record is returned as is).
        n: number of samples.
        step: trains on one batch of sample indices.
        stage: epochs, learning rate, optimizer.
        record: filled with steps, per-epoch mean losses and seconds.
        batch_size: samples per step.
        seed: shuffling seed.
        full_loss: see above (None: always commit).
    """
    if trainer is None:
        return record
    steps_per_epoch = (n + batch_size - 1) // batch_size
    opt = Optimizer(stage, stage.epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    bar = progress.bar(total=stage.epochs * steps_per_epoch, desc=record.name, unit="step")
    try:
        if full_loss is not None:
            record.loss_before = full_loss(trainer)
        for epoch in range(stage.epochs):
            total, count = 0.0, 0
            first_lr = opt.lr()
            for idx in batches(n, batch_size, rng):
                total += step(trainer, idx, opt) * len(idx)
                count += len(idx)
                record.steps += 1
                bar.update()
                bar.set_postfix(epoch=f"{epoch + 1}/{stage.epochs}", loss=f"{total / count:.4f}", refresh=False)
            record.losses.append(total / count)
            # The learning rate the epoch's steps used (a cosine schedule ends at 0 after the last step).
            log.info("  %s: epoch %d/%d loss %.4g lr %.3g -> %.3g", record.name, epoch + 1, stage.epochs,
                     total / count, first_lr, opt.last_lr)
        if full_loss is not None:
            record.loss_after = full_loss(trainer)
            record.kept = record.loss_after <= record.loss_before
        if record.kept:
            trainer.commit()
        else:
            log.info("  %s: loss on the samples that judge the stage rose from %.4g to %.4g; the stage is undone",
                     record.name, record.loss_before, record.loss_after)
    finally:
        bar.close()
        trainer.close()
    record.seconds = time.perf_counter() - start
    return record
