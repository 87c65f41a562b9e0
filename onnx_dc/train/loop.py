"""The training loop: onnxruntime-training computes loss and gradients, NumPy steps the parameters.

A :class:`Trainer` generates the training artifacts of a :class:`TrainingGraph` into a
temporary folder, opens an ``api.Module`` on them, and for each batch

    loss, {dL/dp} = Module(x, y);   optimizer step on p (NumPy);   write p back by name.

For masked layers the gradient is multiplied by the mask before the step; for shared
layers the step is on the codebook (Eq. 3, see :mod:`onnx_dc.train.forms`) and the
written parameter is ``codebook[codes]``. When a stage ends, :meth:`Trainer.commit`
puts weights, codebooks and biases back into the :class:`CompressionState` by name.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dc import progress
from onnx_dc.errors import ModelError
from onnx_dc.graph.io import MAX_IR_VERSION
from onnx_dc.passes.share import set_codebook
from onnx_dc.passes.state import CompressionState
from onnx_dc.train.forms import TrainForm, TrainingGraph, build_training_graph
from onnx_dc.train.optim import Optimizer
from onnx_dc.train.ort_training import training_modules
from onnx_dc.train.settings import StageRecord, StageSettings


@dataclass
class _Shared:
    """NumPy side of one shared layer: its codebook and where its kept weights sit."""

    codebook: np.ndarray  # float32 [k + 1] with entry 0 == 0 when pruned, else [k]
    codes: np.ndarray  # intp codes of the kept weights (or of all weights when none is pruned)
    index: np.ndarray | None  # flat positions of the kept weights; None: every weight
    weights: np.ndarray  # float32 dense W = codebook[codes], written to onnxruntime each step


def _silence_ort() -> None:
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


@contextlib.contextmanager
def _quiet_stderr():
    """Hide the native INFO lines onnxruntime-training's graph builder prints on fd 2.

    Its sessions log at INFO whatever the default severity; errors still arrive as exceptions.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class Trainer:
    """One training stage's onnxruntime session over a compression state."""

    def __init__(self, state: CompressionState, form: TrainForm, threads: int = 0, name: str = "model"):
        artifacts, api = training_modules()
        _silence_ort()
        self.state = state
        self.form = form
        self.graph: TrainingGraph = build_training_graph(state, form, name)
        self._tmp = tempfile.TemporaryDirectory(prefix="onnx_dc_train_")
        folder = Path(self._tmp.name)
        try:
            with _quiet_stderr():
                artifacts.generate_artifacts(self.graph.model, requires_grad=self.graph.requires_grad,
                                             frozen_params=self.graph.frozen, loss=None, optimizer=None,
                                             artifact_directory=folder)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's gradient builder raises many exception types
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{name}: onnxruntime-training cannot build the gradient graph ({first})") from None
        for path in folder.glob("*.onnx"):
            # generate_artifacts writes at the installed onnx's IR version; ORT 1.19 reads <= 10.
            proto = onnx.load(path)
            proto.ir_version = MAX_IR_VERSION
            onnx.save(proto, path)
        options = None
        if threads:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
        self.checkpoint = api.CheckpointState.load_checkpoint(os.fspath(folder / "checkpoint"))
        self.module = api.Module(os.fspath(folder / "training_model.onnx"), self.checkpoint,
                                 os.fspath(folder / "eval_model.onnx"), session_options=options)
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
                self.shared[wname] = _Shared(layer.codebook.astype(np.float32, copy=True), codes, index,
                                             self.values[binding.parameter])

    def close(self) -> None:
        """Drop the session and its temporary files."""
        self.module = None
        self.checkpoint = None
        self._params = {}
        self._tmp.cleanup()

    def step(self, x: np.ndarray, y: np.ndarray, opt: Optimizer) -> float:
        """One forward/backward in onnxruntime and one optimizer step; returns the batch loss."""
        loss = self.module(x, y)
        lr = opt.begin_step()
        for name, param in self._params.items():
            grad = param.grad
            binding = self.graph.layers.get(name)
            if binding is not None and binding.kind == "shared":
                self._step_shared(name, grad, opt, lr)
            else:
                w = self.values[name]
                mask = self.masks.get(name)
                if mask is not None:
                    grad = grad * mask  # dL/dP = dL/dW * M: zero at pruned positions
                opt.update(name, w, grad, lr, decay=binding is not None)
                param.data = w
        self.module.lazy_reset_grad()
        return float(loss)

    def _step_shared(self, name: str, grad: np.ndarray, opt: Optimizer, lr: float) -> None:
        sh = self.shared[name]
        g = grad.ravel()
        if sh.index is not None:
            g = g[sh.index]
        # Eq. 3: a centroid's gradient is the sum of the gradients of the weights sharing it.
        cb_grad = np.bincount(sh.codes, weights=g, minlength=sh.codebook.size).astype(np.float32)
        if sh.index is not None:  # pruned: entry 0 is the reserved zero
            cb_grad[0] = 0.0
        opt.update(f"{name}/codebook", sh.codebook, cb_grad, lr, decay=False)
        if sh.index is not None:
            sh.codebook[0] = 0.0
        flat = sh.weights.reshape(-1)
        if sh.index is not None:
            flat[sh.index] = sh.codebook[sh.codes]
        else:
            np.take(sh.codebook, sh.codes, out=flat)
        self._params[name].data = sh.weights

    def commit(self) -> None:
        """Put the trained weights, codebooks and other parameters back into the state, by name."""
        for wname, binding in self.graph.layers.items():
            if binding.kind == "shared":
                set_codebook(self.state.layers[wname], self.shared[wname].codebook)
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
    echo: Callable[[str], None] | None = None,
) -> StageRecord:
    """Train ``state`` in ``form`` on ``(x, y)`` for ``stage.epochs`` epochs; updates the state.

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
        echo: where to print one line per epoch (None: silent).
    """
    record = StageRecord(name, form.value, stage.epochs)
    if stage.epochs == 0 or len(y) == 0:
        return record
    trainer = Trainer(state, form, threads)
    steps_per_epoch = (len(y) + batch_size - 1) // batch_size
    opt = Optimizer(stage, stage.epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    bar = progress.bar(total=stage.epochs * steps_per_epoch, desc=name, unit="step")
    try:
        for epoch in range(stage.epochs):
            total, count = 0.0, 0
            first_lr = opt.lr()
            for idx in batches(len(y), batch_size, rng):
                total += trainer.step(x[idx], y[idx], opt) * len(idx)
                count += len(idx)
                record.steps += 1
                bar.update()
                bar.set_postfix(epoch=f"{epoch + 1}/{stage.epochs}", loss=f"{total / count:.4f}", refresh=False)
            record.losses.append(total / count)
            if echo is not None:
                # The learning rate the epoch's steps used (a cosine schedule ends at 0 after the last step).
                echo(f"  {name}: epoch {epoch + 1}/{stage.epochs} loss {total / count:.4f} "
                     f"lr {first_lr:.3g} -> {opt.last_lr:.3g}")
        trainer.commit()
    finally:
        bar.close()
        trainer.close()
    record.seconds = time.perf_counter() - start
    return record
