"""The ``sensitivity`` and ``plot`` commands, and ``compress --target-drop``: argument parsing over
:mod:`onnx_dc.analysis.sensitivity`, :mod:`onnx_dc.analysis.target` and :mod:`onnx_dc.analysis.plots`.

Every argument is checked (onnx_dc.cli.argcheck) before a model is loaded or a sweep starts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onnx_dc import progress
from onnx_dc.cli import argcheck
from onnx_dc.cli.args import add_calib_args, add_preprocess_args, calib_from, preprocess_from
from onnx_dc.errors import ArgumentError

SWEEP_FLAGS = ("ratios", "class_nums", "workers", "ray", "limit", "sensitivity")


def add_sweep_args(p: argparse.ArgumentParser, title: str) -> None:
    """--ratios --class-nums --limit --workers --ray."""
    from onnx_dc.sweep_grid import DEFAULT_CLASS_NUMS, DEFAULT_RATIOS

    g = p.add_argument_group(title)
    g.add_argument("--ratios", help="sparse ratios to try, in [0, 1) (default "
                   f"{','.join(f'{r:g}' for r in DEFAULT_RATIOS)})")
    g.add_argument("--class-nums", help=f"class_num values to try, 2..256 (default {','.join(map(str, DEFAULT_CLASS_NUMS))})")
    g.add_argument("--limit", type=int, help="score on the first N test samples only (faster, coarser)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="run the (layer x setting) evaluations in N worker processes")
    where.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="run them on Ray: a cluster at ADDRESS (HOST:PORT), or without one a local instance "
                            "(needs the ray extra: pip install 'onnx_dc[ray]')")


def _check_sweep_args(args: argparse.Namespace) -> None:
    argcheck.ratio_list(args.ratios)
    argcheck.class_num_list(args.class_nums)
    argcheck.count(args.limit, "--limit")
    argcheck.count(args.workers, "--workers")
    argcheck.ray_address(args.ray)


def _runner(args: argparse.Namespace):
    from onnx_dc.analysis.sweep import Runner

    return Runner(workers=args.workers or 0, ray=args.ray)


def _grid(args: argparse.Namespace) -> dict:
    from onnx_dc.sweep_grid import DEFAULT_CLASS_NUMS, DEFAULT_RATIOS

    return {"ratios": argcheck.ratio_list(args.ratios) or DEFAULT_RATIOS,
            "class_nums": argcheck.class_num_list(args.class_nums) or DEFAULT_CLASS_NUMS}


def _metric(args: argparse.Namespace, model: str):
    """The evaluation function of the flags: accuracy on --data, or fidelity to the original on --calib."""
    from onnx_dc.graph.io import serialize
    from onnx_dc.formats.models import load_model
    from onnx_dc.analysis.sensitivity import Accuracy, Agreement

    if args.calib is not None:
        return Agreement(calib_from(args), serialize(load_model(model)))
    return Accuracy(args.data, preprocess_from(args, load_model(model)), "test", args.limit)


def _check_data_args(args: argparse.Namespace) -> None:
    """Exactly one of --data (labels) and --calib (samples, no labels), and its files there."""
    if (args.data is None) == (args.calib is None):
        raise ArgumentError("give --data SPEC (labeled: top-1 accuracy) or --calib SPEC (unlabeled: fidelity to "
                            "the original model), one of the two")
    if args.data is not None:
        argcheck.data_spec(args.data)
    else:
        calib_from(args)
    if args.calib is not None and args.limit is not None:
        raise ArgumentError("--limit applies to --data; with --calib give --calib-limit")


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from onnx_dc.analysis.sensitivity import run_sensitivity

    argcheck.unpacked_model(args.model)
    _check_data_args(args)
    _check_sweep_args(args)
    argcheck.drop(args.max_drop, "--max-drop")
    outputs = [(args.json, "--json"), (args.plot, "--plot"), (args.config_out, "--config-out")]
    for path, flag in outputs:
        if path is not None:
            argcheck.output_file(path, flag, inputs=[args.model])
    if args.plot is not None:
        argcheck.plotting()
    metric = _metric(args, args.model)
    sens = run_sensitivity(args.model, metric, runner=_runner(args), calib=getattr(metric, "calib", None),
                           **_grid(args))
    _write_sensitivity(args, sens)
    return 0


def _write_sensitivity(args: argparse.Namespace, sens) -> None:
    from onnx_dc.graph.io import write_bytes_atomic
    from onnx_dc.importers.caffe import write_config_yaml

    if args.json is not None:
        out = sens.to_dict() | {"max_drop": args.max_drop, "suggested": sens.suggested_config(args.max_drop)}
        write_bytes_atomic(json.dumps(out, indent=1).encode(), args.json)
    if args.plot is not None:
        from onnx_dc.analysis.plots import plot_sensitivity

        plot_sensitivity(sens, args.plot)
    if args.config_out is not None:
        write_config_yaml(sens.suggested_config(args.max_drop), args.config_out)
    if progress.level() > progress.Level.QUIET:
        print(sens.to_table(args.max_drop))
        print(f"{len(sens.points)} evaluations in {sens.seconds:.1f} s ({sens.runner})")
        written = [p for p in (args.json, args.plot, args.config_out) if p is not None]
        if written:
            print("wrote " + ", ".join(written))


def cmd_plot(args: argparse.Namespace) -> int:
    from onnx_dc.analysis.model_plots import plot_model
    from onnx_dc.analysis.sensitivity import load_sensitivity

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
    out.mkdir(exist_ok=True)
    paths = plot_model(args.model, args.baseline, out, sens)
    if progress.level() > progress.Level.QUIET:
        print("wrote " + ", ".join(map(str, paths)))
        if sens is None:
            print("(no sensitivity curves: give --sensitivity S.json from onnx-dc sensitivity --json)")
    return 0


def add_target_args(p: argparse.ArgumentParser) -> None:
    """compress's --target-drop, --config-out and the sweep flags."""
    g = p.add_argument_group("settings from a target (instead of --config / --sparse-ratio / --class-num)")
    g.add_argument("--target-drop", type=float, metavar="D",
                   help="per-layer sparse_ratio and class_num with the smallest layers whose accuracy on --data "
                        "(or fidelity on --calib held-out samples, in percent) drops by at most D points (a sensitivity sweep, then a knapsack, measured; no retraining)")
    g.add_argument("--config-out", help="with --target-drop: write the chosen per-layer settings as YAML")
    g.add_argument("--sensitivity", metavar="JSON", help="with --target-drop: use this sweep (onnx-dc sensitivity "
                   "--json, same model and data) instead of running one")
    add_sweep_args(p, "the sensitivity sweep of --target-drop")


def compress_target(args: argparse.Namespace) -> int | None:
    """Run ``compress --target-drop``; None when not asked for (then no sweep flag may be given)."""
    if args.target_drop is None:
        given = [f"--{f.replace('_', '-')}" for f in SWEEP_FLAGS + ("config_out",) if getattr(args, f) is not None]
        if given:
            raise ArgumentError(f"{', '.join(given)}: only with --target-drop D")
        return None
    _check_target_args(args)
    from onnx_dc.analysis.sensitivity import run_sensitivity
    from onnx_dc.analysis.target import compress_for_target

    metric = _metric(args, args.model)
    if args.sensitivity is not None:
        sens = _matching_sweep(args.sensitivity, args.model, metric)
    else:
        sens = run_sensitivity(args.model, metric, runner=_runner(args), calib=getattr(metric, "calib", None),
                               **_grid(args))
    result, chosen = compress_for_target(args.model, args.output, metric, args.target_drop, sens,
                                         getattr(metric, "preprocess", None), getattr(metric, "calib", None))
    if args.config_out is not None:
        from onnx_dc.importers.caffe import write_config_yaml

        write_config_yaml(chosen.chosen.config, args.config_out)
    if args.json:
        print(json.dumps(json.loads(result.report.to_json()) | {"target": chosen.to_dict()}, indent=2))
    elif progress.level() > progress.Level.QUIET:
        print(result.report.to_table(verbose=progress.verbose()))
        print(chosen.summary())
        last = chosen.chosen
        print(f"chosen: {metric.describe()} {sens.baseline - last.measured:.2f} (drop {last.measured:.3f} <= "
              f"{args.target_drop:g}), layers {last.layer_bytes} B")
        print(f"wrote {args.output}" + (f" and {args.config_out}" if args.config_out else ""))
    return 0


def _matching_sweep(path: str, model: str, metric):
    """A saved sweep, refused unless it was measured on the same layers with the same evaluation function."""
    from onnx_dc.api import prepare
    from onnx_dc.analysis.sensitivity import load_sensitivity

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
    argcheck.drop(args.target_drop, "--target-drop")
    clash = [flag for flag, value in (("--config", args.config), ("--caffe", args.caffe),
                                      ("--sparse-ratio", args.sparse_ratio), ("--class-num", args.class_num),
                                      ("--prune-quality", args.prune_quality), ("--epochs", args.epochs))
             if value is not None]
    if clash:
        raise ArgumentError(f"--target-drop chooses the settings itself; drop {', '.join(clash)} "
                            "(fine-tune the result afterwards with onnx-dc finetune)")
    if not args.model:
        raise ArgumentError("give a model file to compress")
    argcheck.unpacked_model(args.model)
    argcheck.output_file(args.output, inputs=[args.model])
    if args.config_out is not None:
        argcheck.output_file(args.config_out, "--config-out", inputs=[args.model, args.output])
    _check_data_args(args)
    _check_sweep_args(args)
    if args.sensitivity is not None:
        argcheck.input_file(args.sensitivity, "--sensitivity")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``sensitivity`` and ``plot`` subcommands."""
    from onnx_dc.analysis.sensitivity import DEFAULT_MAX_DROP

    p = sub.add_parser("sensitivity", help="per-layer accuracy against pruning ratio and class_num; suggested config")
    p.add_argument("model", help="input .onnx (never modified)")
    p.add_argument("--data", help="labeled data to score on: mnist:DIR, fashion-mnist:DIR, npz:FILE, digits")
    add_sweep_args(p, "the sweep: each layer alone at each setting, no retraining (with --calib: the "
                      "data-aware passes)")
    p.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP,
                   help=f"per layer, the suggested setting loses at most this many points (default {DEFAULT_MAX_DROP:g})")
    p.add_argument("--json", metavar="FILE", help="write every measurement and the suggestion as JSON")
    p.add_argument("--plot", metavar="PNG", help="write the curves, one per layer (needs onnx_dc[plot])")
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
