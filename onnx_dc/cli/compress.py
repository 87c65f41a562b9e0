"""The commands that write a model: ``compress`` (also ``--target-drop`` / ``--target-ratio``: settings from a
sensitivity sweep), ``finetune`` and ``import-caffe``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os

from onnx_dc import progress
from onnx_dc.cli import argcheck
from onnx_dc.cli.args import (SWEEP_FLAGS, add_calib_args, add_preprocess_args, add_settings_args, add_sweep_args,
                              add_training_args, calib_from, check_data_args, check_sweep_args, check_training_args,
                              grid_from, metric_from, preprocess_flags, preprocess_from, print_json, runner_from, say,
                              settings_from, training_from)
from onnx_dc.errors import ArgumentError, ConfigError

log = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``compress``, ``finetune`` and ``import-caffe`` subcommands."""
    p = sub.add_parser("compress", help="prune and share weights: model.onnx -> model.dc.onnx")
    p.add_argument("model", nargs="?", help="input .onnx (never modified)")
    p.add_argument("-o", "--output", required=True, help="output .dc.onnx (written atomically)")
    p.add_argument("--caffe", nargs=2, metavar=("PROTOTXT", "CAFFEMODEL"),
                   help="compress a Caffe net; its CmpConvolution / CmpInnerProduct fields become the config, "
                        "and the settings flags apply to its plain Convolution / InnerProduct layers")
    p.add_argument("--input-shape", help="with --caffe: per-sample input shape C,H,W (no batch), e.g. 1,28,28")
    p.add_argument("--config", help="YAML config with per-node settings (docs/CONFIG.md)")
    add_settings_args(p)
    p.add_argument("--data", help="fine-tune on this data while compressing: mnist[:DIR], fashion-mnist[:DIR] "
                                        "(no DIR: fetched once into the cache), npz:FILE, digits")
    add_training_args(p, "retrain")
    add_preprocess_args(p)
    add_calib_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_target_args(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("finetune", help="train the codebooks and biases of a .dc.onnx on data")
    p.add_argument("model", help="input .dc.onnx or .dcz (never modified)")
    p.add_argument("-o", "--output", required=True, help="output .dc.onnx (written atomically)")
    p.add_argument("--data", required=True, help="mnist[:DIR], fashion-mnist[:DIR] (no DIR: fetched once into the "
                                                 "cache), npz:FILE or digits")
    add_training_args(p, "codebook")
    p.add_argument("--seed", type=int, help="shuffling seed (default 0)")
    add_preprocess_args(p, calib=False)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("import-caffe", help="convert a Caffe prototxt + caffemodel to ONNX")
    p.add_argument("prototxt", help="the net's layers (.prototxt, text)")
    p.add_argument("caffemodel", help="its trained weights (.caffemodel, binary)")
    p.add_argument("-o", "--output", required=True, help="output .onnx")
    p.add_argument("--config-out", help="write the Cmp* layer settings as a YAML config")
    p.add_argument("--input-shape", help="per-sample input shape C,H,W when the net gives none (no batch), e.g. 1,28,28")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_import_caffe)


def cmd_compress(args: argparse.Namespace) -> int:
    import onnx_dc

    if compress_target(args) is not None:  # --target-drop / --target-ratio: settings from a sensitivity sweep
        return 0
    config = args.config
    _check_compress_args(args)
    if args.caffe:
        if args.model:
            raise ConfigError("give either a model file or --caffe PROTOTXT CAFFEMODEL, not both")
        shape = argcheck.shape(args.input_shape)
        model_arg, caffe_config = onnx_dc.import_caffe(*args.caffe, input_shape=shape)
        if config is None and settings_from(args):
            caffe_config = _unskip_plain_layers(caffe_config)
        config = config or caffe_config  # the Cmp* fields of the prototxt, unless a config file is given
    elif args.model:
        model_arg = args.model
    else:
        raise ConfigError("give a model file to compress (or --caffe PROTOTXT CAFFEMODEL)")
    prep = preprocess_from(args, _metadata_only(args, model_arg))
    calib = calib_from(args)
    result = onnx_dc.compress(model_arg, args.output, config, preprocess=prep, calib=calib, **settings_from(args),
                              **training_from(args, "retrain"))
    _print_compressed(args, result)
    return 0


def _metadata_only(args: argparse.Namespace, model):
    """The model, for its stored preprocessing, only when a preprocessing flag is given.

    Read without checking and without external data: compress reads and checks the model
    itself, once; a file it cannot read is reported there.
    """
    import onnx
    import onnx.parser
    from google.protobuf import json_format, text_format
    from google.protobuf.message import DecodeError

    if isinstance(model, onnx.ModelProto) or not preprocess_flags(args):
        return model if isinstance(model, onnx.ModelProto) else None
    # unreadable, or not ONNX (binary, or the text formats onnx picks by extension): compress names the problem
    not_onnx = (OSError, DecodeError, UnicodeDecodeError, text_format.ParseError, json_format.ParseError,
                onnx.parser.ParseError)
    try:
        return onnx.load_model(model, load_external_data=False)
    except not_onnx:
        return None


def _print_compressed(args: argparse.Namespace, result) -> None:
    """The report, the stages that ran (with what each did under --verbose), then the fidelity table (or the
    line saying accuracy was not checked)."""
    from onnx_dc.calibrate import NOT_CHECKED, NOT_HELD_OUT

    unchecked = result.fidelity is None and args.data is None
    note = NOT_CHECKED.format(out=args.output, model=args.model or "MODEL.onnx") if unchecked else None
    if unchecked and result.calib is not None:  # samples were given, but too few to hold any out
        note = NOT_HELD_OUT.format(n=len(result.calib.data.calib), out=args.output, model=args.model or "MODEL.onnx")
    if args.json:
        out = json.loads(result.report.to_json())
        out["fidelity"] = result.fidelity.to_dict() if result.fidelity is not None else None
        out["data_aware"] = result.calib.to_dict() if result.calib is not None else None
        out["note"] = note
        out["stages"] = [{"name": s.name, "did": s.did} for s in result.stages]
        print(json.dumps(out, indent=2))
    else:
        say(result.report.to_table(verbose=progress.verbose()))
        if progress.verbose():
            say("stages:\n" + "\n".join(f"  {s}" for s in result.stages))
        else:
            say("stages: " + " -> ".join(s.name for s in result.stages))
        if result.calib is not None:
            ran = result.calib.to_dict().get("passes")
            if result.calib.superseded:
                say(f"data-aware passes: not in the result ({result.calib.superseded})")
            else:
                say(f"data-aware passes: {', '.join(ran) if ran else 'none'} ({result.calib.data.summary()})")
        if result.fidelity is not None:
            say(result.fidelity.to_table())
        extra = f" (over 2 GB: its large tensors are in {result.external_data} beside it)" if result.external_data else ""
        say(f"wrote {args.output}{extra}")
    if note:
        log.warning(note)


def _check_compress_args(args: argparse.Namespace) -> None:
    """Every check of compress's arguments that needs no model."""
    if args.caffe:
        for path in args.caffe:
            argcheck.input_file(path, "--caffe")
        argcheck.shape(args.input_shape)
    elif args.input_shape is not None:
        raise ArgumentError("--input-shape applies only with --caffe (an ONNX model states its input shape)")
    if args.model:
        argcheck.unpacked_model(args.model)
    argcheck.output_file(args.output, inputs=[args.model, *(args.caffe or ())])
    if args.config is not None:
        argcheck.config_file(args.config)
    check_training_args(args)


def _unskip_plain_layers(caffe_config: dict) -> dict:
    """The imported config without its ``skip: true`` entries for plain Convolution / InnerProduct layers.

    Caffe never compresses a plain layer, so the importer skips them; a user who gives
    --sparse-ratio / --class-num on the command line asks for exactly that, for every layer
    whose prototxt says nothing (Cmp* layers keep their own fields).
    """
    nodes = [n for n in caffe_config.get("nodes", []) if not n.get("skip")]
    return {**caffe_config, "nodes": nodes}


def cmd_finetune(args: argparse.Namespace) -> int:
    import onnx_dc
    from onnx_dc.formats.models import load_model

    argcheck.input_file(args.model)
    argcheck.output_file(args.output, inputs=[args.model])
    if args.epochs is not None and args.epochs < 1:  # compress allows 0 (no training); here it would copy the input
        raise ArgumentError(f"--epochs {args.epochs}: finetune trains, epochs must be >= 1")
    check_training_args(args)
    # without preprocessing flags the model is read once, by the API
    prep = preprocess_from(args, load_model(args.model) if preprocess_flags(args) else None)
    kwargs = training_from(args, "codebook")
    result = onnx_dc.finetune(args.model, args.output, kwargs.pop("data"), preprocess=prep, **kwargs)
    if args.json:
        print(result.report.to_json())
    else:
        say(result.report.to_table(verbose=progress.verbose()))
        say(f"wrote {args.output}")
    return 0


def cmd_import_caffe(args: argparse.Namespace) -> int:
    import onnx_dc

    for path in (args.prototxt, args.caffemodel):
        argcheck.input_file(path, "import-caffe")
    argcheck.output_file(args.output, inputs=[args.prototxt, args.caffemodel])
    if args.config_out is not None:
        argcheck.output_file(args.config_out, "--config-out", inputs=[args.prototxt, args.caffemodel, args.output])
    shape = argcheck.shape(args.input_shape)
    model, config = onnx_dc.import_caffe(args.prototxt, args.caffemodel, args.output, args.config_out,
                                         input_shape=shape)
    if args.json:
        print_json({"output": args.output, "bytes": os.path.getsize(args.output), "config_out": args.config_out,
                     "inputs": {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
                                for i in model.graph.input},
                     "config_nodes": config["nodes"]})
    else:
        say(f"wrote {args.output}" + (f" and {args.config_out}" if args.config_out else ""))
    return 0


# ----------------------------------------------------------------------------- --target-drop

def add_target_args(p: argparse.ArgumentParser) -> None:
    """compress's --target-drop, --config-out and the sweep flags."""
    g = p.add_argument_group("settings from a target (instead of --config / --sparse-ratio / --class-num)")
    g.add_argument("--target-drop", type=float, metavar="D",
                   help="per-layer sparse_ratio and class_num with the smallest layers whose accuracy on --data "
                        "(or fidelity on --calib held-out samples, in percent) drops by at most D points (a sensitivity sweep, then a knapsack, measured; no retraining)")
    g.add_argument("--target-ratio", type=float, metavar="R",
                   help="per-layer sparse_ratio and class_num (or dense) with the best accuracy on --data (or fidelity "
                        "on --calib held-out samples) whose .dcz is at least R times smaller than the model file (a "
                        "sensitivity sweep, then a knapsack over the layers' bytes, packed and measured)")
    g.add_argument("--config-out", help="with --target-drop / --target-ratio: write the chosen per-layer settings as YAML")
    g.add_argument("--sensitivity", metavar="JSON", help="with --target-drop / --target-ratio: use this sweep "
                   "(onnx-dc sensitivity --json, same model and data) instead of running one")
    add_sweep_args(p, "the sensitivity sweep of --target-drop / --target-ratio")


def compress_target(args: argparse.Namespace) -> int | None:
    """Run ``compress --target-drop`` or ``--target-ratio``; None when not asked for (then no sweep flag may be given)."""
    if args.target_drop is None and args.target_ratio is None:
        given = [f"--{f.replace('_', '-')}" for f in SWEEP_FLAGS + ("config_out",) if getattr(args, f) is not None]
        if given:
            raise ArgumentError(f"{', '.join(given)}: only with --target-drop D or --target-ratio R")
        return None
    _check_target_args(args)
    from onnx_dc.analysis.sensitivity import run_sensitivity
    from onnx_dc.analysis.target import compress_for_ratio, compress_for_target

    metric = metric_from(args, args.model)
    if args.sensitivity is not None:
        sens = _matching_sweep(args.sensitivity, args.model, metric)
    else:
        sens = run_sensitivity(args.model, metric, runner=runner_from(args), calib=getattr(metric, "calib", None),
                               **grid_from(args))
    if args.target_ratio is not None:
        result, chosen = compress_for_ratio(args.model, args.output, metric, args.target_ratio, sens,
                                            getattr(metric, "preprocess", None), getattr(metric, "calib", None))
    else:
        result, chosen = compress_for_target(args.model, args.output, metric, args.target_drop, sens,
                                             getattr(metric, "preprocess", None), getattr(metric, "calib", None))
    if args.config_out is not None:
        from onnx_dc.importers.caffe import write_config_yaml

        write_config_yaml(chosen.chosen.config, args.config_out)
    if args.json:
        print(json.dumps(json.loads(result.report.to_json()) | {"target": chosen.to_dict()}, indent=2))
    elif progress.level() > progress.Level.QUIET:
        print(result.report.to_table(verbose=progress.verbose()))
        print(("sweep read from " + args.sensitivity + ": " if args.sensitivity is not None else "sweep: ")
              + sens.evaluations_line())
        print(chosen.summary())
        last = chosen.chosen
        if args.target_ratio is not None:
            print(f"chosen: {metric.describe()} {sens.baseline - last.measured:.2f} (drop {last.measured:.3f}), "
                  f".dcz {last.packed_bytes} B, {last.ratio:.2f}x smaller (>= {args.target_ratio:g})")
        else:
            print(f"chosen: {metric.describe()} {sens.baseline - last.measured:.2f} (drop {last.measured:.3f} <= "
                  f"{args.target_drop:g}), layers {last.layer_bytes} B")
        print(f"wrote {args.output}" + (f" and {args.config_out}" if args.config_out else ""))
    return 0


def _matching_sweep(path: str, model: str, metric):
    """A saved sweep, refused unless it was measured on the same layers with the same evaluation function."""
    from onnx_dc.api import prepare
    from onnx_dc.analysis.curves import load_sensitivity

    sens = load_sensitivity(path)
    weights = [e.site.name for e in prepare(model).plan.entries]
    if [info.weight for info in sens.layers] != weights or sens.metric != metric.describe():
        raise ArgumentError(f"--sensitivity {path}: measured on other layers or data ({sens.metric}) than "
                            f"{model} with {metric.describe()}; run the sweep again (drop --sensitivity)")
    data_aware = bool(set(sens.passes) - {"prune", "share"})
    if data_aware != (getattr(metric, "calib", None) is not None):
        raise ArgumentError(f"--sensitivity {path}: measured with the passes {', '.join(sens.passes) or 'none'}, "
                            f"but this run uses the {'data-aware' if not data_aware else 'plain'} ones; run the "
                            "sweep again (drop --sensitivity)")
    return sens


def _check_target_args(args: argparse.Namespace) -> None:
    if args.target_drop is not None and args.target_ratio is not None:
        raise ArgumentError("give --target-drop D or --target-ratio R, not both")
    if args.target_drop is not None:
        argcheck.drop(args.target_drop, "--target-drop")
    elif not (args.target_ratio > 1.0 and math.isfinite(args.target_ratio)):
        raise ArgumentError(f"--target-ratio must be a number above 1 (times smaller than the model file), "
                            f"got {args.target_ratio:g}")
    flag = "--target-drop" if args.target_drop is not None else "--target-ratio"
    clash = [flag for flag, value in (("--config", args.config), ("--caffe", args.caffe),
                                      ("--sparse-ratio", args.sparse_ratio), ("--class-num", args.class_num),
                                      ("--prune-quality", args.prune_quality), ("--epochs", args.epochs))
             if value is not None]
    if clash:
        raise ArgumentError(f"{flag} chooses the settings itself; drop {', '.join(clash)} "
                            "(fine-tune the result afterwards with onnx-dc finetune)")
    if not args.model:
        raise ArgumentError("give a model file to compress")
    argcheck.unpacked_model(args.model)
    argcheck.output_file(args.output, inputs=[args.model])
    if args.config_out is not None:
        argcheck.output_file(args.config_out, "--config-out", inputs=[args.model, args.output])
    check_data_args(args)
    check_sweep_args(args)
    if args.sensitivity is not None:
        argcheck.input_file(args.sensitivity, "--sensitivity")
