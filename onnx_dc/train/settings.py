"""The fine-tuning schedule: typed settings of the ``train:`` section of a config.

```yaml
train:
  batch_size: 64
  seed: 0
  shift: 2                  # images: random translation by up to 2 pixels while training (default 0)
  optimizer: sgd            # shorthands (epochs, lr, optimizer, momentum, weight_decay,
  epochs: 4                 # lr_schedule) apply to every stage that does not set them
  prune_ramp: cubic         # with an integer prune_steps: linear (r * i / N) or cubic
  prune_steps:              # layer-wise pruning: each step prunes the matching layers to
    - [conv1]               # their planned ratio, then retrains; or an integer N: all
    - [conv2]               # layers together in N steps of growing ratio (r * i / N)
  retrain:  {epochs: 4, lr: 0.01, optimizer: sgd, momentum: 0.9, weight_decay: 0.0, lr_schedule: cosine}
  codebook: {epochs: 2, lr: 0.0001, optimizer: adamw}
```

Layers are resolved once; the layers (config, API ``schedule``, CLI flags) merge in that
order, later ones winning, and every problem is reported at once in one
:class:`~onnx_dc.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from onnx_dc.errors import ConfigError
from onnx_dc.sections import Field, Section


class OptimizerKind(str, enum.Enum):
    """Optimizer of a training stage."""

    SGD = "sgd"  # heavy ball: v = momentum * v + g + wd * w;  w -= lr * v
    ADAMW = "adamw"  # Adam with decoupled weight decay (Loshchilov & Hutter)


class PruneRamp(str, enum.Enum):
    """How the ratio grows over ``prune_steps: N`` steps (step i of N, final ratio r)."""

    LINEAR = "linear"  # r * i / N
    CUBIC = "cubic"  # r * (1 - (1 - i / N) ** 3): large steps first, small ones near the end (Zhu & Gupta 2017)

    def fraction(self, i: int, n: int) -> float:
        """The share of the final ratio reached after step ``i`` of ``n``."""
        t = i / n
        return t if self is PruneRamp.LINEAR else 1.0 - (1.0 - t) ** 3


class LrSchedule(str, enum.Enum):
    """How the learning rate moves over a stage."""

    CONSTANT = "constant"
    COSINE = "cosine"  # lr_t = lr * (1 + cos(pi * t / T)) / 2


@dataclass(frozen=True)
class StageSettings:
    """Settings of one training stage."""

    epochs: int = 4
    lr: float = 0.01
    optimizer: OptimizerKind = OptimizerKind.SGD
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: LrSchedule = LrSchedule.CONSTANT
    # Shared form only: > 0 trains latent values of the kept weights at this rate (scaled by the
    # schedule as lr is) and gives each weight the code of its nearest centroid after every step
    # (onnx_dc/train/loop.py); 0 keeps the codes and trains the centroids alone (Eq. 3).
    reassign_lr: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values."""
        d = dataclasses.asdict(self)
        d["optimizer"] = self.optimizer.value
        d["lr_schedule"] = self.lr_schedule.value
        return d


# Retraining after pruning: SGD with momentum from the trained weights. Measured on the
# LeNets: weight decay 5e-4 here cost 0.05-0.08 points of top-1 error against none.
DEFAULT_RETRAIN = StageSettings(epochs=4, lr=0.01, optimizer=OptimizerKind.SGD, momentum=0.9,
                                weight_decay=0.0, lr_schedule=LrSchedule.COSINE)
# Codebook training: a centroid's gradient sums thousands of weight gradients (Eq. 3), so
# plain SGD at a weight-sized rate diverges; AdamW is insensitive to that scale.
DEFAULT_CODEBOOK = StageSettings(epochs=2, lr=1e-4, optimizer=OptimizerKind.ADAMW, momentum=0.9,
                                 weight_decay=0.0, lr_schedule=LrSchedule.COSINE)


@dataclass(frozen=True)
class TrainSettings:
    """The whole fine-tuning schedule."""

    batch_size: int = 64
    seed: int = 0
    prune_steps: int | tuple[tuple[str, ...], ...] = 1
    prune_ramp: PruneRamp = PruneRamp.LINEAR
    retrain: StageSettings = DEFAULT_RETRAIN
    codebook: StageSettings = DEFAULT_CODEBOOK
    threads: int = 0  # onnxruntime intra-op threads (0: its default)
    shift: int = 0  # random translation of training images by up to this many pixels (onnx_dc/train/augment.py)
    # Label-free fine-tuning after the data-aware passes starts from their result ("data_aware"),
    # or also from magnitude pruning and plain k-means, keeping the better on validation ("both").
    start: str = "data_aware"

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        steps = self.prune_steps if isinstance(self.prune_steps, int) else [list(s) for s in self.prune_steps]
        return {"batch_size": self.batch_size, "seed": self.seed, "prune_steps": steps,
                "prune_ramp": self.prune_ramp.value,
                "retrain": self.retrain.to_dict(), "codebook": self.codebook.to_dict(), "threads": self.threads,
                "shift": self.shift, "start": self.start}


STAGES = ("retrain", "codebook")
STAGE_KEYS = tuple(f.name for f in dataclasses.fields(StageSettings))
STARTS = ("data_aware", "both")
STEPS_WHY = "must be a positive integer or a non-empty list of lists of node-name patterns"


def _steps(value: Any) -> int | tuple[tuple[str, ...], ...]:
    """``prune_steps``: a number of steps, or the node patterns pruned at each step."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(STEPS_WHY)
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(STEPS_WHY)
    steps = []
    for i, step in enumerate(value):
        if isinstance(step, str):
            step = [step]
        if not isinstance(step, list) or not step or not all(isinstance(p, str) and p for p in step):
            raise ValueError(f"{STEPS_WHY} (step {i} is not)")
        steps.append(tuple(step))
    return tuple(steps)


STAGE_SECTION = Section(
    Field("epochs", int, low=0),
    Field("lr", float, low=0.0, low_open=True),
    Field("optimizer", OptimizerKind),
    Field("momentum", float, low=0.0, high=1.0, high_open=True),
    Field("weight_decay", float, low=0.0),
    Field("lr_schedule", LrSchedule),
    Field("reassign_lr", float, low=0.0),
)
# The stage settings also stand at the top, as shorthands for every stage that does not set them.
TRAIN_SECTION = Section(
    Field("batch_size", int, low=1),
    Field("seed", int, low=0),
    Field("prune_steps", _steps),
    Field("prune_ramp", PruneRamp),
    Field("threads", int, low=0),
    Field("shift", int, low=0, high=8, note="pixels of translation augmentation"),
    Field("start", STARTS),
    *(Field(stage, STAGE_SECTION) for stage in STAGES),
    *STAGE_SECTION.fields.values(),
)
TOP_KEYS = TRAIN_SECTION.names


def _parse_layer(raw: Any, where: str, problems: list[str]) -> dict[str, Any]:
    """Validate one mapping in the ``train:`` layout; shorthands are expanded into the stages."""
    if raw is None:
        return {}
    if isinstance(raw, TrainSettings):
        return {"batch_size": raw.batch_size, "seed": raw.seed, "prune_steps": raw.prune_steps,
                "prune_ramp": raw.prune_ramp,
                "threads": raw.threads, "shift": raw.shift, "start": raw.start, "retrain": dataclasses.asdict(raw.retrain),
                "codebook": dataclasses.asdict(raw.codebook)}
    out = TRAIN_SECTION.check(raw, where, problems)
    shorthand = {k: out.pop(k) for k in STAGE_KEYS if k in out}
    for stage in STAGES:
        out[stage] = {**shorthand, **out.get(stage, {})}
    return out


def resolve_train_settings(*layers: Any, source: str = "train") -> TrainSettings:
    """Merge mappings in the ``train:`` layout (later layers win) into :class:`TrainSettings`.

    Each layer may be None, a mapping, or a :class:`TrainSettings`.

    Raises:
        ConfigError: listing every problem of every layer.
    """
    problems: list[str] = []
    merged: dict[str, Any] = {"retrain": dataclasses.asdict(DEFAULT_RETRAIN),
                              "codebook": dataclasses.asdict(DEFAULT_CODEBOOK)}
    for i, layer in enumerate(layers):
        parsed = _parse_layer(layer, source if i == 0 else f"{source} (override {i})", problems)
        for key, value in parsed.items():
            if key in STAGES:
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    if problems:
        raise ConfigError("; ".join(problems))
    stages = {s: StageSettings(**merged.pop(s)) for s in STAGES}
    return TrainSettings(**merged, **stages)


@dataclass
class StageRecord:
    """What one training stage did: per-epoch mean training loss, and accuracy if measured."""

    name: str
    form: str
    epochs: int
    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    accuracy: float | None = None
    # Loss on all samples before and after the stage, where the stage keeps only an improvement.
    loss_before: float | None = None
    loss_after: float | None = None
    kept: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain values."""
        return dataclasses.asdict(self)
