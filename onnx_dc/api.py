"""The public Python API: thin orchestration of load -> inspect -> plan -> passes -> lower -> save."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import onnx

from onnx_dc.config import Config, as_config
from onnx_dc.data.datasets import METADATA_KEY, DataSpec, Preprocess
from onnx_dc.errors import ConfigError, FormatError, ModelError
from onnx_dc.graph import external, layout
from onnx_dc.graph.io import load_model, read_model, same_file, save_model, serialize, write_model
from onnx_dc.graph.normalize import initializer_inputs, normalize
from onnx_dc.graph.weights import find_weights
from onnx_dc.passes.lower import lower, set_metadata
from onnx_dc.passes.prune import prune
from onnx_dc.passes.share import share
from onnx_dc.passes.state import CompressionState
from onnx_dc.plan import Plan, make_plan
from onnx_dc.report import Report, make_report


@dataclass(frozen=True)
class CompressResult:
    """What :func:`compress` produced: the compressed model, its report, and the run's state."""

    model: onnx.ModelProto
    report: Report
    state: CompressionState
    external_data: str | None = None  # data file beside the output, when the model did not fit in one file
    fidelity: Any = None  # onnx_dc.runtime.fidelity.Fidelity when held-out samples were given
    calib: Any = None  # onnx_dc.calibrate.CalibRun when calibration samples were given

    @property
    def layers(self):
        """Per-layer rows (see :class:`onnx_dc.report.LayerRow`)."""
        return self.report.layers


def _model_name(model: Any) -> str:
    """The model's name in messages: its path, or "model" for a proto or bytes."""
    return str(model) if isinstance(model, (str, os.PathLike)) else "model"


def prepare(
    model: onnx.ModelProto | str | os.PathLike | bytes,
    config: Config | Mapping[str, Any] | str | Path | None = None,
    **overrides: Any,
) -> CompressionState:
    """Load, normalize, find weights and resolve the plan; no tensor is changed yet.

    ``overrides`` are global settings (``sparse_ratio=0.9``, ``class_num=32``, ...)
    applied over the config's defaults, as the CLI flags are.
    """
    name = _model_name(model)
    source_bytes = None
    if isinstance(model, (str, os.PathLike)):
        proto, source_bytes = read_model(model, lazy=True)  # read and checked once; weights stay in the file
    else:
        proto = load_model(model)
    if any(f.domain == layout.DOMAIN for f in proto.functions):
        raise ModelError(f"{name}: already compressed by onnx_dc; compress the original model instead")
    cfg = as_config(config)
    if overrides:
        cfg = cfg.with_overrides({k: v for k, v in overrides.items() if v is not None})
    if source_bytes is None and isinstance(model, onnx.ModelProto):
        source_bytes = model.ByteSize()
    as_inputs = initializer_inputs(proto)
    proto = normalize(proto, name, copy=False)  # proto is this call's own copy
    plan: Plan = make_plan(find_weights(proto), cfg, name)
    if as_inputs:
        plan = dataclasses.replace(plan, notes=(*plan.notes, (
            f"{len(as_inputs)} initializers were also listed as graph inputs (e.g. {as_inputs[0]!r}); the "
            "compressed model no longer takes them as inputs, so onnxruntime folds its weights")))
    if not plan.entries:
        first = next(s for s in plan.skipped if s.reason.startswith(("skip:", "quantize_term")))
        raise ConfigError(f"{name}: nothing to compress, every weight is skipped (e.g. {first.tensor}: {first.reason});"
                          " give settings for them (--sparse-ratio / --class-num, or a config)")
    return CompressionState.start(proto, plan, source_bytes)


def finish(
    state: CompressionState,
    output_path: str | os.PathLike | None = None,
    preprocess: Preprocess | None = None,
    input_path: str | os.PathLike | None = None,
) -> CompressResult:
    """Lower the state to ``*.dc.onnx``, record preprocessing, and write it atomically if asked."""
    dc = lower(state)
    if preprocess is not None:
        set_metadata(dc, {METADATA_KEY: preprocess.to_metadata()})
    report = make_report(dc)  # before writing: a model too big for one file moves its tensors out
    file_bytes, data_file = dc.ByteSize(), None
    if output_path is None and external.fits(dc):
        external.embed_all(dc)  # tensors still mapped from the input file join the returned proto
        file_bytes = dc.ByteSize()
    if output_path is not None:
        if input_path is not None and same_file(input_path, output_path):
            raise ModelError(f"{output_path}: refusing to overwrite the input model; choose another output path")
        file_bytes, data_file = write_model(dc, output_path)
    return CompressResult(dc, dataclasses.replace(report, file_bytes=file_bytes), state, external_data=data_file)


def compress(
    model: onnx.ModelProto | str | os.PathLike | bytes,
    output_path: str | os.PathLike | None = None,
    config: Config | Mapping[str, Any] | str | Path | None = None,
    *,
    preprocess: Preprocess | None = None,
    data: DataSpec | str | None = None,
    schedule: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    echo: Callable[[str], None] | None = None,
    calib: Any = None,
    **overrides: Any,
) -> CompressResult:
    """Prune and share the weights of an ONNX model; return (and optionally write) the ``*.dc.onnx``.

    Args:
        model: a ModelProto (not modified), ONNX bytes, or a path (never overwritten).
        output_path: where to write the compressed model (atomically); None to only return it.
        config: a :class:`~onnx_dc.config.Config`, a mapping in the YAML layout, or a YAML path.
        preprocess: input preprocessing to record in the model's metadata.
        data: training data (``mnist:DIR``, ``npz:FILE``, ``digits``, ...). When given, the
            fine-tuning schedule runs: prune (in steps) and retrain, share, train the codebooks.
        schedule: overrides of the config's ``train:`` section, in the same layout
            (``{"epochs": 2, "retrain": {"lr": 0.01}}``; see :mod:`onnx_dc.train.settings`).
        epochs: epochs of every training stage (over config and ``schedule``).
        echo: where fine-tuning prints its progress (None: silent).
        calib: unlabeled samples (``images:DIR``, ``npz:FILE``, ... or a
            :class:`~onnx_dc.data.calib.CalibSpec`): the data-aware passes run (config ``calib:``
            section) and the result carries its fidelity on the held-out samples. With
            ``epochs`` and no ``data``, label-free fine-tuning follows: the compressed model is
            trained to match the original's outputs (:mod:`onnx_dc.train.distill`).
        **overrides: global settings over the config's defaults, e.g. ``sparse_ratio=0.9``.

    Returns:
        A :class:`CompressResult` with the compressed ModelProto and its per-layer report.

    Raises:
        TrainingUnavailable: when ``data`` is given and onnxruntime-training cannot be imported.
    """
    if output_path is not None and isinstance(model, (str, os.PathLike)) and same_file(model, output_path):
        raise ModelError(f"{output_path}: refusing to overwrite the input model; choose another output path")
    state = prepare(model, config, **overrides)
    input_path = model if isinstance(model, (str, os.PathLike)) else None
    if calib is not None:
        return _compress_calibrated(model, state, as_config(config), calib, data, preprocess, output_path,
                                    input_path, schedule, epochs, echo, overrides)
    if data is None:
        if schedule is not None or epochs is not None:
            raise ConfigError("a fine-tuning schedule or epochs were given without data; pass data=... to fine-tune")
        prune(state)
        share(state)
        return finish(state, output_path, preprocess, input_path)
    from onnx_dc.train.schedule import run_schedule
    from onnx_dc.train.settings import resolve_train_settings

    cfg = as_config(config)
    seed = {"seed": overrides["seed"]} if overrides.get("seed") is not None else None
    settings = resolve_train_settings(cfg.train, seed, schedule, {"epochs": epochs} if epochs is not None else None,
                                      source=f"{cfg.source}: train")
    trained = run_schedule(state, data, settings, preprocess, echo=echo)
    return finish(state, output_path, trained.preprocess, input_path)


def _compress_calibrated(model, state, cfg, calib, data, preprocess, output_path, input_path, schedule, epochs,
                         echo, overrides) -> CompressResult:
    """compress() with calibration samples: data-aware passes (or the labeled schedule), then fidelity."""
    from onnx_dc import calibrate

    run = calibrate.start_calib(state, calib, cfg.calib, data, preprocess)
    original = None
    if data is None:
        if schedule is not None and not epochs:
            raise ConfigError("a fine-tuning schedule was given without epochs; pass epochs=N to fine-tune")
        full, validation = run, None
        if epochs:  # the samples that will judge fine-tuning take no part in the data-aware passes either
            from onnx_dc.train.distill import validation_split

            train_part, validation = validation_split(run.data.calib)
            if validation is not train_part:
                run = dataclasses.replace(run, data=dataclasses.replace(run.data, calib=train_part))
        run = calibrate.run_calibrated(state, run, echo)
        if epochs:
            original = load_model(model)  # the teacher, read once for fine-tuning and the fidelity below
            tuned = _distill(model, original, state, run, cfg, schedule, epochs, echo, overrides.get("seed"), validation)
            if tuned.settings.start == "both" and tuned.skipped is None and run is not full:
                state, tuned = _better_start(model, original, state, tuned, run.data.calib, validation, cfg, overrides,
                                             echo)
            if run is not full and not tuned.changed:
                # Nothing of fine-tuning stayed: the result is the data-aware one, fitted to every sample.
                if echo is not None:
                    echo(f"fine-tuning kept nothing; the data-aware passes run again on all "
                         f"{len(full.data.calib)} calibration samples")
                state = prepare(model, cfg, **overrides)
                run = calibrate.run_calibrated(state, full, echo)
        out = finish(state, output_path, preprocess, input_path)
    else:
        from onnx_dc.train.schedule import run_schedule
        from onnx_dc.train.settings import resolve_train_settings

        seed = {"seed": overrides["seed"]} if overrides.get("seed") is not None else None
        settings = resolve_train_settings(cfg.train, seed, schedule, {"epochs": epochs} if epochs is not None else None,
                                          source=f"{cfg.source}: train")
        trained = run_schedule(state, data, settings, preprocess, echo=echo)
        out = finish(state, output_path, trained.preprocess, input_path)
    if original is None:  # read after lowering, so that a large model is not held twice while it is written
        original = load_model(model)
    fid = calibrate.fidelity_of(original, out.model, state, run)
    return dataclasses.replace(out, fidelity=fid, calib=run)


def _better_start(model: Any, original: onnx.ModelProto, state: CompressionState, tuned: Any, samples: Any,
                  validation: Any, cfg: Config, overrides: Mapping[str, Any],
                  echo: Callable[[str], None] | None) -> tuple[CompressionState, Any]:
    """``train: start: both``: fine-tune from magnitude pruning and plain k-means too; the smaller validation error wins."""
    from onnx_dc.train.distill import distill, output_error, run_teacher

    outputs = [t.output for t in tuned.targets]
    teacher = run_teacher(original, validation, outputs, tuned.settings.threads)
    other = prepare(model, cfg, **overrides)
    name = _model_name(model)
    alternative = distill(other, samples, tuned.settings, name=name, teacher=original, echo=echo)
    errors = [output_error(s.dense_model(), validation, teacher, tuned.settings.threads) for s in (state, other)]
    if echo is not None:
        echo(f"start: both: error on {len(validation)} validation sample(s) {errors[0]:.4g} from the data-aware "
             f"result, {errors[1]:.4g} from magnitude pruning; keeping the {'latter' if errors[1] < errors[0] else 'former'}")
    return (other, alternative) if errors[1] < errors[0] else (state, tuned)


def _distill(model: Any, original: onnx.ModelProto, state: CompressionState, run: Any, cfg: Config,
             schedule: Mapping[str, Any] | None,
             epochs: int, echo: Callable[[str], None] | None, seed: int | None, validation: Any) -> Any:
    """Label-free fine-tuning of the data-aware result on the calibration part of the samples, judged on ``validation``."""
    from onnx_dc.train.distill import DISTILL_DEFAULTS, after_data_aware, distill
    from onnx_dc.train.settings import resolve_train_settings

    settings = resolve_train_settings(DISTILL_DEFAULTS, cfg.train, {"seed": seed} if seed is not None else None,
                                      schedule, {"epochs": epochs}, source=f"{cfg.source}: train")
    name = _model_name(model)
    from onnx_dc import calibrate

    return distill(state, run.data.calib, settings, name=name, echo=echo, validation=validation,
                   **after_data_aware(original, lambda s: calibrate.share_again(s, run)))


def finetune(
    model: str | os.PathLike | onnx.ModelProto | bytes,
    output_path: str | os.PathLike | None,
    data: DataSpec | str,
    *,
    schedule: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    preprocess: Preprocess | None = None,
    echo: Callable[[str], None] | None = None,
) -> CompressResult:
    """Fine-tune the codebooks and biases of a compressed ``*.dc.onnx`` model on data.

    Codes and pruned positions stay as they are; the result has the same layout, with new
    codebook values (and biases).

    Args:
        model: a ``*.dc.onnx`` path (never overwritten), bytes or ModelProto.
        output_path: where to write the fine-tuned model; None to only return it.
        data: training data spec (its ``train`` split is used).
        schedule: settings in the ``train:`` layout; only ``codebook``, the stage shorthands,
            ``batch_size``, ``seed`` and ``threads`` matter here.
        epochs: epochs of the codebook stage (over ``schedule``).
        preprocess: input preprocessing (default: the model's metadata, else the dataset's scale).
        echo: where to print progress (None: silent).

    Raises:
        TrainingUnavailable: when onnxruntime-training cannot be imported.
    """
    from onnx_dc.runtime.session import load_any
    from onnx_dc.train.ort_training import training_modules
    from onnx_dc.train.restore import state_from_dc
    from onnx_dc.train.schedule import finetune_codebooks
    from onnx_dc.train.settings import resolve_train_settings

    training_modules()
    if output_path is not None and isinstance(model, (str, os.PathLike)) and same_file(model, output_path):
        raise ModelError(f"{output_path}: refusing to overwrite the input model; choose another output path")
    name = _model_name(model)
    state = state_from_dc(load_any(model), name)
    settings = resolve_train_settings(schedule, {"epochs": epochs} if epochs is not None else None)
    trained = finetune_codebooks(state, data, settings, preprocess, echo=echo)
    input_path = model if isinstance(model, (str, os.PathLike)) else None
    return finish(state, output_path, trained.preprocess, input_path)


def report(model: onnx.ModelProto | str | os.PathLike, baseline: str | os.PathLike | None = None) -> Report:
    """Per-layer report of a ``*.dc.onnx`` or ``.dcz`` file (``baseline``: the original model, for its size)."""
    from onnx_dc.formats import dcz

    name = _model_name(model)
    if baseline is not None and not Path(baseline).is_file():
        raise ModelError(f"{baseline}: no such file (the --baseline model)")
    baseline_bytes = Path(baseline).stat().st_size if baseline is not None else None
    # Read the file once: a .dcz is both unpacked (for the graph) and measured (P+Q+H) from these bytes.
    if isinstance(model, onnx.ModelProto):
        raw = serialize(model)
    elif Path(model).is_file():
        raw = dcz.read_file(model)
    else:
        raise ModelError(f"{model}: no such file")
    streams = None
    data = raw
    if dcz.is_dcz(raw):
        try:
            streams = dcz.stream_report(raw)
            data = dcz.unpack_bytes(raw)
        except FormatError as err:
            raise FormatError(f"{name}: {err}") from None
    proto = load_model(data, name)
    file_bytes = len(raw)
    if not any(n.domain == layout.DOMAIN for n in proto.graph.node):
        raise ModelError(f"{name}: not a compressed model (no onnx_dc decoders); run onnx-dc compress on it first")
    rep = make_report(proto, file_bytes=file_bytes, baseline_bytes=baseline_bytes, streams=streams)
    if baseline is not None:
        _check_baseline(rep, baseline, name)
    return rep


def _check_baseline(rep: Report, baseline: str | os.PathLike, name: str) -> None:
    """Refuse a baseline that is not the model ``rep`` was compressed from (its weights by name and shape)."""
    base = normalize(load_model(baseline), str(baseline))
    shapes = {t.name: tuple(t.dims) for t in base.graph.initializer}
    for row in rep.layers:
        if shapes.get(row.weight) != tuple(row.shape):
            found = "has no such weight" if row.weight not in shapes else f"has {'x'.join(map(str, shapes[row.weight]))}"
            raise ModelError(
                f"--baseline {baseline}: not the model {name} was compressed from (its weight {row.weight!r}, "
                f"{'x'.join(map(str, row.shape))}: the baseline {found}); give the original model"
            )


def pack(model_path: str | os.PathLike, output_path: str | os.PathLike, codec: str = "auto") -> int:
    """Entropy-code a ``*.dc.onnx`` into a ``.dcz`` file (docs/FORMAT.md); returns its size in bytes."""
    from onnx_dc.formats import dcz

    dcz.pack(model_path, output_path, codec=codec)  # refuses to overwrite its input
    return Path(output_path).stat().st_size


def unpack(packed_path: str | os.PathLike, output_path: str | os.PathLike) -> int:
    """Restore the ``*.dc.onnx`` a ``.dcz`` was packed from, byte for byte; returns its size in bytes."""
    from onnx_dc.formats import dcz

    dcz.unpack(packed_path, output_path)  # refuses to overwrite its input
    return Path(output_path).stat().st_size


def export_dense(model: str | os.PathLike | onnx.ModelProto | bytes,
                 output_path: str | os.PathLike | None = None) -> onnx.ModelProto:
    """The plain float model of a ``*.dc.onnx`` or ``.dcz``: weights rebuilt, decoders and onnx_dc opset removed.

    For runtimes that do not fold the decoder functions at load time. Other metadata
    (preprocessing) is kept; the compression records are dropped.

    Raises:
        ModelError: when the model holds no onnx_dc decoder, or the output would overwrite the input.
    """
    from onnx_dc.runtime.session import load_any

    name = _model_name(model)
    if output_path is not None and isinstance(model, (str, os.PathLike)) and same_file(model, output_path):
        raise ModelError(f"{output_path}: refusing to overwrite the input model; choose another output path")
    proto = load_any(model)
    if not layout.decoder_nodes(proto.graph):
        raise ModelError(f"{name}: not a compressed model (no onnx_dc decoders); it is already plain ONNX")
    dense, _ = layout.strip_decoders(proto)
    records = (layout.META_VERSION, layout.META_SKIPPED, layout.META_SOURCE_BYTES, layout.META_SOURCE_WEIGHT_BYTES)
    kept = [(p.key, p.value) for p in dense.metadata_props if p.key not in records]
    del dense.metadata_props[:]
    for key, value in kept:
        dense.metadata_props.add(key=key, value=value)
    if output_path is not None:
        save_model(dense, output_path)
    return dense


def import_caffe(
    prototxt: str | os.PathLike,
    caffemodel: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    config_out: str | os.PathLike | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Convert a Caffe net (prototxt + caffemodel) to ONNX; its Cmp* fields become a config.

    Returns:
        The ONNX model and the config mapping (docs/CONFIG.md layout).
    """
    from onnx_dc.argcheck import output_file
    from onnx_dc.importers.caffe import import_caffe as _import, write_config_yaml

    for path, flag in ((output_path, "output_path"), (config_out, "config_out")):
        if path is not None:  # both checked before either is written
            output_file(path, flag, inputs=[prototxt, caffemodel])
    model, config = _import(prototxt, caffemodel, input_shape=input_shape)
    if output_path is not None:
        save_model(model, output_path)
    if config_out is not None:
        write_config_yaml(config, config_out)
    return model, config
