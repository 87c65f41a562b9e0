"""Reproduce the paper's Tables 2 and 3 (LeNet-300-100 and LeNet-5 on MNIST) end to end.

For each reference model of models/ (dense, trained by scripts/train_reference.py) and its
config (models/*.dc.yaml: the paper's per-layer pruning ratios and code widths, and the
fine-tuning schedule), this runs

    prune layer by layer, retraining after each step -> share weights -> train codebooks -> lower

through onnxruntime-training (for each config variant: ``paper``, the paper's widths;
``32x``, narrower codes so the file itself reaches 32x; ``best``, the smallest files at the
paper's reference error: a cubic pruning ramp to far fewer weights, 4-bit codes), writes the
runnable ``*.dc.onnx`` and the packed ``.dcz``, measures top-1 error on the MNIST test set
before and after in onnxruntime, and prints the paper's table layout with the paper's
figures beside ours, then the paper's P+Q+H rows beside ours. Per layer it also gives the
bits per code and per index stored in the ``*.dc.onnx`` (P+Q) and after entropy coding in
the ``.dcz`` (P+Q+H), with the entropy under the coder's model (how far from the limit).

    python scripts/reproduce_paper.py [--data mnist:../shared/data/mnist] [--models lenet_300_100 lenet5]
                                      [--variants paper 32x best] [--out out/reproduce] [--save-models]
                                      [--json out/reproduce_paper.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_dc import progress
from onnx_dc.api import finish, prepare
from onnx_dc.config import load_config
from onnx_dc.data.datasets import load_dataset
from onnx_dc.formats import dcz
from onnx_dc.data.datasets import resolve_preprocess
from onnx_dc.runtime.evaluate import evaluate, predict, sample_shape
from onnx_dc.runtime.session import InferenceSession
from onnx_dc.train.schedule import run_schedule
from onnx_dc.train.settings import resolve_train_settings

# As printed in Han, Mao, Dally, "Deep Compression", ICLR 2016: Table 1 (top-1 error) and
# Tables 2-3 (per layer: weights kept, weight bits and index bits of P+Q, P+Q compress rate);
# ratio_pqh: Table 1's P+Q+H compression rate.
PAPER = {
    "lenet_300_100": {
        "title": "LeNet-300-100 (Table 2)", "error_ref": 1.64, "error_compressed": 1.58, "ratio": 32.0, "ratio_pqh": 40.0,
        "layers": {"ip1": (235_000, 8, 6, 5, 3.1), "ip2": (30_000, 9, 6, 5, 3.8), "ip3": (1_000, 26, 6, 5, 15.7)},
        "total": (266_000, 8, 6, 5, 3.1),
    },
    "lenet5": {
        "title": "LeNet-5 (Table 3)", "error_ref": 0.80, "error_compressed": 0.74, "ratio": 33.0, "ratio_pqh": 39.0,
        "layers": {"conv1": (500, 66, 8, 5, 78.5), "conv2": (25_000, 12, 8, 5, 6.0),
                   "ip1": (400_000, 8, 5, 5, 2.7), "ip2": (5_000, 19, 5, 5, 6.9)},
        "total": (431_000, 8, 5.3, 5, 3.05),
    },
}


def _error(model, data: str) -> float:
    return round(100.0 * (1.0 - evaluate(model, data).accuracy), 3)


def _accuracy_fn(data: str, state):
    """Test accuracy of a ModelProto, with the test set loaded and preprocessed once."""
    test = load_dataset(data, "test")
    prep = resolve_preprocess(state.model, test, None)
    cache = {}

    def accuracy(model) -> float:
        session = InferenceSession(model)
        if "x" not in cache:
            cache["x"] = prep.apply(test.images, sample_shape(session))
        return float((predict(session, cache["x"]) == test.labels).mean())

    return accuracy


VARIANTS = {"paper": "{name}.dc.yaml", "32x": "{name}.32x.dc.yaml", "best": "{name}.best.dc.yaml"}
# Issue goals per variant: the whole file's ratio against the dense float32 weights, runnable and packed.
GOALS = {
    "paper": {"dc_onnx_ratio": None, "dcz_ratio": None},
    "32x": {"dc_onnx_ratio": 32.0, "dcz_ratio": None},
    "best": {"dc_onnx_ratio": {"lenet_300_100": 40.0, "lenet5": 50.0},
             "dcz_ratio": {"lenet_300_100": 60.0, "lenet5": 80.0}},
}


def _goal(variant: str, name: str, key: str) -> float | None:
    value = GOALS[variant][key]
    return value.get(name) if isinstance(value, dict) else value


def _stream_rows(packed: bytes) -> dict[str, dict]:
    """Per weight name, per kept weight: bits of its code and position packed (runnable file, fillers
    included) and entropy-coded (.dcz), the entropy under the coder's model, and the models chosen."""
    out = {}
    for r in dcz.stream_report(packed):
        kept = max(1, r["kept"])

        def per_kept(nbytes) -> float | None:
            return None if not nbytes else round(8.0 * nbytes / kept, 3)

        out[r["name"]] = {
            "entries": r["count"], "kept": r["kept"],
            "code_bits_packed": per_kept(r["codes_packed_bytes"]), "code_bits_coded": per_kept(r["codes_coded_bytes"]),
            "code_entropy_bits": per_kept(r.get("codes_entropy_bytes")),
            "index_bits_packed": per_kept(r["gaps_packed_bytes"]), "index_bits_coded": per_kept(r["gaps_coded_bytes"]),
            "index_entropy_bits": per_kept(r.get("positions_entropy_bytes")),
            "codes_model": r.get("codes_model"), "positions_model": r.get("positions_model"),
        }
    return out


def reproduce(name: str, variant: str, data: str, out_dir: Path, model_dir: Path = ROOT / "models",
              config_dir: Path = ROOT / "models", echo=print) -> dict:
    """Compress one reference model with fine-tuning under one config variant; returns its rows."""
    model_path = model_dir / f"{name}.onnx"
    config_path = config_dir / VARIANTS[variant].format(name=name)
    run = name if variant == "paper" else f"{name}-{variant}"
    if not model_path.is_file():
        raise SystemExit(f"{model_path} is missing: run scripts/train_reference.py first")
    start = time.perf_counter()
    before = _error(model_path, data)
    echo(f"== {run} ({config_path.name}): dense top-1 error {before:.2f}%")
    config = load_config(config_path)
    state = prepare(model_path, config)
    settings = resolve_train_settings(config.train)
    with progress.echoed(echo):
        trained = run_schedule(state, data, settings, evaluate=_accuracy_fn(data, state))
    out_path = out_dir / f"{run}.dc.onnx"
    result = finish(state, out_path, trained.preprocess, model_path)
    after = _error(out_path, data)
    dcz_path = out_path.with_name(f"{run}.dcz")
    dcz.pack(out_path, dcz_path)
    streams = _stream_rows(dcz_path.read_bytes())
    report = result.report
    file_bytes = out_path.stat().st_size
    dcz_bytes = dcz_path.stat().st_size
    paper = PAPER[name]
    layers = []
    for row in report.layers:
        p = paper["layers"].get(row.nodes)
        layers.append({
            "layer": row.nodes, "weights": row.weights, "kept_pct": round(row.kept_pct, 2),
            "code_bits": row.code_bits, "index_bits": row.index_bits, "class_num": row.class_num, "form": row.form,
            "bytes": row.total_bytes, "rate_pct": round(100.0 / row.ratio, 2), "ratio": round(row.ratio, 2),
            "coded": streams.get(row.weight, {}),
            "paper": None if p is None else dict(zip(("weights", "kept_pct", "code_bits", "index_bits", "rate_pct"), p)),
        })
    totals = report.totals()
    return {
        "name": run, "model": name, "variant": variant, "title": f"{paper['title']}, {variant} config",
        "config": str(config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path),
        "dense_weight_bytes": report.dense_weight_bytes, "dense_file_bytes": model_path.stat().st_size,
        "file_bytes": file_bytes, "ratio": round(report.dense_weight_bytes / file_bytes, 2),
        "dc_onnx_ratio": round(report.dense_weight_bytes / file_bytes, 2),
        "dcz_bytes": dcz_bytes, "dcz_ratio": round(report.dense_weight_bytes / dcz_bytes, 2),
        "layers_ratio": totals["layers_ratio"], "kept_pct": totals["kept_pct"],
        "top1_error_before": before, "top1_error_after": after,
        "paper": {"top1_error_before": paper["error_ref"], "top1_error_after": paper["error_compressed"],
                  "ratio": paper["ratio"], "total": dict(zip(("weights", "kept_pct", "code_bits", "index_bits",
                                                              "rate_pct"), paper["total"]))},
        "goal": {"dc_onnx_ratio_at_least": _goal(variant, name, "dc_onnx_ratio"),
                 "dcz_ratio_at_least": _goal(variant, name, "dcz_ratio"),
                 "top1_error_at_most": paper["error_ref"] if variant == "best" else round(paper["error_ref"] + 0.1, 2)},
        "layers": layers, "schedule": trained.to_dict(), "seconds": round(time.perf_counter() - start, 1),
        "path": str(out_path), "dcz_path": str(dcz_path), "dense_model": str(model_path),
    }


def table(r: dict) -> str:
    """The paper's table layout, ours beside the paper's."""
    head = f"{'layer':<7}{'#weights':>9}{'kept %':>14}{'weight bits':>13}{'index bits':>12}{'P+Q rate %':>16}"
    lines = [f"{r['title']}: ours / paper", head, "-" * len(head)]
    for row in r["layers"]:
        p = row["paper"] or {}
        lines.append(f"{row['layer']:<7}{row['weights']:>9}{row['kept_pct']:>7.1f} /{p.get('kept_pct', '-'):>4}"
                     f"{row['code_bits']:>7} /{p.get('code_bits', '-'):>3}{row['index_bits']:>6} /{p.get('index_bits', '-'):>3}"
                     f"{row['rate_pct']:>9.2f} /{p.get('rate_pct', '-'):>5}")
    pt = r["paper"]["total"]
    lines.append("-" * len(head))
    lines.append(f"{'total':<7}{sum(x['weights'] for x in r['layers']):>9}{r['kept_pct']:>7.1f} /{pt['kept_pct']:>4}"
                 f"{'':>13}{'':>12}{100.0 / r['layers_ratio']:>9.2f} /{pt['rate_pct']:>5}")
    lines.append(f"layers (codes + indices + codebooks): {r['layers_ratio']:.1f}x, paper P+Q {r['paper']['ratio']:.0f}x; "
                 f"whole file {r['file_bytes']} B vs dense float32 weights {r['dense_weight_bytes']} B: {r['ratio']:.1f}x "
                 f"({100.0 / r['ratio']:.2f}%)")
    goal = r["goal"]
    wanted = [f"error <= {goal['top1_error_at_most']:.2f}%"]
    wanted += [f"{what} >= {goal[key]:.0f}x" for key, what in (("dc_onnx_ratio_at_least", ".dc.onnx"),
                                                                 ("dcz_ratio_at_least", ".dcz")) if goal[key]]
    lines.append(f"top-1 error: dense {r['top1_error_before']:.2f}% -> compressed {r['top1_error_after']:.2f}% "
                 f"(paper {r['paper']['top1_error_before']:.2f}% -> {r['paper']['top1_error_after']:.2f}%); "
                 f"goal {', '.join(wanted)}; {r['seconds']:.0f} s")
    lines.append("")
    lines.append(coded_table(r))
    return "\n".join(lines)


def coded_table(r: dict) -> str:
    """Per layer, in bits per kept weight: code and position as stored in the runnable file (fillers
    included), after entropy coding in the .dcz, and the entropy under the coder's model."""
    head = (f"{'layer':<7}{'kept':>7}{'code: packed':>14}{'coded':>7}{'entropy':>9}"
            f"{'position: packed':>18}{'coded':>7}{'entropy':>9}  models (codes; positions)")
    lines = [f"{r['name']}: {r['file_bytes']} B runnable ({r['dc_onnx_ratio']:.1f}x), "
             f"{r['dcz_bytes']} B packed ({r['dcz_ratio']:.1f}x); bits per kept weight", head, "-" * len(head)]

    def num(v) -> str:
        return "-" if v is None else f"{v:.2f}"

    for row in r["layers"]:
        c = row["coded"]
        if not c:
            lines.append(f"{row['layer']:<7}{'(stored as float32)':>30}")
            continue
        lines.append(f"{row['layer']:<7}{c['kept']:>7}{num(c['code_bits_packed']):>14}{num(c['code_bits_coded']):>7}"
                     f"{num(c['code_entropy_bits']):>9}{num(c['index_bits_packed']):>18}{num(c['index_bits_coded']):>7}"
                     f"{num(c['index_entropy_bits']):>9}  {c['codes_model']}; {c['positions_model']}")
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    """The paper's P+Q+H rows beside ours, per model and config."""
    head = f"{'model':<15}{'config':<22}{'kept %':>7}{'.dcz':>8}{'.dc.onnx':>10}{'top-1 error':>13}  goals met"
    lines = ["P+Q+H: whole files against the dense float32 weights", head, "-" * len(head)]
    for name in dict.fromkeys(r["model"] for r in results):
        paper = PAPER[name]
        lines.append(f"{name:<15}{'paper (Table 1)':<22}{paper['total'][1]:>7}{paper['ratio_pqh']:>7.0f}x"
                     f"{'-':>10}{paper['error_compressed']:>12.2f}%")
        for r in (x for x in results if x["model"] == name):
            g = r["goal"]
            met = [r["top1_error_after"] <= g["top1_error_at_most"]]
            met += [r[k] >= g[f"{k}_at_least"] for k in ("dcz_ratio", "dc_onnx_ratio") if g[f"{k}_at_least"]]
            lines.append(f"{'':<15}{r['variant']:<22}{r['kept_pct']:>7.1f}{r['dcz_ratio']:>7.1f}x"
                         f"{r['dc_onnx_ratio']:>9.1f}x{r['top1_error_after']:>12.2f}%  {'yes' if all(met) else 'NO'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=f"mnist:{ROOT.parent / 'shared' / 'data' / 'mnist'}")
    parser.add_argument("--models", nargs="+", choices=sorted(PAPER), default=["lenet_300_100", "lenet5"])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="paper: the paper's per-layer ratios and code widths; 32x: narrower codes so that the "
                             "file itself is >= 32x smaller than the dense weights; best: the smallest files at the "
                             "paper's reference error")
    parser.add_argument("--model-dir", default=str(ROOT / "models"), help="where the dense reference models are")
    parser.add_argument("--config-dir", default=str(ROOT / "models"),
                        help="where the configs ({model}.dc.yaml, .32x.dc.yaml, .best.dc.yaml) are")
    parser.add_argument("--out", default=str(ROOT / "out" / "reproduce"))
    parser.add_argument("--save-models", action="store_true", help="also copy the .dc.onnx files into models/")
    parser.add_argument("--json", default=str(ROOT / "out" / "reproduce_paper.json"))
    parser.add_argument("--tables-from", nargs="+", metavar="JSON",
                        help="train nothing: print the tables of earlier runs' JSON files (merged into --json)")
    args = parser.parse_args(argv)
    if args.tables_from:
        runs = [json.loads(Path(p).read_text()) for p in args.tables_from]
        merged = {"models": [m for run in runs for m in run["models"]], "seconds": sum(run["seconds"] for run in runs),
                  "data": runs[0]["data"], "from": args.tables_from}
        Path(args.json).write_text(json.dumps(merged, indent=2))
        for r in merged["models"]:
            print(table(r), end="\n\n")
        print(summary(merged["models"]))
        print(f"\nruns took {merged['seconds']:.0f} s together; wrote {args.json}")
        return 0
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = []
    for name in args.models:
        for variant in args.variants:
            results.append(reproduce(name, variant, args.data, out_dir, Path(args.model_dir), Path(args.config_dir)))
            if args.save_models:
                shutil.copyfile(results[-1]["path"], ROOT / "models" / f"{results[-1]['name']}.dc.onnx")
                if variant == "best":
                    shutil.copyfile(results[-1]["dcz_path"], ROOT / "models" / f"{results[-1]['name']}.dcz")
    wall = round(time.perf_counter() - start, 1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"models": results, "seconds": wall, "data": args.data}, indent=2))
    print()
    for r in results:
        print(table(r))
        print()
    print(summary(results))
    print()
    print(f"wall time {wall:.0f} s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
