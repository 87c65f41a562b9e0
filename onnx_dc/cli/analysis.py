"""The ``sensitivity`` and ``plot`` commands: argument parsing over :mod:`onnx_dc.analysis.sensitivity`
and :mod:`onnx_dc.analysis.model_plots` (the sweep flags are shared with ``compress --target-drop``
through :mod:`onnx_dc.cli.args`).

Every argument is checked (onnx_dc.cli.argcheck) before a model is loaded or a sweep starts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onnx_dc import progress
from onnx_dc.cli import argcheck
from onnx_dc.cli.args import (add_calib_args, add_preprocess_args, add_sweep_args, check_data_args, check_sweep_args,
                              grid_from, metric_from, runner_from)
from onnx_dc.errors import ArgumentError


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from onnx_dc.analysis.sensitivity import run_sensitivity
    from onnx_dc.analysis.target import measure_suggestion

    argcheck.unpacked_model(args.model)
    check_data_args(args)
    check_sweep_args(args)
    argcheck.drop(args.max_drop, "--max-drop")
    outputs = [(args.json, "--json"), (args.plot, "--plot"), (args.config_out, "--config-out")]
    if args.level == progress.Level.QUIET and all(path is None for path, _ in outputs):
        raise ArgumentError("-q needs --json FILE or --plot PNG (or --config-out YAML): without them the sweep's "
                            "result is neither printed nor written")
    for path, flag in outputs:
        if path is not None:
            argcheck.output_file(path, flag, inputs=[args.model])
    if args.plot is not None:
        argcheck.plotting()
    metric = metric_from(args, args.model)
    calib = getattr(metric, "calib", None)
    sens = run_sensitivity(args.model, metric, runner=runner_from(args), calib=calib, **grid_from(args))
    measured = measure_suggestion(args.model, sens, args.max_drop, metric, getattr(metric, "preprocess", None), calib)
    _write_sensitivity(args, sens, measured)
    return 0


def _write_sensitivity(args: argparse.Namespace, sens, measured) -> None:
    from onnx_dc.graph.io import write_bytes_atomic
    from onnx_dc.importers.caffe import write_config_yaml

    if args.json is not None:
        out = sens.to_dict() | {"max_drop": args.max_drop, "suggested": sens.suggested_config(args.max_drop),
                                "suggested_measured": measured.to_dict() if measured is not None else None}
        write_bytes_atomic(json.dumps(out, indent=1).encode(), args.json)
    if args.plot is not None:
        from onnx_dc.analysis.plots import plot_sensitivity

        plot_sensitivity(sens, args.plot)
    if args.config_out is not None:
        write_config_yaml(sens.suggested_config(args.max_drop), args.config_out)
    if progress.level() > progress.Level.QUIET:
        print(sens.to_table(args.max_drop))
        if measured is not None:
            print("\n".join(_measured_lines(args, sens, measured)))
        print(sens.evaluations_line())
        written = [p for p in (args.json, args.plot, args.config_out) if p is not None]
        if written:
            print("wrote " + ", ".join(written))


def _measured_lines(args: argparse.Namespace, sens, measured) -> list[str]:
    """The suggestion's measured score next to the baseline; a warning, with the command that meets a total drop,
    when the whole model loses more than --max-drop."""
    unit = sens.unit
    lines = [f"suggested settings together, measured: {measured.score:.2f}{unit} (baseline {measured.baseline:.2f}{unit}, "
             f"drop {measured.drop:.2f}; the layers' own drops sum to {measured.layer_drops:.2f})"]
    if measured.exceeds:
        lines.append(f"warning: together they lose {measured.drop:.2f} points, more than --max-drop {args.max_drop:g} "
                     "(a per-layer budget: the layers' drops add up); for a total drop of at most "
                     f"{args.max_drop:g}: onnx-dc compress {args.model} -o OUT.dc.onnx --target-drop {args.max_drop:g}"
                     + _same_data_flags(args))
    return lines


# The flags of a sensitivity run that say what is scored and on what, as compress --target-drop takes them.
SAME_DATA_FLAGS = ("data", "calib", "limit", "scale", "mean", "std", "layout", "size", "channels", "calib_limit", "seed",
                   "ratios", "class_nums", "codebooks", "estimate")


def _same_data_flags(args: argparse.Namespace) -> str:
    """`` --data SPEC --limit N ...``: the given flags that make compress --target-drop score as this sweep did,
    and ``--sensitivity FILE`` when the sweep was written (so that it is not run again)."""
    out = ""
    for dest in SAME_DATA_FLAGS + (("json",) if args.json is not None else ()):
        value = getattr(args, dest, None)
        if isinstance(value, bool):  # a switch, on or off
            out += f" --{'' if value else 'no-'}{dest.replace('_', '-')}"
        elif value is not None:
            text = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)
            out += f" --{'sensitivity' if dest == 'json' else dest.replace('_', '-')} {text}"
    return out


def cmd_plot(args: argparse.Namespace) -> int:
    from onnx_dc.analysis.model_plots import plot_model
    from onnx_dc.analysis.curves import load_sensitivity

    argcheck.input_file(args.model)
    argcheck.input_file(args.baseline, "--baseline")
    if args.sensitivity is not None:
        argcheck.input_file(args.sensitivity, "--sensitivity")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"-o {out}: is a file; give a folder for the PNGs")
    argcheck.output_file(out / "histograms.png" if out.is_dir() else out, "-o")
    argcheck.plotting()
    sens = load_sensitivity(args.sensitivity) if args.sensitivity is not None else None
    paths = plot_model(args.model, args.baseline, out, sens)
    if progress.level() > progress.Level.QUIET:
        print("wrote " + ", ".join(map(str, paths)))
        if sens is None:
            print("(no sensitivity curves: give --sensitivity S.json from onnx-dc sensitivity --json)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``sensitivity`` and ``plot`` subcommands."""
    from onnx_dc.sweep_grid import DEFAULT_MAX_DROP

    p = sub.add_parser("sensitivity", help="per-layer accuracy against pruning ratio and class_num; suggested config")
    p.add_argument("model", help="input .onnx (never modified)")
    p.add_argument("--data", help="labeled data to score on: mnist[:DIR], fashion-mnist[:DIR] (no DIR: "
                                        "fetched once into the cache), npz:FILE, digits")
    add_sweep_args(p, "the sweep: each layer alone at each setting, no retraining (with --calib: the "
                      "data-aware passes)")
    p.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP,
                   help=f"per layer, the suggested setting loses at most this many points (default {DEFAULT_MAX_DROP:g})")
    p.add_argument("--json", metavar="FILE", help="write every measurement and the suggestion as JSON")
    p.add_argument("--plot", metavar="PNG", help="write the curves, one per layer (needs the plot extra: "
                   ".venv/bin/pip install -e '.[plot]' in the source checkout)")
    p.add_argument("--config-out", metavar="YAML", help="write the suggested per-layer settings (docs/CONFIG.md)")
    add_preprocess_args(p)
    add_calib_args(p)
    p.add_argument("--seed", type=int, help="seed of the calibration sample choice")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("plot", help="weight histograms, bytes and bits per layer of a .dc.onnx (PNGs)")
    p.add_argument("model", help=".dc.onnx or .dcz")
    p.add_argument("--baseline", required=True, help="the original model it was compressed from")
    p.add_argument("-o", "--output", required=True, help="folder for the PNGs (created if missing)")
    p.add_argument("--sensitivity", metavar="JSON", help="also plot these curves (from onnx-dc sensitivity --json)")
    p.set_defaults(func=cmd_plot)
