"""``compress`` as a declared list of stages.

    read -> plan -> [calibration samples] -> data-free passes | data-aware passes [-> blocks] | labeled fine-tuning
         -> [label-free fine-tuning -> (start: both) -> (data-aware passes again [-> blocks])] -> lower -> write
         -> [fidelity]

:func:`stages_for` builds the list from the call's arguments, :func:`run` runs it. A stage is a
function ``(state, context) -> Done | None``: it works on the :class:`~onnx_dc.passes.state.CompressionState`
(read and plan make it), keeps what later stages need in the :class:`Context`, and returns one
line saying what it did (None: it had nothing to do, and is not listed). The result lists the
stages that ran, in order. A new pass is a new :class:`Stage` placed in the list.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import onnx

from onnx_dc.config import Config
from onnx_dc.data.datasets import METADATA_KEY, DataSpec, Preprocess
from onnx_dc.errors import ConfigError, ModelError
from onnx_dc.graph import external, layout
from onnx_dc.graph.io import read_model, refuse_overwrite, write_model
from onnx_dc.formats.models import load_model
from onnx_dc.graph.normalize import initializer_inputs, normalize
from onnx_dc.graph.weights import find_weights
from onnx_dc.passes.lower import lower, set_metadata
from onnx_dc.passes.prune import prune
from onnx_dc.passes.share import share
from onnx_dc.passes.state import CompressionState
from onnx_dc.plan import check_prune_quality, make_plan
from onnx_dc.report import Report, make_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageRun:
    """One stage that ran: its name and what it did."""

    name: str
    did: str

    def __str__(self) -> str:
        return f"{self.name}: {self.did}" if self.did else self.name


@dataclass(frozen=True)
class CompressResult:
    """What :func:`onnx_dc.compress` produced: the compressed model, its report, and the run's state."""

    model: onnx.ModelProto
    report: Report
    state: CompressionState
    external_data: str | None = None  # data file beside the output, when the model did not fit in one file
    fidelity: Any = None  # onnx_dc.runtime.fidelity.Fidelity when held-out samples were given
    calib: Any = None  # onnx_dc.calibrate.CalibRun when calibration samples were given
    stages: tuple[StageRun, ...] = ()  # the stages that ran, in order

    @property
    def layers(self):
        """Per-layer rows (see :class:`onnx_dc.report.LayerRow`)."""
        return self.report.layers


@dataclass(frozen=True)
class Done:
    """A stage's answer: what it did, and the state it leaves when it made or replaced one."""

    did: str = ""
    state: CompressionState | None = None


@dataclass
class Context:
    """The call's inputs, read by every stage, and what stages hand to later ones."""

    source: Any  # a path, ONNX bytes or a ModelProto (never modified)
    config: Config
    overrides: Mapping[str, Any] = field(default_factory=dict)
    output_path: str | os.PathLike | None = None
    preprocess: Preprocess | None = None
    data: DataSpec | str | None = None
    calib: Any = None
    schedule: Mapping[str, Any] | None = None
    epochs: int | None = None
    # handed from stage to stage
    proto: onnx.ModelProto | None = None
    source_bytes: int | None = None
    notes: tuple[str, ...] = ()
    run: Any = None  # onnx_dc.calibrate.CalibRun: the data-aware passes' samples and what they did
    all_samples: Any = None  # the CalibRun of every sample, when some were set aside to validate fine-tuning
    validation: Any = None  # the samples that judge label-free fine-tuning
    original: onnx.ModelProto | None = None  # the original model, read once for the teacher and the fidelity
    tuned: Any = None  # what label-free fine-tuning did
    lowered: onnx.ModelProto | None = None
    report: Report | None = None
    external_data: str | None = None
    fidelity: Any = None

    @property
    def name(self) -> str:
        """The model's name in messages (:func:`model_name`)."""
        return model_name(self.source)

    @property
    def path(self) -> str | os.PathLike | None:
        """The model's path when it was given as one (:func:`model_path`)."""
        return model_path(self.source)

    @property
    def seed(self) -> dict[str, int] | None:
        """The ``seed`` override as a train-settings layer, or None."""
        return {"seed": self.overrides["seed"]} if self.overrides.get("seed") is not None else None


def model_name(model: Any) -> str:
    """A model's name in messages: its path, or "model" for a proto or bytes."""
    return str(model) if isinstance(model, (str, os.PathLike)) else "model"


def model_path(model: Any) -> str | os.PathLike | None:
    """A model's path when it was given as one (the file an output must not overwrite), else None."""
    return model if isinstance(model, (str, os.PathLike)) else None


StageFn = Callable[[CompressionState | None, Context], Done | None]


@dataclass(frozen=True)
class Stage:
    """A named step of the pipeline."""

    name: str
    fn: StageFn


def run(stages: list[Stage], ctx: Context,
        state: CompressionState | None = None) -> tuple[CompressionState, tuple[StageRun, ...]]:
    """Run ``stages`` in order (from ``state``, for stages after planning); returns the final state and the stages
    that ran, each also logged (DEBUG)."""
    ran = []
    for stage in stages:
        done = stage.fn(state, ctx)
        if done is None:
            continue
        if done.state is not None:
            state = done.state
        ran.append(StageRun(stage.name, done.did))
        log.debug("stage %s", ran[-1])
    return state, tuple(ran)


# ----------------------------------------------------------------------------- read and plan

def read(state: CompressionState | None, ctx: Context) -> Done:
    """Load the model (weights stay memory-mapped from a file), refuse a compressed one, normalize it."""
    if ctx.path is not None:
        proto, ctx.source_bytes = read_model(ctx.path, lazy=True)  # read and checked once
    else:
        proto = load_model(ctx.source)
        if isinstance(ctx.source, onnx.ModelProto):
            ctx.source_bytes = ctx.source.ByteSize()
    if any(f.domain == layout.DOMAIN for f in proto.functions):
        raise ModelError(f"{ctx.name}: already compressed by onnx_dc; compress the original model instead")
    as_inputs = initializer_inputs(proto)
    if as_inputs:
        ctx.notes = (*ctx.notes, (
            f"{len(as_inputs)} initializers were also listed as graph inputs (e.g. {as_inputs[0]!r}); the "
            "compressed model no longer takes them as inputs, so onnxruntime folds its weights"))
    ctx.proto = normalize(proto, ctx.name, copy=False)  # proto is this call's own copy
    return Done(f"{ctx.name}: {len(ctx.proto.graph.node)} nodes")


def plan(state: CompressionState | None, ctx: Context) -> Done:
    """Find the weights, resolve the config into per-weight settings, and take the weights out of the model."""
    made = make_plan(find_weights(ctx.proto), ctx.config, ctx.name)
    if ctx.notes:
        made = dataclasses.replace(made, notes=(*made.notes, *ctx.notes))
    if not made.entries:
        first = next(s for s in made.skipped if s.reason.startswith(("skip:", "quantize_term")))
        raise ConfigError(f"{ctx.name}: nothing to compress, every weight is skipped (e.g. {first.tensor}: "
                          f"{first.reason}); give settings for them (--sparse-ratio / --class-num, or a config)")
    proto, ctx.proto = ctx.proto, None  # the state owns the model from here
    state = CompressionState.start(proto, made, ctx.source_bytes)
    check_prune_quality(made, {name: layer.weights for name, layer in state.layers.items()})
    return Done(f"{len(made.entries)} weights to compress, {len(made.skipped)} left as they are", state)


def prepared(ctx: Context) -> CompressionState:
    """Read and plan: the state before any tensor is changed."""
    state, _ = run([READ, PLAN], ctx)
    return state


# ----------------------------------------------------------------------------- passes

def data_free(state: CompressionState, ctx: Context) -> Done:
    """Magnitude pruning, then k-means weight sharing per layer."""
    prune(state)
    share(state)
    return Done("prune by magnitude, share by k-means")


def samples(state: CompressionState, ctx: Context) -> Done:
    """Read the calibration samples and the ``calib:`` settings; set the validation part aside when fine-tuning."""
    from onnx_dc import calibrate

    ctx.run = calibrate.start_calib(state, ctx.calib, ctx.config.calib, ctx.data, ctx.preprocess)
    if ctx.data is None and ctx.epochs:
        # the samples that will judge fine-tuning take no part in the data-aware passes either
        from onnx_dc.train.distill import validation_split

        train_part, ctx.validation = validation_split(ctx.run.data.calib)
        if ctx.validation is not train_part:
            ctx.all_samples = ctx.run
            ctx.run = dataclasses.replace(ctx.run, data=dataclasses.replace(ctx.run.data, calib=train_part))
    return Done(ctx.run.data.summary())


def data_aware(state: CompressionState, ctx: Context) -> Done:
    """The data-aware passes on the layers' input statistics (config ``calib:``)."""
    from onnx_dc import calibrate

    ctx.run = calibrate.run_calibrated(state, ctx.run)
    ran = ctx.run.to_dict().get("passes")
    return Done(", ".join(ran) if ran else "none")


def blocks(state: CompressionState, ctx: Context) -> Done | None:
    """Config ``calib: blocks``: train each block to reproduce the original's block output (after the layer passes,
    and again after they ran again); :mod:`onnx_dc.train.blocks`."""
    if not ctx.run.settings.blocks or ctx.run.blocks is not None or ctx.run.result is None:
        return None
    from onnx_dc import calibrate
    from onnx_dc.train.blocks import reconstruct_blocks

    done = reconstruct_blocks(state, calibrate.original_model(state, ctx.run.result), ctx.run.data.calib,
                              name=ctx.name, block_layers=ctx.run.settings.block_layers)
    ctx.run = dataclasses.replace(ctx.run, blocks=done)
    return Done(done.summary())


def labeled(state: CompressionState, ctx: Context) -> Done:
    """The paper's schedule on labeled data: prune in steps with retraining, share, train the codebooks."""
    from onnx_dc.train.schedule import run_schedule
    from onnx_dc.train.settings import resolve_train_settings

    extra = {"epochs": ctx.epochs} if ctx.epochs is not None else None
    settings = resolve_train_settings(ctx.config.train, ctx.seed, ctx.schedule, extra,
                                      source=f"{ctx.config.source}: train")
    trained = run_schedule(state, ctx.data, settings, ctx.preprocess)
    ctx.preprocess = trained.preprocess
    return Done(f"{len(trained.records)} training stages on {ctx.data}")


def label_free(state: CompressionState, ctx: Context) -> Done:
    """Fine-tune the data-aware result against the original model's outputs (no labels)."""
    from onnx_dc import calibrate
    from onnx_dc.train.distill import DISTILL_DEFAULTS, after_data_aware, distill
    from onnx_dc.train.settings import resolve_train_settings

    ctx.original = load_model(ctx.source)  # the teacher, read once for fine-tuning and the fidelity
    settings = resolve_train_settings(DISTILL_DEFAULTS, ctx.config.train, ctx.seed, ctx.schedule,
                                      {"epochs": ctx.epochs}, source=f"{ctx.config.source}: train")
    run_ = ctx.run
    ctx.tuned = distill(state, run_.data.calib, settings, name=ctx.name, validation=ctx.validation,
                        **after_data_aware(ctx.original, lambda s: calibrate.share_again(s, run_)))
    return Done("kept" if ctx.tuned.changed else "kept nothing")


def both_starts(state: CompressionState, ctx: Context) -> Done | None:
    """``train: start: both``: fine-tune from magnitude pruning too; the smaller validation error wins."""
    tuned = ctx.tuned
    if tuned.settings.start != "both" or tuned.skipped is not None or ctx.all_samples is None:
        return None
    from onnx_dc.train.distill import distill, output_error, run_teacher

    outputs = [t.output for t in tuned.targets]
    teacher = run_teacher(ctx.original, ctx.validation, outputs, tuned.settings.threads)
    other = prepared(ctx)
    alternative = distill(other, ctx.run.data.calib, tuned.settings, name=ctx.name, teacher=ctx.original)
    errors = [output_error(s.dense_model(), ctx.validation, teacher, tuned.settings.threads) for s in (state, other)]
    magnitude = errors[1] < errors[0]
    log.info("start: both: error on %d validation sample(s) %.4g from the data-aware result, %.4g from magnitude "
             "pruning; keeping the %s", len(ctx.validation), errors[0], errors[1], "latter" if magnitude else "former")
    if not magnitude:
        return Done(f"kept the data-aware start (validation error {errors[0]:.4g} against {errors[1]:.4g})")
    ctx.tuned = alternative
    ctx.run = dataclasses.replace(ctx.run, superseded="start: both kept the fine-tuned magnitude-pruned start")
    return Done(f"kept the magnitude-pruned start (validation error {errors[1]:.4g} against {errors[0]:.4g})",
                other)


def data_aware_again(state: CompressionState, ctx: Context) -> Done | None:
    """Nothing of fine-tuning stayed: the result is the data-aware one, fitted to every sample."""
    if ctx.all_samples is None or ctx.tuned.changed:
        return None
    from onnx_dc import calibrate

    log.info("fine-tuning kept nothing; the data-aware passes run again on all %d calibration samples",
             len(ctx.all_samples.data.calib))
    fresh = prepared(ctx)
    ctx.run = calibrate.run_calibrated(fresh, ctx.all_samples)
    ran = ctx.run.to_dict().get("passes")
    return Done(f"{', '.join(ran) if ran else 'none'} on all {len(ctx.all_samples.data.calib)} samples", fresh)


# ----------------------------------------------------------------------------- lower, write, fidelity

def lower_stage(state: CompressionState, ctx: Context) -> Done:
    """Replace each compressed weight by its decoder call; record the preprocessing; make the report."""
    ctx.lowered = lower(state)
    if ctx.preprocess is not None:
        set_metadata(ctx.lowered, {METADATA_KEY: ctx.preprocess.to_metadata()})
    ctx.report = make_report(ctx.lowered)  # before writing: a model too big for one file moves its tensors out
    return Done(f"{len(ctx.report.layers)} weights compressed")


def write(state: CompressionState, ctx: Context) -> Done:
    """Write the ``*.dc.onnx`` atomically (over 2 GB: large tensors beside it), or embed every tensor."""
    file_bytes = ctx.lowered.ByteSize()
    if ctx.output_path is None:
        if external.fits(ctx.lowered):
            external.embed_all(ctx.lowered)  # tensors still mapped from the input file join the returned proto
            file_bytes = ctx.lowered.ByteSize()
        ctx.report = dataclasses.replace(ctx.report, file_bytes=file_bytes)
        return Done(f"{file_bytes} B in memory")
    refuse_overwrite(ctx.output_path, [ctx.path])
    file_bytes, ctx.external_data = write_model(ctx.lowered, ctx.output_path)
    ctx.report = dataclasses.replace(ctx.report, file_bytes=file_bytes)
    return Done(f"{ctx.output_path} ({file_bytes} B)")


def fidelity(state: CompressionState, ctx: Context) -> Done:
    """Compressed against original outputs on the held-out samples."""
    from onnx_dc import calibrate

    if ctx.original is None:  # read after lowering, so that a large model is not held twice while it is written
        ctx.original = load_model(ctx.source)
    ctx.fidelity = calibrate.fidelity_of(ctx.original, ctx.lowered, state, ctx.run)
    if ctx.fidelity is None:
        return Done("not measured: no sample was held out")
    worst = min(o.cosine for o in ctx.fidelity.outputs)
    return Done(f"worst output cosine {worst:.5f} on {ctx.fidelity.samples} held-out sample(s)")


READ, PLAN = Stage("read", read), Stage("plan", plan)
DATA_FREE = Stage("data-free passes", data_free)
SAMPLES = Stage("calibration samples", samples)
DATA_AWARE = Stage("data-aware passes", data_aware)
BLOCKS = Stage("block reconstruction", blocks)
LABELED = Stage("labeled fine-tuning", labeled)
LABEL_FREE = Stage("label-free fine-tuning", label_free)
BOTH_STARTS = Stage("start: both", both_starts)
DATA_AWARE_AGAIN = Stage("data-aware passes again", data_aware_again)
LOWER, WRITE, FIDELITY = Stage("lower", lower_stage), Stage("write", write), Stage("fidelity", fidelity)


def stages_for(ctx: Context) -> list[Stage]:
    """The stages a call of :func:`onnx_dc.compress` runs, from its arguments.

    Raises:
        ConfigError: for a fine-tuning schedule or epochs without data or samples to train on.
    """
    stages = [READ, PLAN]
    if ctx.calib is not None:
        stages.append(SAMPLES)
        if ctx.data is not None:
            stages.append(LABELED)
        else:
            if ctx.schedule is not None and not ctx.epochs:
                raise ConfigError("a fine-tuning schedule was given without epochs; pass epochs=N to fine-tune")
            stages += [DATA_AWARE, BLOCKS]
            if ctx.epochs:
                stages += [LABEL_FREE, BOTH_STARTS, DATA_AWARE_AGAIN, BLOCKS]
    elif ctx.data is not None:
        stages.append(LABELED)
    else:
        if ctx.schedule is not None or ctx.epochs is not None:
            raise ConfigError("a fine-tuning schedule or epochs were given without data; pass data=... to fine-tune")
        stages.append(DATA_FREE)
    stages += [LOWER, WRITE]
    if ctx.calib is not None:
        stages.append(FIDELITY)
    return stages


def result(state: CompressionState, ctx: Context, ran: tuple[StageRun, ...]) -> CompressResult:
    """The :class:`CompressResult` of a finished run."""
    return CompressResult(ctx.lowered, ctx.report, state, external_data=ctx.external_data, fidelity=ctx.fidelity,
                          calib=ctx.run, stages=ran)
