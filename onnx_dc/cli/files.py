"""The commands that read a model: ``report``, ``eval``, ``pack``, ``unpack``, ``export-dense``, and ``demo``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from onnx_dc import progress
from onnx_dc.cli import argcheck
from onnx_dc.cli.args import add_calib_args, add_preprocess_args, calib_from, preprocess_flags, preprocess_from, print_json, say
from onnx_dc.errors import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``report``, ``eval``, ``pack``, ``unpack``, ``export-dense`` and ``demo`` subcommands."""
    p = sub.add_parser("report", help="per-layer table of a .dc.onnx or .dcz")
    p.add_argument("model", help=".dc.onnx or .dcz")
    p.add_argument("--baseline", help="the original model, to compare file sizes")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("eval", help="top-1 accuracy in onnxruntime, or fidelity against the original model")
    p.add_argument("model", help=".onnx, .dc.onnx or .dcz")
    p.add_argument("--data", help="mnist[:DIR], fashion-mnist[:DIR] (no DIR: fetched once into the cache), npz:FILE "
                                  "or digits")
    p.add_argument("--against", help="the original model: measure fidelity on --calib samples instead of accuracy")
    p.add_argument("--all-samples", action="store_true", help="with --against: use every sample, not the held-out part")
    p.add_argument("--seed", type=int, help="seed of the calibration sample choice")
    p.add_argument("--split", choices=("test", "train"), default="test", help="which part of --data to score on")
    p.add_argument("--limit", type=int, help="evaluate on the first N samples only")
    add_preprocess_args(p)
    add_calib_args(p)
    p.add_argument("--json", action="store_true", help="print the accuracy (or the fidelity) as JSON")
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

    p = sub.add_parser("demo", help="train an MLP on scikit-learn's digits, compress it, compare")
    p.add_argument("--out", default="out/demo", help="folder for the demo's files (default out/demo)")
    p.set_defaults(func=cmd_demo)


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
    from onnx_dc.formats.models import load_model

    argcheck.input_file(args.model)
    argcheck.count(args.limit, "--limit")
    argcheck.scale(args.scale)
    if args.against is not None or args.calib is not None:
        return _eval_against(args)
    if args.data is None:
        raise ConfigError("give --data (accuracy on labels) or --against ORIGINAL --calib SPEC (fidelity)")
    argcheck.data_spec(args.data, split=args.split)
    # without preprocessing flags the model is read once, by the API
    prep = preprocess_from(args, load_model(args.model) if preprocess_flags(args) else None)
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
    fid = fidelity(args.model, args.against, calib_from(args), part="all" if args.all_samples else "heldout")
    print(json.dumps(fid.to_dict()) if args.json else fid.to_table())
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    import onnx_dc

    argcheck.input_file(args.model)
    argcheck.output_file(args.output, inputs=[args.model])
    size = onnx_dc.pack(args.model, args.output, codec=args.codec)
    if args.json:
        print_json({"output": args.output, "bytes": size, "input": args.model,
                     "input_bytes": os.path.getsize(args.model), "codec": args.codec})
    else:
        say(f"wrote {args.output} ({size} B)")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    import onnx_dc

    argcheck.input_file(args.model)
    argcheck.output_file(args.output, inputs=[args.model])
    size = onnx_dc.unpack(args.model, args.output)
    if args.json:
        print_json({"output": args.output, "bytes": size, "input": args.model,
                     "input_bytes": os.path.getsize(args.model)})
    else:
        say(f"wrote {args.output} ({size} B)")
    return 0


def cmd_export_dense(args: argparse.Namespace) -> int:
    import onnx_dc

    onnx_dc.export_dense(args.model, args.output)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size} B)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from onnx_dc.demo import run_demo, summary

    say(summary(run_demo(args.out)))
    return 0
