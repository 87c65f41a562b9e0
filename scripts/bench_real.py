"""Real models past 8 bits: packed size against fidelity, onnx_dc's methods and onnxruntime's quantizers.

Every model of ../shared/data/real (minilm included), each at about 4x, 8x, 12x and 16x smaller than its
.onnx file, written as a .dcz (onnx_dc.pack), by each method of METHODS:

    ~4x:  class_num 256, no pruning          ~8x:  sparse 0.5 / class_num 32
    ~12x: sparse 0.7 / class_num 16          ~16x: sparse 0.8 / class_num 16

The label is only the target: the ratio reported is measured, original .onnx file bytes / .dcz bytes.
Methods built today:

* data-free: prune by magnitude, plain k-means (onnx_dc.compress without samples);
* data-aware: the data-aware passes (onnx_dc.compress(calib=...));
* data-aware + joint: the same with ``calib: joint`` (the mask by OBS saliency with error compensation,
  codes GPTQ's way from the re-solved weights: onnx_dc/passes/joint.py);
* data-aware + channel: the same with ``codebook: channel`` (the layer's codebook times a float16 scale
  per output channel, codebook and scales refit in turn: onnx_dc/passes/share.py, refit.py);
* data-aware + group: the same with ``codebook: group:G`` (G = GROUP_ROWS output channels per codebook,
  each group's k values refit on its rows: onnx_dc/passes/share.py, refit.py);
* data-aware + blocks: the same with ``calib: blocks`` (each block trained alone in onnxruntime-training
  to reproduce the original block's output: onnx_dc/train/blocks.py);
* data-aware + label-free fine-tuning (compress(calib=..., epochs=N)), with --finetune only (slow);
* data-aware + size target: not the uniform settings above but ``compress --calib --target-ratio R``
  with R the target (4, 8, 12, 16): per layer the sparse_ratio / class_num (or dense) of a sensitivity
  sweep on the same samples (SWEEP_GRID, every layer alone at every setting; as compress does, the model
  run at 2 settings per layer and the other points estimated from the layer's own output error,
  onnx_dc/analysis/estimate.py; --no-sweep-estimate measures every point), chosen by a knapsack over
  bytes and measured on the packed file (onnx_dc/analysis/target.py). The sweep's output errors and the
  rounds are judged on the pool's samples that are neither calibration nor held-out ones
  (selection_spec), so that the row's held-out fidelity is measured on samples nothing was chosen by;
  a pool with none left judges on the held-out part, and the row's note says so. The sweep runs once
  per model, in two worker processes; its seconds are
  the first target's row's ``sweep_seconds`` (and its note), not in ``seconds``, which is the search's
  compress rounds, the packing and the held-out check.

Each is one entry of METHODS: name -> function(model path, settings, calib spec, output path) -> the
*.dc.onnx path; the size target's is SIZED (function(model path, target ratio, calib spec, output path,
work folder)).

Peers, once per model, in the same run (onnxruntime.quantization of the installed onnxruntime):
INT8 dynamic (QInt8 weights), static QDQ per channel (MinMax over the same calibration samples; when
it fails on the model as given, again after quant_pre_process, and the row says so) and 4-bit
MatMulNBits (MatMul4BitsQuantizer, block 32, symmetric). Their size is the output file's bytes; a peer
that fails carries its one-line error (and the step it failed in).

Fidelity of every row: onnx_dc.calibrate.fidelity against the original on the held-out samples of the
calibration spec (scripts/bench_distill.py's cases(): photo crops, the speech recording's streaming
feeds, minilm's tokenized sentences); worst cosine = min over the outputs. Task metric where there
is one: ResNet-20's top-1 agreement, MiniLM's nearest-neighbour agreement of sentence_embedding.
Seconds: compress + pack (data-aware: including compress's own held-out check), or the quantizer's run.

    python scripts/bench_real.py [--models cifar10-resnet20,minilm] [--targets 4,8,12,16] [--limit 64]
        [--sweep-ratios 0.3,0.5,0.7] [--sweep-class-nums 4,8,16,32,64]
        [--sweep-codebooks layer,channel] [--no-sweep-estimate] [--sweeps DIR]
        [--finetune [--epochs 2]] [--no-peers] [--json out/bench_real.json] [--plot out/bench_real.png]
        [--keep DIR] [--update]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

import bench_distill  # noqa: E402
import onnx_dc  # noqa: E402
from onnx_dc.calibrate import fidelity  # noqa: E402
from onnx_dc.data.calib import load_calib  # noqa: E402
from onnx_dc.errors import OnnxDcError  # noqa: E402

TARGETS = {  # target ratio -> compress settings
    4: {"sparse_ratio": 0.0, "class_num": 256},
    8: {"sparse_ratio": 0.5, "class_num": 32},
    12: {"sparse_ratio": 0.7, "class_num": 16},
    16: {"sparse_ratio": 0.8, "class_num": 16},
}
# model -> (column label, output name or None for the only output, Fidelity.to_dict() key)
TASKS = {
    "cifar10-resnet20": ("top-1 agreement", None, "top1_agreement"),
    "minilm": ("NN agreement", "sentence_embedding", "nn_agreement"),
}
NOT_REAL = ("lenet_300_100",)  # bench_distill's cases() also holds LeNet on MNIST: not a model of real/


def data_free(model: Path, settings: dict, calib, out: Path) -> Path:
    """Prune by magnitude and share with plain k-means; the samples are not used."""
    onnx_dc.compress(str(model), out, **settings)
    return out


def data_aware(model: Path, settings: dict, calib, out: Path) -> Path:
    """The data-aware passes (config ``calib:`` defaults) on the calibration samples."""
    onnx_dc.compress(str(model), out, calib=calib, **settings)
    return out


def data_aware_joint(model: Path, settings: dict, calib, out: Path) -> Path:
    """The data-aware passes with the joint mask and codes (config ``calib: joint: true``)."""
    onnx_dc.compress(str(model), out, config={"version": 1, "calib": {"joint": True}}, calib=calib, **settings)
    return out


def data_aware_channel(model: Path, settings: dict, calib, out: Path) -> Path:
    """The data-aware passes with a scale per output channel (setting ``codebook: channel``)."""
    onnx_dc.compress(str(model), out, calib=calib, codebook="channel", **settings)
    return out


GROUP_ROWS = 8  # output channels per codebook of "data-aware + group" (--group-rows)


def data_aware_group(model: Path, settings: dict, calib, out: Path) -> Path:
    """The data-aware passes with a codebook per GROUP_ROWS output channels (setting ``codebook: group:G``)."""
    onnx_dc.compress(str(model), out, calib=calib, codebook=f"group:{GROUP_ROWS}", **settings)
    return out


def data_aware_blocks(model: Path, settings: dict, calib, out: Path) -> Path:
    """The data-aware passes, then block reconstruction (config ``calib: blocks: true``)."""
    onnx_dc.compress(str(model), out, config={"version": 1, "calib": {"blocks": True}}, calib=calib, **settings)
    return out


def data_aware_finetuned(model: Path, settings: dict, calib, out: Path, schedule: dict) -> Path:
    """The data-aware passes, then label-free fine-tuning against the original's outputs."""
    rest = {k: v for k, v in schedule.items() if k != "epochs"}
    onnx_dc.compress(str(model), out, calib=calib, epochs=schedule["epochs"], schedule=rest, **settings)
    return out


METHODS: dict[str, Callable[[Path, dict, object, Path], Path]] = {
    "data-free": data_free,
    "data-aware": data_aware,
    "data-aware + joint": data_aware_joint,
    "data-aware + channel": data_aware_channel,
    "data-aware + group": data_aware_group,
    "data-aware + blocks": data_aware_blocks,
}
FINETUNED = "data-aware + label-free ft"

# the size target's sweep: pruned float32 alone, shared alone and every pair (curves.settings_grid)
DEFAULT_SWEEP_GRID = {"ratios": (0.3, 0.5, 0.7), "class_nums": (4, 8, 16, 32, 64), "codebooks": ("layer",),
                      "estimated": True}
SWEEP_GRID = dict(DEFAULT_SWEEP_GRID)  # this run's (main sets it from --sweep-ratios / -class-nums / -codebooks)
SWEEP_WORKERS = 2
_SWEEPS: dict[tuple, tuple] = {}  # (model path, grid) -> (Sensitivity, metric, judged words), once per run
SWEEP_DIR: list[Path] = []  # --sweeps DIR: each model's sweep is saved there and read again when its grid matches


def data_aware_sized(model: Path, target: int, calib, out: Path) -> tuple[Path, dict]:
    """``compress --calib SPEC --target-ratio target``: the sweep (once per model), then the knapsack's rounds.
    Returns the output and the row's extra fields (sweep seconds the first time, the rounds, the settings chosen)."""
    from collections import Counter

    from onnx_dc.analysis.metrics import Agreement
    from onnx_dc.analysis.sensitivity import run_sensitivity
    from onnx_dc.analysis.sweep import Runner
    from onnx_dc.analysis.target import compress_for_ratio

    extra: dict = {}
    key = (str(model), repr(sorted(SWEEP_GRID.items())))
    if key not in _SWEEPS:
        select, judged = _selection(calib, out.parent / f"select-{model.stem}")
        metric = Agreement(select, model.read_bytes())
        sens = _saved_sweep(model, calib, select is not calib)
        if sens is not None:
            extra["sweep_read"] = f"{sens[1].name} ({sens[0].seconds:.0f} s when measured)"
            sens = sens[0]
        else:
            start = time.perf_counter()
            sens = run_sensitivity(str(model), metric, runner=Runner(workers=SWEEP_WORKERS), calib=calib, **SWEEP_GRID)
            extra["sweep_seconds"] = round(time.perf_counter() - start, 1)
            _save_sweep(sens, model, calib, select is not calib)
        _SWEEPS[key] = (sens, metric, judged)
    sens, metric, judged = _SWEEPS[key]
    _, chosen = compress_for_ratio(str(model), str(out), metric, float(target), sens, None, calib)
    kinds = Counter("dense" if "skip" in n else f"{n['sparse_ratio']:g}/{n.get('class_num', 'f32')}"
                    + (f" {n['codebook']}" if "codebook" in n else "") for n in chosen.chosen.config["nodes"])
    how = " (estimated: the model run at 2 settings per layer)" if SWEEP_GRID["estimated"] else ""
    sweep = (f"sweep {extra['sweep_seconds']:.0f} s{how}; " if "sweep_seconds" in extra
             else f"sweep read from {extra['sweep_read']}; " if "sweep_read" in extra else "")
    kind = "" if chosen.chosen.kind == "knapsack" else f"{chosen.chosen.kind} (measured better than the knapsack's); "
    extra.update(rounds=len(chosen.rounds), chosen=dict(kinds.most_common()), chosen_round=chosen.chosen.kind,
                 round_list=[{"kind": r.kind, "ratio": round(r.ratio, 3), "error": r.error} for r in chosen.rounds],
                 judged=judged, note=sweep + kind + "per layer: " + ", ".join(f"{k} x{v}" for k, v in kinds.most_common())
                 + f"; {judged}")
    return out, extra


def _selection(calib, folder: Path):
    """The spec the size target judges by (:func:`selection_spec`, else ``calib`` itself) and the row's words for it."""
    select = selection_spec(calib, folder)
    if select is None:
        return calib, "judged on the held-out samples (the pool has no others)"
    return select, f"judged on {select.limit} samples neither calibration nor held out"


def _sweep_file(model: Path, calib, selected: bool) -> Path | None:
    """Where --sweeps keeps a model's sweep of this run's grid (None without --sweeps)."""
    if not SWEEP_DIR:
        return None
    codebooks = "" if SWEEP_GRID["codebooks"] == ("layer",) else "-" + "-".join(c.replace(":", "") for c in SWEEP_GRID["codebooks"])
    tags = codebooks + ("-est" if SWEEP_GRID["estimated"] else "") + ("-select" if selected else "")
    return SWEEP_DIR[0] / f"{model.parent.name}-{model.stem}-{getattr(calib, 'limit', None)}{tags}.sweep.json"


def _saved_sweep(model: Path, calib, selected: bool):
    """(the sweep, its file) saved by an earlier run with this run's grid, else None."""
    from onnx_dc.analysis.curves import load_sensitivity

    saved = _sweep_file(model, calib, selected)
    if saved is None or not saved.is_file():
        return None
    sens = load_sensitivity(saved)
    grid = ({*sens.ratios} - {0.0}, {*sens.class_nums}, {*sens.codebooks}, any(p.estimated for p in sens.points))
    wanted = ({*SWEEP_GRID["ratios"]} - {0.0}, {*SWEEP_GRID["class_nums"]}, {*SWEEP_GRID["codebooks"]},
              SWEEP_GRID["estimated"])
    return (sens, saved) if grid == wanted else None


def _save_sweep(sens, model: Path, calib, selected: bool) -> None:
    saved = _sweep_file(model, calib, selected)
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(json.dumps(sens.to_dict(), indent=1))
        tmp.replace(saved)


def selection_spec(spec, folder: Path):
    """The samples the size target judges by: those of ``spec``'s pool (``images:DIR`` or ``npz:FILE``) that
    are neither its calibration nor its held-out samples, written to ``folder`` as a spec of the same kind
    with all of them calibration samples and none held out (onnx_dc.analysis.metrics.Agreement then measures
    on them); None when none are left (or the spec is of another kind)."""
    import numpy as np

    from onnx_dc.data.calib import image_files, split_indices

    if spec.kind == "images":
        files = image_files(Path(spec.path))
        n = len(files)
    elif spec.kind == "npz":
        with np.load(spec.path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        n = max((len(v) for v in arrays.values() if v.ndim), default=0)
    else:
        return None
    calib, held = split_indices(n, spec)
    unused = np.setdiff1d(np.arange(n), np.concatenate([calib, held]))
    if unused.size == 0:
        return None
    shutil.rmtree(folder, ignore_errors=True)  # this function's own folder, from an earlier call
    folder.mkdir(parents=True)
    if spec.kind == "images":
        for i in unused:
            (folder / files[i].name).symlink_to(files[i].resolve())
        path = folder
    else:
        path = folder / Path(spec.path).name
        np.savez(path, **{k: v[unused] if v.ndim and len(v) == n else v for k, v in arrays.items()})
    return replace(spec, path=str(path), limit=int(unused.size), holdout_limit=0)


SIZED = "data-aware + size target"


# --- peers ----------------------------------------------------------------------------------------


class _Reader:
    """onnxruntime's CalibrationDataReader over onnx_dc's calibration samples, one sample per feed."""

    def __init__(self, samples) -> None:
        self.samples = samples
        self.i = 0

    def get_next(self):
        if self.i >= len(self.samples):
            return None
        self.i += 1
        return self.samples.feed(self.i - 1)

    def rewind(self) -> None:
        self.i = 0


def int8_dynamic(model: Path, samples, out: Path) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(model), str(out), weight_type=QuantType.QInt8)
    return ""


def qdq_static(model: Path, samples, out: Path) -> str:
    """Static QDQ, per channel. On failure, again after quant_pre_process, then after converting to opset 13
    (per-channel QDQ needs it) and quant_pre_process; the note says which was needed."""
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    def pre_processed(src: Path) -> Path:
        pre = out.with_name(out.stem + ".pre.onnx")
        quant_pre_process(str(src), str(pre))
        return pre

    def opset13(src: Path) -> Path:
        from onnx import version_converter

        up = out.with_name(out.stem + ".opset13.onnx")
        onnx.save(version_converter.convert_version(onnx.load(str(src)), 13), str(up))
        return pre_processed(up)

    steps = (("as given", lambda: model), ("quant_pre_process", lambda: pre_processed(model)),
             ("opset 13 (onnx.version_converter) + quant_pre_process", lambda: opset13(model)))
    failed: list[str] = []
    for label, prepare in steps:
        try:
            quantize_static(str(prepare()), str(out), _Reader(samples), quant_format=QuantFormat.QDQ,
                            per_channel=True)
        except Exception as exc:  # onnxruntime's tool: any failure is the row's, and the next step is tried
            failed.append(f"{label}: {_line(exc)}")
            continue
        return f"needed {label} (as given: {failed[0].split(': ', 1)[1][:100]})" if failed else ""
    raise RuntimeError("; ".join(failed))


def matmul_4bits(model: Path, samples, out: Path) -> str:
    from onnxruntime.quantization.matmul_4bits_quantizer import MatMul4BitsQuantizer

    quant = MatMul4BitsQuantizer(onnx.load(str(model)), block_size=32, is_symmetric=True)
    quant.process()
    quant.model.save_model_to_file(str(out), use_external_data_format=False)
    return ""


PEERS = {"ort int8 dynamic": int8_dynamic, "ort qdq static per-channel": qdq_static,
         "ort MatMulNBits 4-bit": matmul_4bits}


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# --- measuring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One model: its file, calibration spec and (for --finetune) its training schedule."""

    name: str
    path: Path
    spec: object
    schedule: dict


def measure(case: Case, candidate: Path) -> dict:
    """Fidelity of ``candidate`` against the original on the held-out samples: worst cosine, worst relative L2,
    the task metric, and the per-output values."""
    fid = fidelity(candidate, case.path, case.spec).to_dict()
    outs = fid["outputs"]
    got = {"worst_cosine": min(o["cosine"] for o in outs), "worst_rel_l2": max(o["rel_l2"] for o in outs),
           "heldout": fid["samples"], "outputs": outs}
    if case.name in TASKS:
        label, output, key = TASKS[case.name]
        one = next(o for o in outs if output is None or o["name"] == output)
        got["task"] = {"metric": label, "output": one["name"], "value": one[key]}
    return got


def bench_method(case: Case, method: str, fn: Callable, target: int, work: Path) -> dict:
    settings = TARGETS[target] if method != SIZED else {"target_ratio": target, **SWEEP_GRID}
    row = {"model": case.name, "method": method, "target": f"~{target}x" if method != SIZED else f">={target}x",
           "settings": settings, "original_bytes": case.path.stat().st_size}
    stem = work / f"{case.name}-{method.replace(' ', '_')}-{target}x"
    dc, dcz = stem.with_suffix(".dc.onnx"), stem.with_suffix(".dcz")
    for f in (dc, dcz):
        f.unlink(missing_ok=True)  # our own output of an earlier run in --keep DIR
    start = time.perf_counter()
    try:
        if method == SIZED:
            extra = fn(case.path, target, case.spec, dc)[1]
            row.update(extra)
            start += extra.get("sweep_seconds", 0.0)
        else:
            fn(case.path, settings, case.spec, dc)
        onnx_dc.pack(dc, dcz)
    except (OnnxDcError, FileNotFoundError) as exc:
        row.update(seconds=round(time.perf_counter() - start, 2), error=_line(exc))
        return row
    row["seconds"] = round(time.perf_counter() - start, 2)
    row["bytes"] = dcz.stat().st_size
    row["ratio"] = row["original_bytes"] / row["bytes"]
    row["file"] = dcz.name
    row.update(measure(case, dcz))
    return row


def bench_peer(case: Case, name: str, fn: Callable, samples, work: Path) -> dict:
    row = {"model": case.name, "method": name, "target": "peer", "original_bytes": case.path.stat().st_size}
    out = work / f"{case.name}-{name.replace(' ', '_')}.onnx"
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        note = fn(case.path, samples, out)
    except Exception as exc:  # onnxruntime's quantizers: whatever they end in is the row's result
        row.update(seconds=round(time.perf_counter() - start, 2), error=f"quantize: {_line(exc)}")
        return row
    row.update(seconds=round(time.perf_counter() - start, 2), bytes=out.stat().st_size, file=out.name)
    row["ratio"] = row["original_bytes"] / row["bytes"]
    if note:
        row["note"] = note
    try:
        row.update(measure(case, out))
    except Exception as exc:  # e.g. an operator onnxruntime's CPU build does not run
        row["error"] = f"run: {_line(exc)}"
    return row


def bench_model(case: Case, targets: list[int], methods: dict, peers: bool, work: Path, done) -> None:
    for target in targets:
        for method, fn in methods.items():
            print(f"  {method} ~{target}x ...", flush=True)
            done(bench_method(case, method, fn, target, work))
    if peers:
        samples = load_calib(case.spec, onnx.load(str(case.path))).calib
        for name, fn in PEERS.items():
            print(f"  {name} ...", flush=True)
            done(bench_peer(case, name, fn, samples, work))


# --- output ---------------------------------------------------------------------------------------


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def table(rows: list[dict]) -> str:
    """One line per row: model, method, target, measured ratio, bytes, worst cosine, task metric, seconds."""
    lines = ["| model | method | target | ratio | bytes | worst cosine | task metric | s | note / error |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in rows:
        task = r.get("task")
        metric = f"{task['metric']} {_cell(task['value'], '.4f')}" if task else ""
        note = "; ".join(x for x in (r.get("note"), r.get("error")) if x).replace("|", "/")
        lines.append(f"| {r['model']} | {r['method']} | {r['target']} | {_cell(r.get('ratio'), '.2f')} | "
                     f"{_cell(r.get('bytes'), ',')} | {_cell(r.get('worst_cosine'), '.4f')} | {metric} | "
                     f"{r['seconds']:.0f} | {note} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Worst-output cosine against the measured ratio: one panel per model, a line per method, peers as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    cols = min(3, len(models))
    nrows = -(-len(models) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.8 * nrows), squeeze=False)
    markers = dict(zip(PEERS, "sD^"))
    for ax, model in zip(axes.flat, models):
        mine = [r for r in rows if r["model"] == model and r.get("worst_cosine") is not None]
        for method in dict.fromkeys(r["method"] for r in mine if r["target"] != "peer"):
            pts = sorted((r["ratio"], r["worst_cosine"]) for r in mine if r["method"] == method)
            ax.plot(*zip(*pts), "o-", label=method)
        for r in mine:
            if r["target"] == "peer":
                ax.plot(r["ratio"], r["worst_cosine"], markers.get(r["method"], "x"), color="black",
                        markerfacecolor="none", label=r["method"])
        ax.set_title(model)
        ax.set_xlabel("ratio (.onnx bytes / compressed bytes)")
        ax.set_ylabel("worst-output cosine")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    global GROUP_ROWS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated subset (default: every model of ../shared/data/real)")
    parser.add_argument("--targets", default="4,8,12,16", help=f"comma-separated subset of {sorted(TARGETS)}")
    parser.add_argument("--limit", type=int, default=64, help="calibration samples per model (default 64)")
    parser.add_argument("--methods", help="comma-separated subset of the methods (default: all of them)")
    parser.add_argument("--sweep-ratios", help="the size target's sweep: sparse ratios (default "
                        f"{','.join(map(str, DEFAULT_SWEEP_GRID['ratios']))})")
    parser.add_argument("--sweep-class-nums", help="the size target's sweep: class_nums (default "
                        f"{','.join(map(str, DEFAULT_SWEEP_GRID['class_nums']))})")
    parser.add_argument("--sweep-codebooks", help="the size target's sweep: codebooks, layer, channel and / or "
                        "group:G (default layer)")
    parser.add_argument("--group-rows", type=int, default=GROUP_ROWS,
                        help=f"output channels per codebook of data-aware + group (default {GROUP_ROWS})")
    parser.add_argument("--sweep-estimate", action=argparse.BooleanOptionalAction, default=True,
                        help="the size target's sweep measures the model at 2 settings per layer and estimates the "
                        "rest (onnx_dc.analysis.estimate), as compress --calib --target-ratio does (default); "
                        "--no-sweep-estimate measures every point")
    parser.add_argument("--sweeps", help="save each model's size-target sweep in this folder (MODEL.sweep.json) "
                        "and read it from there when its grid matches this run's")
    parser.add_argument("--finetune", action="store_true", help="add data-aware + label-free fine-tuning (slow)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fine-tuning stage (default 2)")
    parser.add_argument("--no-peers", action="store_true", help="skip onnxruntime.quantization's rows")
    parser.add_argument("--json", default=str(ROOT / "out" / "bench_real.json"))
    parser.add_argument("--plot", default=str(ROOT / "out" / "bench_real.png"))
    parser.add_argument("--keep", help="write the compressed files into this folder (default: a temporary one)")
    parser.add_argument("--update", action="store_true",
                        help="keep the JSON's rows of (model, method, target) not run now")
    args = parser.parse_args()
    targets = [int(t) for t in args.targets.split(",")]
    SWEEP_GRID.update(DEFAULT_SWEEP_GRID)
    if args.sweep_ratios:
        SWEEP_GRID["ratios"] = tuple(float(r) for r in args.sweep_ratios.split(","))
    if args.sweep_class_nums:
        SWEEP_GRID["class_nums"] = tuple(int(k) for k in args.sweep_class_nums.split(","))
    if args.sweep_codebooks:
        SWEEP_GRID["codebooks"] = tuple(args.sweep_codebooks.split(","))
    SWEEP_GRID["estimated"] = args.sweep_estimate
    GROUP_ROWS = args.group_rows
    SWEEP_DIR[:] = [Path(args.sweeps)] if args.sweeps else []
    _SWEEPS.clear()
    if unknown := [t for t in targets if t not in TARGETS]:
        parser.error(f"--targets: {unknown} not among {sorted(TARGETS)}")
    json_path = Path(args.json)
    old = json.loads(json_path.read_text())["rows"] if args.update and json_path.is_file() else []
    rows: list[dict] = []
    started = time.perf_counter()

    def write() -> None:  # after every row, so that a long run leaves its results so far
        key = lambda r: (r["model"], r["method"], r["target"])  # noqa: E731
        now = {key(r) for r in rows}
        out = {"machine": platform.platform(), "python": platform.python_version(),
               "onnxruntime": _ort_version(), "limit": args.limit, "targets": TARGETS,
               "seconds": round(time.perf_counter() - started, 1),
               "rows": [r for r in old if key(r) not in now] + rows}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=1))

    def done(row: dict) -> None:
        rows.append(row)
        print("    " + (row.get("error") or f"ratio {row['ratio']:.2f}, worst cosine {row['worst_cosine']:.4f}"),
              flush=True)
        write()

    with tempfile.TemporaryDirectory(prefix="bench_real_") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        all_cases = bench_distill.cases(Path(tmp), args.epochs, args.limit, audio_limit=args.limit)
        names = args.models.split(",") if args.models else [n for n in all_cases if n not in NOT_REAL]
        if unknown := [n for n in names if n not in all_cases]:
            parser.error(f"--models: {unknown} not among {sorted(all_cases)}")
        for name in names:
            print(f"{name} ...", flush=True)
            try:
                made = all_cases[name]()
            except (OnnxDcError, FileNotFoundError) as exc:
                done({"model": name, "method": "", "target": "", "seconds": 0.0, "error": _line(exc)})
                continue
            case = Case(name, made["path"], made["spec"], made["schedule"])
            methods = dict(METHODS) | {SIZED: data_aware_sized}
            if args.finetune:
                methods[FINETUNED] = lambda m, s, c, o, sched=case.schedule: data_aware_finetuned(m, s, c, o, sched)
            if args.methods:
                methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}
            bench_model(case, targets, methods, not args.no_peers, work, done)
    rows = json.loads(json_path.read_text())["rows"]
    print(table(rows))
    if args.plot:
        plot(rows, Path(args.plot))
        print(f"wrote {args.plot}")
    print(f"wrote {args.json} ({time.perf_counter() - started:.0f} s)")
    return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    sys.exit(main())
