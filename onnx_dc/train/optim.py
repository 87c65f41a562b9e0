"""Optimizers in NumPy, stepping the parameters onnxruntime-training computed gradients for.

onnxruntime-training 1.19's optimizer models offer SGD without momentum and AdamW, and
a codebook's update is computed from a dense gradient outside the graph anyway (see
:mod:`onnx_dc.train.forms`), so every form steps its parameters here, with one
definition of each rule:

    sgd:    v <- momentum * v + g + wd * w;          w <- w - lr * v
    adamw:  m <- b1 m + (1 - b1) g;  s <- b2 s + (1 - b2) g^2
            w <- w - lr * (m / (1 - b1^t) / (sqrt(s / (1 - b2^t)) + eps) + wd * w)

Arrays are updated in place (float32).
"""

from __future__ import annotations

import math

import numpy as np

from onnx_dc.train.settings import LrSchedule, OptimizerKind, StageSettings


class Optimizer:
    """One rule over named float32 arrays; state is created lazily per name."""

    def __init__(self, stage: StageSettings, total_steps: int, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.stage = stage
        self.total_steps = max(1, total_steps)
        self.betas = betas
        self.eps = eps
        self.t = 0
        self.last_lr = self.lr()  # the rate of the last step taken (for progress lines)
        self._slots: dict[str, tuple[np.ndarray, ...]] = {}

    def lr(self) -> float:
        """Learning rate of the current step."""
        base = self.stage.lr
        if self.stage.lr_schedule == LrSchedule.COSINE:
            return base * 0.5 * (1.0 + math.cos(math.pi * min(self.t, self.total_steps) / self.total_steps))
        return base

    def begin_step(self) -> float:
        """Advance the step counter; returns the learning rate to use."""
        lr = self.lr()
        self.t += 1
        self.last_lr = lr
        return lr

    def update(self, name: str, w: np.ndarray, g: np.ndarray, lr: float, decay: bool = True) -> None:
        """Step ``w`` (in place) by its gradient ``g``; ``decay`` False skips weight decay (biases, codebooks)."""
        wd = self.stage.weight_decay if decay else 0.0
        if self.stage.optimizer == OptimizerKind.SGD:
            (v,) = self._slots.setdefault(name, (np.zeros_like(w),))
            v *= np.float32(self.stage.momentum)
            v += g
            if wd:
                v += np.float32(wd) * w
            w -= np.float32(lr) * v
            return
        m, s = self._slots.setdefault(name, (np.zeros_like(w), np.zeros_like(w)))
        b1, b2 = self.betas
        m *= np.float32(b1)
        m += np.float32(1 - b1) * g
        s *= np.float32(b2)
        s += np.float32(1 - b2) * np.square(g)
        c1 = 1 - b1 ** self.t
        c2 = 1 - b2 ** self.t
        step = (m / np.float32(c1)) / (np.sqrt(s / np.float32(c2)) + np.float32(self.eps))
        if wd:
            step += np.float32(wd) * w
        w -= np.float32(lr) * step
