"""The public Python API: thin orchestration over the stages of :mod:`onnx_dc.pipeline` and the formats."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import onnx

from onnx_dc import pipeline, progress
from onnx_dc.config import Config, as_config
from onnx_dc.data.datasets import DataSpec, Preprocess
from onnx_dc.errors import FormatError, ModelError
from onnx_dc.graph import layout
from onnx_dc.graph.io import check_output, refuse_overwrite, serialize
from onnx_dc.formats.models import load_model
from onnx_dc.graph.io import write_model
from onnx_dc.graph.normalize import normalize
from onnx_dc.passes.state import CompressionState
from onnx_dc.pipeline import CompressResult, model_name, model_path
from onnx_dc.report import Report, make_report


def _config(config: Config | Mapping[str, Any] | str | Path | None, overrides: Mapping[str, Any]) -> Config:
    """The config, parsed once, with the global settings of ``overrides`` over its defaults."""
    cfg = as_config(config)
    given = {k: v for k, v in overrides.items() if v is not None}
    return cfg.with_overrides(given) if given else cfg


def prepare(
    model: onnx.ModelProto | str | os.PathLike | bytes,
    config: Config | Mapping[str, Any] | str | Path | None = None,
    **overrides: Any,
) -> CompressionState:
    """Load, normalize, find weights and resolve the plan; no tensor is changed yet.

    ``overrides`` are global settings (``sparse_ratio=0.9``, ``class_num=32``, ...)
    applied over the config's defaults, as the CLI flags are.
    """
    return pipeline.prepared(pipeline.Context(model, _config(config, overrides), overrides))


def finish(
    state: CompressionState,
    output_path: str | os.PathLike | None = None,
    preprocess: Preprocess | None = None,
    input_path: str | os.PathLike | None = None,
) -> CompressResult:
    """Lower the state to ``*.dc.onnx``, record preprocessing, and write it atomically if asked."""
    ctx = pipeline.Context(input_path, Config(), output_path=output_path, preprocess=preprocess)
    state, ran = pipeline.run([pipeline.LOWER, pipeline.WRITE], ctx, state)
    return pipeline.result(state, ctx, ran)


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

    The work is a declared list of stages (:mod:`onnx_dc.pipeline`) chosen from these arguments;
    the result lists the stages that ran.

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
        echo: a callback that receives the call's log lines (INFO and above: fine-tuning's progress, warnings)
            as they are logged; they go to the ``onnx_dc`` logger either way (None: there only).
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
    if output_path is not None:
        refuse_overwrite(output_path, [model_path(model)])
    ctx = pipeline.Context(model, _config(config, overrides), overrides, output_path=output_path,
                           preprocess=preprocess, data=data, calib=calib, schedule=schedule, epochs=epochs)
    with progress.echoed(echo):
        state, ran = pipeline.run(pipeline.stages_for(ctx), ctx)
    return pipeline.result(state, ctx, ran)


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
        echo: a callback that receives the call's log lines (INFO and above) as they are logged; they go to
            the ``onnx_dc`` logger either way (None: there only).

    Raises:
        TrainingUnavailable: when onnxruntime-training cannot be imported.
    """
    from onnx_dc.formats.models import load_model
    from onnx_dc.train.ort_training import training_modules
    from onnx_dc.train.restore import state_from_dc
    from onnx_dc.train.schedule import finetune_codebooks
    from onnx_dc.train.settings import resolve_train_settings

    training_modules()
    if output_path is not None:
        refuse_overwrite(output_path, [model_path(model)])
    name = model_name(model)
    state = state_from_dc(load_model(model), name)
    settings = resolve_train_settings(schedule, {"epochs": epochs} if epochs is not None else None)
    with progress.echoed(echo):
        trained = finetune_codebooks(state, data, settings, preprocess)
    return finish(state, output_path, trained.preprocess, model_path(model))


def report(model: onnx.ModelProto | str | os.PathLike, baseline: str | os.PathLike | None = None) -> Report:
    """Per-layer report of a ``*.dc.onnx`` or ``.dcz`` file (``baseline``: the original model, for its size)."""
    from onnx_dc.formats import dcz

    name = model_name(model)
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
    rep = make_report(proto, file_bytes=file_bytes, baseline_bytes=baseline_bytes, streams=streams, name=name)
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
    from onnx_dc.formats.models import load_model

    name = model_name(model)
    if output_path is not None:
        refuse_overwrite(output_path, [model_path(model)])
    proto = load_model(model)
    if not layout.decoder_nodes(proto.graph):
        raise ModelError(f"{name}: not a compressed model (no onnx_dc decoders); it is already plain ONNX")
    dense, _ = layout.strip_decoders(proto)
    records = (layout.META_VERSION, layout.META_SKIPPED, layout.META_SOURCE_BYTES, layout.META_SOURCE_WEIGHT_BYTES)
    kept = [(p.key, p.value) for p in dense.metadata_props if p.key not in records]
    del dense.metadata_props[:]
    for key, value in kept:
        dense.metadata_props.add(key=key, value=value)
    if output_path is not None:
        write_model(dense, output_path)
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
    from onnx_dc.importers.caffe import import_caffe as _import, write_config_yaml

    for path, flag in ((output_path, "output_path"), (config_out, "config_out")):
        if path is not None:  # both checked before either is written
            check_output(path, flag, [prototxt, caffemodel])
    model, config = _import(prototxt, caffemodel, input_shape=input_shape)
    if output_path is not None:
        write_model(model, output_path)
    if config_out is not None:
        write_config_yaml(config, config_out)
    return model, config
