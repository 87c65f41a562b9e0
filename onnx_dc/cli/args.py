"""Argument groups that several commands share, and the readers that turn them into API arguments.

The command modules add these groups to their parsers and read them back through the
functions here (preprocessing, calibration samples, global settings, fine-tuning, the sensitivity
sweep of ``sensitivity`` and ``compress --target-drop``, output level).
"""

from __future__ import annotations

import argparse
import json

from onnx_dc import progress
from onnx_dc.cli import argcheck
from onnx_dc.errors import ArgumentError, ConfigError


def add_preprocess_args(p: argparse.ArgumentParser, calib: bool = True) -> None:
    """--scale --mean --std --layout; ``calib``: the command takes --calib (per-channel values apply to it)."""
    g = p.add_argument_group("input preprocessing: x = (pixel * scale - mean) / std")
    g.add_argument("--scale", type=float, help="pixel multiplier (default: the model's metadata, else 1/255 for IDX, 1/16 for digits)")
    g.add_argument("--mean", type=number_or_list, help="subtracted after scaling (default 0)" + (
        "; per channel with --calib: 0.485,0.456,0.406" if calib else ""))
    g.add_argument("--std", type=number_or_list, help="divided by after the mean (default 1)" + (
        "; per channel with --calib: 0.229,0.224,0.225" if calib else ""))
    g.add_argument("--layout", choices=("nchw", "nhwc"), help="image layout of the model input (default nchw)")


def number_or_list(text: str):
    """One number, or comma-separated numbers (per-channel --mean / --std)."""
    parts = [p for p in text.split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number or numbers like 0.485,0.456,0.406") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number or numbers like 0.485,0.456,0.406")
    return values[0] if len(values) == 1 else values


def add_calib_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration samples (unlabeled; the preprocessing flags apply to them too)")
    g.add_argument("--calib", help="images:DIR, npz:FILE (one array per input name), text:FILE (one sample per line, "
                                   "with --tokenizer), mnist[:DIR], fashion-mnist[:DIR], digits")
    g.add_argument("--tokenizer", help="tokenizer.json (Hugging Face tokenizers) that turns --calib text:FILE lines into "
                                       "input_ids / attention_mask / token_type_ids")
    g.add_argument("--max-length", type=int, help="tokens per --calib text: sample at most (default: the model's fixed "
                                                  "length, else the tokenizer's truncation length, else 512)")
    g.add_argument("--size", help="resize images to H,W")
    g.add_argument("--channels", choices=("rgb", "bgr", "gray"), help="image channel order (default: from the model)")
    g.add_argument("--calib-limit", type=int, help="calibration samples at most (default: as many as 16 MB of model input hold, "
                                                        "256-1024; seeded choice)")


def calib_from(args: argparse.Namespace):
    """The CalibSpec of the flags, or None without --calib."""
    if getattr(args, "calib", None) is None:
        if any(getattr(args, k, None) is not None for k in ("size", "channels", "calib_limit", "tokenizer",
                                                            "max_length")):
            raise ConfigError("--size, --channels, --calib-limit, --tokenizer and --max-length need --calib")
        return None
    from onnx_dc.data.calib import parse_calib_spec

    return parse_calib_spec(args.calib, size=args.size, channels=args.channels, scale=args.scale, mean=args.mean,
                            std=args.std, layout=args.layout, limit=args.calib_limit, seed=getattr(args, "seed", None),
                            tokenizer=args.tokenizer, max_length=args.max_length)


def preprocess_from(args: argparse.Namespace, model=None):
    """Preprocess from flags; flags not given fall back to the model's stored values."""
    from onnx_dc.data.datasets import Preprocess
    from onnx_dc.data.datasets import stored_preprocess

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


def preprocess_flags(args: argparse.Namespace) -> bool:
    """Whether a preprocessing flag is given (only then is the model's stored preprocessing read here)."""
    return any(getattr(args, k, None) is not None for k in ("scale", "mean", "std", "layout"))


def add_settings_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("global settings (override the config's defaults)")
    # The defaults named here are those of onnx_dc.config.Settings (not imported: --help stays quick).
    g.add_argument("--sparse-ratio", type=float, help="fraction of weights pruned by magnitude, in [0, 1) "
                                                      "(default: the config's, else 0: no pruning)")
    g.add_argument("--prune-quality", type=float, help="prune |w| <= quality x std(W) instead of a ratio "
                                                       "(default: the config's, else none: --sparse-ratio decides)")
    g.add_argument("--class-num", type=int, help="shared values per layer (k-means clusters), 2..256 "
                                                 "(default: the config's, else 32)")
    g.add_argument("--codebook", type=argcheck.codebook, metavar="{layer,channel,group:G}",
                   help="layer: one codebook per layer; channel: the layer's codebook times a float16 scale per "
                        "output channel (finer, 2 bytes a channel); group:G: one codebook per G output channels "
                        "(default: the config's, else layer)")
    g.add_argument("--no-quantize", action="store_true", help="prune only, keep float32 values (quantize_term: false)")
    g.add_argument("--centroid-init", choices=("linear", "density", "random", "kmeans++"),
                   help="where the k-means centroids start (default: the config's, else linear)")
    g.add_argument("--index-bits", type=int, help="relative index width 1..16 (default: the smallest file)")
    g.add_argument("--form", choices=("auto", "sparse", "dense"),
                   help="storage of a compressed weight: sparse (kept values and index gaps), dense (a code per "
                        "weight), auto: the smaller (default: the config's, else auto)")
    g.add_argument("--seed", type=int, help="seed of k-means, of the calibration sample choice and of training "
                                            "(default: the config's, else 0)")


def settings_from(args: argparse.Namespace) -> dict:
    out = {
        "sparse_ratio": args.sparse_ratio, "prune_quality": args.prune_quality, "class_num": args.class_num,
        "centroid_init": args.centroid_init, "index_bits": args.index_bits, "form": args.form, "seed": args.seed,
        "codebook": args.codebook,
    }
    if args.no_quantize:
        out["quantize_term"] = False
    return {k: v for k, v in out.items() if v is not None}


def add_training_args(p: argparse.ArgumentParser, lr_stage: str) -> None:
    title = "fine-tuning (onnxruntime-training; " + ("flags override the config's train: section, whose defaults "
                                                     "docs/CONFIG.md lists)" if lr_stage != "codebook" else
                                                     "defaults: the codebook stage in docs/CONFIG.md)")
    g = p.add_argument_group(title)
    g.add_argument("--epochs", type=int, help="epochs of " + ("the codebook stage" if lr_stage == "codebook"
                                                           else "every training stage"))
    g.add_argument("--batch-size", type=int, help="samples per step (default 64)")
    g.add_argument("--lr", type=float, help=f"learning rate of the {lr_stage} stage")
    if lr_stage != "codebook":
        g.add_argument("--codebook-lr", type=float, help="learning rate of the codebook stage")
    g.add_argument("--optimizer", choices=("sgd", "adamw"),
                   help="optimizer of " + ("the codebook stage" if lr_stage == "codebook" else "every stage"))


def training_from(args: argparse.Namespace, lr_stage: str) -> dict:
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
        return {"schedule": schedule or None, "epochs": args.epochs}
    if args.data is None:
        if schedule or args.epochs is not None:
            raise ConfigError("--epochs, --batch-size, --lr, --codebook-lr and --optimizer need --data "
                              "(or --calib, for label-free fine-tuning)")
        return {}
    return {"data": args.data, "schedule": schedule or None, "epochs": args.epochs}


def check_training_args(args: argparse.Namespace) -> None:
    """Check --data, --scale and the training numbers before any work."""
    if args.data is not None:
        argcheck.data_spec(args.data, split="train")
    argcheck.scale(args.scale)
    argcheck.count(args.epochs, "--epochs", minimum=0)
    argcheck.count(args.batch_size, "--batch-size")
    for flag in ("lr", "codebook_lr"):
        value = getattr(args, flag, None)
        if value is not None and not value > 0:
            raise ArgumentError(f"--{flag.replace('_', '-')} {value}: give a positive learning rate")


def say(text: str) -> None:
    """Print a command's human-readable output on stdout, unless --quiet."""
    if progress.level() > progress.Level.QUIET:
        print(text)


def print_json(fields: dict) -> None:
    print(json.dumps(fields))


def add_common_args(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """--version on the command; --quiet / --verbose / --debug on every subcommand (the extra ones included)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("onnx_dc")
    except PackageNotFoundError:  # run from a source tree that is not installed
        text = "unknown"
    parser.add_argument("--version", action="version", version=f"onnx-dc {text}")
    for p in sub.choices.values():
        g = p.add_argument_group("output")
        level = g.add_mutually_exclusive_group()
        json_flag = any("--json" in a.option_strings for a in p._actions)
        level.add_argument("-q", "--quiet", action="store_const", dest="level", const=progress.Level.QUIET,
                           default=progress.Level.NORMAL,
                           help="print only errors (and what was asked for: eval's accuracy, report" +
                                (", --json)" if json_flag else ")"))
        level.add_argument("-v", "--verbose", action="store_const", dest="level", const=progress.Level.VERBOSE,
                           help="list every tensor that is not compressed, and print the details of the work")
        g.add_argument("--debug", action="store_true",
                       help="on an unexpected error (a bug), print the traceback instead of one line")


# ----------------------------------------------------------------------------- sensitivity sweeps

SWEEP_FLAGS = ("ratios", "class_nums", "codebooks", "estimate", "workers", "ray", "limit", "sensitivity")


def add_sweep_args(p: argparse.ArgumentParser, title: str) -> None:
    """--ratios --class-nums --codebooks --limit --workers --ray."""
    from onnx_dc.sweep_grid import DEFAULT_CLASS_NUMS, DEFAULT_RATIOS

    g = p.add_argument_group(title)
    g.add_argument("--ratios", help="sparse ratios to try, in [0, 1) (default "
                   f"{','.join(f'{r:g}' for r in DEFAULT_RATIOS)})")
    g.add_argument("--class-nums", help=f"class_num values to try, 2..256 (default {','.join(map(str, DEFAULT_CLASS_NUMS))})")
    g.add_argument("--codebooks", help="codebook settings to try with each class_num: layer, channel (a scale per "
                   "output channel), group:G (a codebook per G output channels), comma-separated (default layer)")
    g.add_argument("--estimate", action=argparse.BooleanOptionalAction, default=None,
                   help="with --calib: run the model at 2 settings per layer and estimate the other points' output "
                        "errors from the layer's own (3-13x faster on real models; the points say estimated). The "
                        "default of onnx-dc compress --target-ratio on --calib samples, which ranks settings by "
                        "those errors; --no-estimate measures every point")
    g.add_argument("--limit", type=int, help="score on the first N test samples only (faster, coarser)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="run the (layer x setting) evaluations in N worker processes")
    where.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="run them on Ray: a cluster at ADDRESS (HOST:PORT), or without one a local instance "
                            "(needs the ray extra: .venv/bin/pip install -e '.[ray]' in the source checkout)")


def check_sweep_args(args: argparse.Namespace) -> None:
    argcheck.ratio_list(args.ratios)
    argcheck.class_num_list(args.class_nums)
    argcheck.codebook_list(args.codebooks)
    argcheck.count(args.limit, "--limit")
    argcheck.count(args.workers, "--workers")
    argcheck.ray_address(args.ray)
    if args.estimate and getattr(args, "calib", None) is None:
        raise ArgumentError("--estimate needs --calib SPEC: the estimate scales each layer's own output error on the "
                            "calibration samples; with --data every point is measured (leave out --estimate)")


def runner_from(args: argparse.Namespace):
    from onnx_dc.analysis.sweep import Runner

    return Runner(workers=args.workers or 0, ray=args.ray)


def grid_from(args: argparse.Namespace) -> dict:
    from onnx_dc.sweep_grid import DEFAULT_CLASS_NUMS, DEFAULT_CODEBOOKS, DEFAULT_RATIOS

    return {"ratios": argcheck.ratio_list(args.ratios) or DEFAULT_RATIOS,
            "class_nums": argcheck.class_num_list(args.class_nums) or DEFAULT_CLASS_NUMS,
            "codebooks": argcheck.codebook_list(args.codebooks) or DEFAULT_CODEBOOKS,
            "estimated": estimated(args)}


def estimated(args: argparse.Namespace) -> bool:
    """Whether the sweep estimates points: as --estimate / --no-estimate say, else for --target-ratio on --calib
    samples (its knapsack ranks by output errors, which the estimate follows; --target-drop and a sensitivity
    table rank by drops, which move in whole held-out samples and are not estimated as closely)."""
    if args.estimate is not None:
        return args.estimate
    return getattr(args, "calib", None) is not None and getattr(args, "target_ratio", None) is not None


def metric_from(args: argparse.Namespace, model: str):
    """The evaluation function of the flags: accuracy on --data, or fidelity to the original on --calib."""
    from onnx_dc.graph.io import serialize
    from onnx_dc.formats.models import load_model
    from onnx_dc.analysis.metrics import Accuracy, Agreement

    if args.calib is not None:
        return Agreement(calib_from(args), serialize(load_model(model)))
    return Accuracy(args.data, preprocess_from(args, load_model(model)), "test", args.limit)


def check_data_args(args: argparse.Namespace) -> None:
    """Exactly one of --data (labels) and --calib (samples, no labels), its files there, and --scale."""
    argcheck.scale(args.scale)
    if (args.data is None) == (args.calib is None):
        raise ArgumentError("give --data SPEC (labeled: top-1 accuracy) or --calib SPEC (unlabeled: fidelity to "
                            "the original model), one of the two")
    if args.data is not None:
        argcheck.data_spec(args.data)
    else:
        calib_from(args)
    if args.calib is not None and args.limit is not None:
        raise ArgumentError("--limit applies to --data; with --calib give --calib-limit")
