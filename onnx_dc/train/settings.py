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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnx_dc.errors import ConfigError


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
TOP_KEYS = ("batch_size", "seed", "prune_steps", "prune_ramp", "threads", "shift", "start", *STAGES, *STAGE_KEYS)


def _stage_value(key: str, value: Any) -> tuple[Any, str | None]:
    def bad(why: str) -> tuple[Any, str]:
        return None, f"{key}: {value!r} {why}"

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "epochs":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return bad("must be a non-negative integer")
        return value, None
    if key == "lr":
        if not number or not value > 0:
            return bad("must be a positive number")
        return float(value), None
    if key in ("momentum",):
        if not number or not 0 <= value < 1:
            return bad("must be a number in [0, 1)")
        return float(value), None
    if key in ("weight_decay", "reassign_lr"):
        if not number or value < 0:
            return bad("must be a non-negative number")
        return float(value), None
    if key == "optimizer":
        try:
            return OptimizerKind(str(value).lower()), None
        except ValueError:
            return bad(f"must be one of {', '.join(o.value for o in OptimizerKind)}")
    if key == "lr_schedule":
        try:
            return LrSchedule(str(value).lower()), None
        except ValueError:
            return bad(f"must be one of {', '.join(s.value for s in LrSchedule)}")
    return None, f"unknown stage setting {key!r} (known: {', '.join(STAGE_KEYS)})"


def _parse_layer(raw: Any, where: str, problems: list[str]) -> dict[str, Any]:
    """Validate one mapping in the ``train:`` layout; shorthands are expanded into the stages."""
    if raw is None:
        return {}
    if isinstance(raw, TrainSettings):
        return {"batch_size": raw.batch_size, "seed": raw.seed, "prune_steps": raw.prune_steps,
                "prune_ramp": raw.prune_ramp,
                "threads": raw.threads, "shift": raw.shift, "start": raw.start, "retrain": dataclasses.asdict(raw.retrain),
                "codebook": dataclasses.asdict(raw.codebook)}
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping, got {type(raw).__name__}")
        return {}
    out: dict[str, Any] = {s: {} for s in STAGES}
    shorthand: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        if key in ("batch_size", "threads", "shift"):
            lo = 1 if key == "batch_size" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                problems.append(f"{where}: {key}: {value!r} must be an integer >= {lo}")
            elif key == "shift" and value > 8:
                problems.append(f"{where}: shift: {value!r} pixels is more than a translation augmentation; use 0-8")
            else:
                out[key] = value
        elif key == "seed":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{where}: seed: {value!r} must be a non-negative integer")
            else:
                out[key] = value
        elif key == "prune_steps":
            steps = _parse_steps(value, f"{where}: prune_steps", problems)
            if steps is not None:
                out[key] = steps
        elif key == "start":
            if value not in STARTS:
                problems.append(f"{where}: start: {value!r} must be one of {', '.join(STARTS)}")
            else:
                out[key] = value
        elif key == "prune_ramp":
            try:
                out[key] = PruneRamp(str(value).lower())
            except ValueError:
                problems.append(f"{where}: prune_ramp: {value!r} must be one of {', '.join(r.value for r in PruneRamp)}")
        elif key in STAGES:
            if not isinstance(value, Mapping):
                problems.append(f"{where}: {key}: expected a mapping of stage settings")
                continue
            for k, v in value.items():
                converted, problem = _stage_value(str(k), v)
                if problem:
                    problems.append(f"{where}: {key}.{problem}")
                else:
                    out[key][str(k)] = converted
        elif key in STAGE_KEYS:
            converted, problem = _stage_value(key, value)
            if problem:
                problems.append(f"{where}: {problem}")
            else:
                shorthand[key] = converted
        else:
            problems.append(f"{where}: unknown key {key!r} (known: {', '.join(TOP_KEYS)})")
    for stage in STAGES:
        out[stage] = {**shorthand, **out[stage]}
    return out


def _parse_steps(value: Any, where: str, problems: list[str]) -> int | tuple[tuple[str, ...], ...] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            problems.append(f"{where}: {value!r} must be >= 1")
            return None
        return value
    if not isinstance(value, list) or not value:
        problems.append(f"{where}: expected an integer or a non-empty list of lists of node patterns")
        return None
    steps = []
    for i, step in enumerate(value):
        if isinstance(step, str):
            step = [step]
        if not isinstance(step, list) or not step or not all(isinstance(p, str) and p for p in step):
            problems.append(f"{where}[{i}]: expected a list of node-name patterns")
            continue
        steps.append(tuple(step))
    return tuple(steps)


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


def with_stage(settings: TrainSettings, stage: str, **changes: Any) -> TrainSettings:
    """A copy with some settings of one stage changed."""
    return dataclasses.replace(settings, **{stage: dataclasses.replace(getattr(settings, stage), **changes)})


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
