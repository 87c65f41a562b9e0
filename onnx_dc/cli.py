"""The ``onnx-dc`` command line: thin argument parsing over the Python API.

User errors (:class:`onnx_dc.errors.OnnxDcError`) become one line on stderr and exit
code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from onnx_dc import argcheck, progress
from onnx_dc.errors import ArgumentError, ConfigError, OnnxDcError

EXIT_USER_ERROR = 2


def _add_preprocess_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input preprocessing: x = (pixel * scale - mean) / std")
    g.add_argument("--scale", type=float, help="pixel multiplier (default: the model's metadata, else 1/255 for IDX, 1/16 for digits)")
    g.add_argument("--mean", type=_number_or_list, help="subtracted after scaling (default 0); per channel with --calib: 0.485,0.456,0.406")
    g.add_argument("--std", type=_number_or_list, help="divided by after the mean (default 1); per channel with --calib: 0.229,0.224,0.225")
    g.add_argument("--layout", choices=("nchw", "nhwc"), help="image layout of the model input (default nchw)")


def _number_or_list(text: str):
    """One number, or comma-separated numbers (per-channel --mean / --std)."""
    parts = [p for p in text.split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number or numbers like 0.485,0.456,0.406") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number or numbers like 0.485,0.456,0.406")
    return values[0] if len(values) == 1 else values


def _add_calib_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration samples (unlabeled; the preprocessing flags apply to them too)")
    g.add_argument("--calib", help="images:DIR, npz:FILE (one array per input name), mnist:DIR, fashion-mnist:DIR, digits")
    g.add_argument("--size", help="resize images to H,W")
    g.add_argument("--channels", choices=("rgb", "bgr", "gray"), help="image channel order (default: from the model)")
    g.add_argument("--calib-limit", type=int, help="calibration samples at most (default: as many as 16 MB of model input hold, "
                                                        "256-1024; seeded choice)")


def _calib_from(args: argparse.Namespace):
    """The CalibSpec of the flags, or None without --calib."""
    if getattr(args, "calib", None) is None:
        if any(getattr(args, k, None) is not None for k in ("size", "channels", "calib_limit")):
            raise ConfigError("--size, --channels and --calib-limit need --calib")
        return None
    from onnx_dc.data.calib import parse_calib_spec

    return parse_calib_spec(args.calib, size=args.size, channels=args.channels, scale=args.scale, mean=args.mean,
                            std=args.std, layout=args.layout, limit=args.calib_limit, seed=getattr(args, "seed", None))


def _preprocess_from(args: argparse.Namespace, model=None):
    """Preprocess from flags; flags not given fall back to the model's stored values."""
    from onnx_dc.data.datasets import Preprocess
    from onnx_dc.runtime.evaluate import stored_preprocess

    given = {k: getattr(args, k) for k in ("scale", "mean", "std", "layout") if getattr(args, k, None) is not None}
    if not given:
        return None
    if any(isinstance(v, tuple) for v in given.values()):
        if getattr(args, "data", None) is not None:
            raise ConfigError("per-channel --mean / --std apply to --calib samples only, not to --data")
        return None
    base = stored_preprocess(model) if model is not None else None
    if base is None and "scale" not in given:
        # A flag changes one field; the others are the model's, or the data's natural ones (pixels / 255).
        if getattr(args, "data", None) is None:
            if getattr(args, "calib", None) is not None:
                return None  # the flags describe the --calib samples, whose spec has its own natural scale
            flags = ", ".join(f"--{k}" for k in given)
            raise ArgumentError(f"{flags} without --scale: the model stores no preprocessing and no --data says "
                                "the pixel scale; add --scale (e.g. 0.00392157 for pixels / 255)")
        base = Preprocess(scale=argcheck.data_spec(args.data).natural_scale)
    return Preprocess(**{**vars(base or Preprocess()), **given})


def _add_settings_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("global settings (override the config's defaults)")
    g.add_argument("--sparse-ratio", type=float, help="fraction of weights pruned by magnitude, in [0, 1)")
    g.add_argument("--prune-quality", type=float, help="prune |w| <= quality x std(W) instead of a ratio")
    g.add_argument("--class-num", type=int, help="shared values per layer (k-means clusters), 2..256")
    g.add_argument("--no-quantize", action="store_true", help="prune only, keep float32 values (quantize_term: false)")
    g.add_argument("--centroid-init", choices=("linear", "density", "random", "kmeans++"))
    g.add_argument("--index-bits", type=int, help="relative index width 1..16 (default: the smallest file)")
    g.add_argument("--form", choices=("auto", "sparse", "dense"))
    g.add_argument("--seed", type=int)


def _settings_from(args: argparse.Namespace) -> dict:
    out = {
        "sparse_ratio": args.sparse_ratio, "prune_quality": args.prune_quality, "class_num": args.class_num,
        "centroid_init": args.centroid_init, "index_bits": args.index_bits, "form": args.form, "seed": args.seed,
    }
    if args.no_quantize:
        out["quantize_term"] = False
    return {k: v for k, v in out.items() if v is not None}


def _add_training_args(p: argparse.ArgumentParser, lr_stage: str) -> None:
    title = "fine-tuning (onnxruntime-training" + ("; over the config's train: section)" if lr_stage != "codebook" else ")")
    g = p.add_argument_group(title)
    g.add_argument("--epochs", type=int, help="epochs of " + ("the codebook stage" if lr_stage == "codebook"
                                                           else "every training stage"))
    g.add_argument("--batch-size", type=int, help="samples per step (default 64)")
    g.add_argument("--lr", type=float, help=f"learning rate of the {lr_stage} stage")
    if lr_stage != "codebook":
        g.add_argument("--codebook-lr", type=float, help="learning rate of the codebook stage")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), help="optimizer of every stage")


def _training_from(args: argparse.Namespace, lr_stage: str) -> dict:
    """Keyword arguments of compress / finetune for the training flags (none without --data)."""
    schedule: dict = {}
    if args.batch_size is not None:
        schedule["batch_size"] = args.batch_size
    if args.optimizer is not None:
        schedule["optimizer"] = args.optimizer
    if args.lr is not None:
        schedule.setdefault(lr_stage, {})["lr"] = args.lr
    if getattr(args, "codebook_lr", None) is not None:
        schedule.setdefault("codebook", {})["lr"] = args.codebook_lr
    if lr_stage == "codebook" and args.seed is not None:
        schedule["seed"] = args.seed
    if args.data is None and getattr(args, "calib", None) is not None and args.epochs:
        return {"schedule": schedule or None, "epochs": args.epochs,
                "echo": lambda line: print(line, file=sys.stderr)}
    if args.data is None:
        if schedule or args.epochs is not None:
            raise ConfigError("--epochs, --batch-size, --lr, --codebook-lr and --optimizer need --data "
                              "(or --calib, for label-free fine-tuning)")
        return {}
    return {"data": args.data, "schedule": schedule or None, "epochs": args.epochs, "echo": progress.note}


def _check_training_args(args: argparse.Namespace) -> None:
    """Check --data and the training numbers before any work."""
    if args.data is not None:
        argcheck.data_spec(args.data, split="train")
    argcheck.count(args.epochs, "--epochs", minimum=0)
    argcheck.count(args.batch_size, "--batch-size")
    for flag in ("lr", "codebook_lr"):
        value = getattr(args, flag, None)
        if value is not None and not value > 0:
            raise ArgumentError(f"--{flag.replace('_', '-')} {value}: give a positive learning rate")


def _say(text: str) -> None:
    """Print a command's human-readable output on stdout, unless --quiet."""
    if progress.level() > progress.Level.QUIET:
        print(text)


def _print_json(fields: dict) -> None:
    print(json.dumps(fields))


def cmd_finetune(args: argparse.Namespace) -> int:
    import onnx_dc
    from onnx_dc.runtime.session import load_any

    argcheck.input_file(args.model)
    argcheck.output_file(args.output, inputs=[args.model])
    _check_training_args(args)
    # without preprocessing flags the model is read once, by the API
    prep = _preprocess_from(args, load_any(args.model) if _preprocess_flags(args) else None)
    kwargs = _training_from(args, "codebook")
    result = onnx_dc.finetune(args.model, args.output, kwargs.pop("data"), preprocess=prep, **kwargs)
    if args.json:
        print(result.report.to_json())
    else:
        _say(result.report.to_table(verbose=progress.verbose()))
        _say(f"wrote {args.output}")
    return 0


def _preprocess_flags(args: argparse.Namespace) -> bool:
    """Whether a preprocessing flag is given (only then is the model's stored preprocessing read here)."""
    return any(getattr(args, k, None) is not None for k in ("scale", "mean", "std", "layout"))


def _metadata_only(args: argparse.Namespace, model):
    """The model, for its stored preprocessing, only when a preprocessing flag is given.

    Read without checking and without external data: compress reads and checks the model
    itself, once; a file it cannot read is reported there.
    """
    import onnx

    if isinstance(model, onnx.ModelProto) or not _preprocess_flags(args):
        return model if isinstance(model, onnx.ModelProto) else None
    try:
        return onnx.load_model(model, load_external_data=False)
    except Exception:  # unreadable or not ONNX: compress names the problem
        return None


def cmd_compress(args: argparse.Namespace) -> int:
    import onnx_dc
    from onnx_dc.cli_analysis import compress_target

    if compress_target(args) is not None:  # --target-drop: settings from a sensitivity sweep
        return 0
    config = args.config
    _check_compress_args(args)
    if args.caffe:
        if args.model:
            raise ConfigError("give either a model file or --caffe PROTOTXT CAFFEMODEL, not both")
        shape = argcheck.shape(args.input_shape)
        model_arg, caffe_config = onnx_dc.import_caffe(*args.caffe, input_shape=shape)
        if config is None and _settings_from(args):
            caffe_config = _unskip_plain_layers(caffe_config)
        config = config or caffe_config  # the Cmp* fields of the prototxt, unless a config file is given
    elif args.model:
        model_arg = args.model
    else:
        raise ConfigError("give a model file to compress (or --caffe PROTOTXT CAFFEMODEL)")
    prep = _preprocess_from(args, _metadata_only(args, model_arg))
    calib = _calib_from(args)
    result = onnx_dc.compress(model_arg, args.output, config, preprocess=prep, calib=calib, **_settings_from(args),
                              **_training_from(args, "retrain"))
    _print_compressed(args, result)
    return 0


def _print_compressed(args: argparse.Namespace, result) -> None:
    """The report, then the fidelity table (or the line saying accuracy was not checked)."""
    from onnx_dc.calibrate import NOT_CHECKED

    unchecked = result.fidelity is None and args.data is None
    note = NOT_CHECKED.format(out=args.output, model=args.model or "MODEL.onnx") if unchecked else None
    if args.json:
        out = json.loads(result.report.to_json())
        out["fidelity"] = result.fidelity.to_dict() if result.fidelity is not None else None
        out["data_aware"] = result.calib.to_dict() if result.calib is not None else None
        out["note"] = note
        print(json.dumps(out, indent=2))
    else:
        _say(result.report.to_table(verbose=progress.verbose()))
        if result.calib is not None:
            ran = result.calib.to_dict().get("passes")
            _say(f"data-aware passes: {', '.join(ran) if ran else 'none'} ({result.calib.data.summary()})")
        if result.fidelity is not None:
            _say(result.fidelity.to_table())
        extra = f" (over 2 GB: its large tensors are in {result.external_data} beside it)" if result.external_data else ""
        _say(f"wrote {args.output}{extra}")
    if note:
        progress.note(note)


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
    _check_training_args(args)


def _unskip_plain_layers(caffe_config: dict) -> dict:
    """The imported config without its ``skip: true`` entries for plain Convolution / InnerProduct layers.

    Caffe never compresses a plain layer, so the importer skips them; a user who gives
    --sparse-ratio / --class-num on the command line asks for exactly that, for every layer
    whose prototxt says nothing (Cmp* layers keep their own fields).
    """
    nodes = [n for n in caffe_config.get("nodes", []) if not n.get("skip")]
    return {**caffe_config, "nodes": nodes}


def cmd_report(args: argparse.Namespace) -> int:
    import onnx_dc

    argcheck.input_file(args.model)
    if args.baseline is not None:
        argcheck.input_file(args.baseline, "--baseline")
    rep = onnx_dc.report(args.model, baseline=args.baseline)
    print(rep.to_json() if args.json else rep.to_table(verbose=progress.verbose()))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import onnx_dc
    from onnx_dc.runtime.session import load_any

    argcheck.input_file(args.model)
    argcheck.count(args.limit, "--limit")
    if args.against is not None or args.calib is not None:
        return _eval_against(args)
    if args.data is None:
        raise ConfigError("give --data (accuracy on labels) or --against ORIGINAL --calib SPEC (fidelity)")
    argcheck.data_spec(args.data, split=args.split)
    # without preprocessing flags the model is read once, by the API
    prep = _preprocess_from(args, load_any(args.model) if _preprocess_flags(args) else None)
    result = onnx_dc.evaluate(args.model, args.data, prep, split=args.split, limit=args.limit)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"{args.model}: top-1 accuracy {result.accuracy:.4f} ({result.correct}/{result.n}) on {result.data} "
              f"[{result.preprocess.layout}, x * {result.preprocess.scale:.6g}]")
    return 0


def _eval_against(args: argparse.Namespace) -> int:
    from onnx_dc.calibrate import fidelity

    if args.against is None or args.calib is None or args.data is not None:
        raise ConfigError("fidelity needs both --against ORIGINAL and --calib SPEC (and no --data)")
    fid = fidelity(args.model, args.against, _calib_from(args), part="all" if args.all_samples else "heldout")
    print(json.dumps(fid.to_dict()) if args.json else fid.to_table())
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    import onnx_dc

    argcheck.input_file(args.model)
    argcheck.output_file(args.output, inputs=[args.model])
    size = onnx_dc.pack(args.model, args.output, codec=args.codec)
    if args.json:
        _print_json({"output": args.output, "bytes": size, "input": args.model,
                     "input_bytes": os.path.getsize(args.model), "codec": args.codec})
    else:
        _say(f"wrote {args.output} ({size} B)")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    import onnx_dc

    argcheck.input_file(args.model)
    argcheck.output_file(args.output, inputs=[args.model])
    size = onnx_dc.unpack(args.model, args.output)
    if args.json:
        _print_json({"output": args.output, "bytes": size, "input": args.model,
                     "input_bytes": os.path.getsize(args.model)})
    else:
        _say(f"wrote {args.output} ({size} B)")
    return 0


def cmd_export_dense(args: argparse.Namespace) -> int:
    import onnx_dc

    onnx_dc.export_dense(args.model, args.output)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size} B)")
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
        _print_json({"output": args.output, "bytes": os.path.getsize(args.output), "config_out": args.config_out,
                     "inputs": {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
                                for i in model.graph.input},
                     "config_nodes": config["nodes"]})
    else:
        _say(f"wrote {args.output}" + (f" and {args.config_out}" if args.config_out else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from onnx_dc.demo import run_demo

    run_demo(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``onnx-dc``."""
    parser = argparse.ArgumentParser(prog="onnx-dc", description="Deep Compression for ONNX models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compress", help="prune and share weights: model.onnx -> model.dc.onnx")
    p.add_argument("model", nargs="?", help="input .onnx (never modified)")
    p.add_argument("-o", "--output", required=True, help="output .dc.onnx (written atomically)")
    p.add_argument("--caffe", nargs=2, metavar=("PROTOTXT", "CAFFEMODEL"),
                   help="compress a Caffe net; its CmpConvolution / CmpInnerProduct fields become the config, "
                        "and the settings flags apply to its plain Convolution / InnerProduct layers")
    p.add_argument("--input-shape", help="with --caffe: per-sample input shape C,H,W (no batch), e.g. 1,28,28")
    p.add_argument("--config", help="YAML config with per-node settings (docs/CONFIG.md)")
    _add_settings_args(p)
    p.add_argument("--data", help="fine-tune on this data while compressing: mnist:DIR, fashion-mnist:DIR, npz:FILE, digits")
    _add_training_args(p, "retrain")
    _add_preprocess_args(p)
    _add_calib_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    from onnx_dc.cli_analysis import add_parsers as add_analysis_parsers, add_target_args

    add_target_args(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("finetune", help="train the codebooks and biases of a .dc.onnx on data")
    p.add_argument("model", help="input .dc.onnx or .dcz (never modified)")
    p.add_argument("-o", "--output", required=True, help="output .dc.onnx (written atomically)")
    p.add_argument("--data", required=True, help="mnist:DIR, fashion-mnist:DIR, npz:FILE or digits")
    _add_training_args(p, "codebook")
    p.add_argument("--seed", type=int, help="shuffling seed (default 0)")
    _add_preprocess_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("report", help="per-layer table of a .dc.onnx or .dcz")
    p.add_argument("model")
    p.add_argument("--baseline", help="the original model, to compare file sizes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("eval", help="top-1 accuracy in onnxruntime, or fidelity against the original model")
    p.add_argument("model", help=".onnx, .dc.onnx or .dcz")
    p.add_argument("--data", help="mnist:DIR, fashion-mnist:DIR, npz:FILE or digits")
    p.add_argument("--against", help="the original model: measure fidelity on --calib samples instead of accuracy")
    p.add_argument("--all-samples", action="store_true", help="with --against: use every sample, not the held-out part")
    p.add_argument("--seed", type=int, help="seed of the calibration sample choice")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--limit", type=int, help="evaluate on the first N samples only")
    _add_preprocess_args(p)
    _add_calib_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("pack", help="entropy-code a .dc.onnx into a .dcz (lossless)")
    p.add_argument("model", help="input .dc.onnx")
    p.add_argument("-o", "--output", required=True, help="output .dcz")
    p.add_argument("--codec", choices=("auto", "huffman", "range"), default="auto",
                   help="auto picks the smaller per stream and tries the position models of sparse layers "
                        "(docs/FORMAT.md); huffman reproduces the paper")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("unpack", help="restore the .dc.onnx from a .dcz, byte for byte")
    p.add_argument("model", help="input .dcz")
    p.add_argument("-o", "--output", required=True, help="output .dc.onnx")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_unpack)

    p = sub.add_parser("export-dense", help="write the plain float model of a .dc.onnx or .dcz")
    p.add_argument("model", help="input .dc.onnx or .dcz")
    p.add_argument("-o", "--output", required=True, help="output .onnx")
    p.set_defaults(func=cmd_export_dense)

    p = sub.add_parser("import-caffe", help="convert a Caffe prototxt + caffemodel to ONNX")
    p.add_argument("prototxt")
    p.add_argument("caffemodel")
    p.add_argument("-o", "--output", required=True, help="output .onnx")
    p.add_argument("--config-out", help="write the Cmp* layer settings as a YAML config")
    p.add_argument("--input-shape", help="per-sample input shape C,H,W when the net gives none (no batch), e.g. 1,28,28")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_import_caffe)

    p = sub.add_parser("demo", help="train an MLP on scikit-learn's digits, compress it, compare")
    p.add_argument("--out", default="out/demo", help="folder for the demo's files (default out/demo)")
    p.set_defaults(func=cmd_demo)

    add_analysis_parsers(sub)
    for extra in EXTRA_COMMANDS:
        extra(sub)
    _add_common_args(parser, sub)
    return parser


def _add_common_args(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """--version on the command; --quiet / --verbose on every subcommand (the extra ones included)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("onnx_dc")
    except PackageNotFoundError:  # run from a source tree that is not installed
        text = "unknown"
    parser.add_argument("--version", action="version", version=f"onnx-dc {text}")
    for p in sub.choices.values():
        g = p.add_argument_group("output")
        level = g.add_mutually_exclusive_group()
        level.add_argument("-q", "--quiet", action="store_const", dest="level", const=progress.Level.QUIET,
                           default=progress.Level.NORMAL,
                           help="print only errors (and what was asked for: eval's accuracy, report, --json)")
        level.add_argument("-v", "--verbose", action="store_const", dest="level", const=progress.Level.VERBOSE,
                           help="list every tensor that is not compressed")


EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``onnx-dc``; returns the exit code."""
    args = build_parser().parse_args(argv)
    progress.set_level(args.level)
    try:
        return args.func(args)
    except OnnxDcError as exc:
        print(f"onnx-dc: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`)
        sys.stderr.close()
        return 0
    finally:
        progress.set_level(progress.Level.NORMAL)  # main() may be called again in the same process (tests)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
