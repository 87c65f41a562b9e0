"""Benchmark fidelity: data-free (magnitude + k-means) against data-aware compression, per model and setting.

    .venv/bin/python scripts/bench_fidelity.py [--json out/bench_fidelity.json] [--only NAME ...] [--limit N]
        [--settings 0.5/32,...] [--no-sequential] [--no-speed]

Models: mnist-8 (../shared/data/onnx), models/ LeNet-300-100 and LeNet-5, the torch fixtures
(tests/fixtures/torch), the real models of ../shared/data/real (photos: scikit-learn's
bundled samples and the shared sample images, cut into crops and flips; audio: the gtcrn
recording framed as each model's README says, states taken from running the original
model frame by frame). Settings: class_num 256 only, sparse 0.5 + class_num 32,
sparse 0.8 + class_num 16 (LeNet-300-100 also sparse 0.9 + class_num 32).

Per row: fidelity on the held-out samples (worst output: max relative L2, min cosine, min
top-1 agreement) for data-free and data-aware; MNIST test accuracy where labels exist;
the .dcz ratio (original file bytes / packed bytes) of the data-aware model; seconds of the
data-aware compress (collection, passes, lowering, fidelity); the number of sequential
waves. The streaming speech models are also run closed-loop (each model fed back its own
states over the recording, as in real use, so state errors carry into later frames): the
cosine and relative L2 of their non-state outputs. Label-free fine-tuning on top is
measured by scripts/bench_distill.py.
A speed row runs an ~11 MB MLP with 256 MNIST samples through the data-aware passes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import onnx_dc  # noqa: E402
from onnx_dc.calibrate import fidelity  # noqa: E402
from onnx_dc.data.calib import parse_calib_spec  # noqa: E402
from onnx_dc.graph.io import write_model  # noqa: E402
from calib_audio import AUDIO_MODELS, audio_cases, stream_fidelity  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
REAL = SHARED / "real"
MNIST = SHARED / "mnist"
SETTINGS = [(0.0, 256), (0.5, 32), (0.8, 16)]


def worst(fid) -> dict:
    """The worst output of a Fidelity: max rel L2, min cosine, min top-1 agreement."""
    tops = [o.top1 for o in fid.outputs if o.top1 is not None]
    return {"rel_l2": round(max(o.rel_l2 for o in fid.outputs), 5), "cosine": round(min(o.cosine for o in fid.outputs), 5),
            "top1": round(min(tops), 5) if tops else None, "outputs": len(fid.outputs), "samples": fid.samples}


def photos_folder(tmp: Path, name: str, n: int, size: tuple[int, int]) -> Path:
    from calib_images import write_folder

    return write_folder(tmp / name, n, (size[0] + 16, size[1] + 16), seed=7, suffix=".jpg")


def cases(tmp: Path, limit: int) -> list[tuple[str, Path, object, bool]]:
    """(name, model, calib spec, has MNIST labels)."""
    mnist = parse_calib_spec(f"mnist:{MNIST}", limit=limit)
    out = [("mnist-8", SHARED / "onnx" / "mnist-8.onnx", mnist, True),
           ("lenet-300-100", ROOT / "models" / "lenet_300_100.onnx", mnist, True),
           ("lenet-5", ROOT / "models" / "lenet5.onnx", mnist, True)]
    fx = ROOT / "tests" / "fixtures" / "torch"
    rng = np.random.default_rng(0)
    np.savez(tmp / "bn.npz", x=rng.normal(size=(limit + 64, 1, 12, 12)).astype(np.float32))
    np.savez(tmp / "shared.npz", x=rng.normal(size=(limit + 64, 32)).astype(np.float32))
    out += [("torch-lenet", fx / "lenet.torchscript.onnx", mnist, True),
            ("torch-mlp", fx / "mlp.dynamo.onnx", mnist, True),
            ("torch-bn_cnn", fx / "bn_cnn.dynamo.onnx", parse_calib_spec(f"npz:{tmp / 'bn.npz'}", limit=limit), False),
            ("torch-shared", fx / "shared.torchscript.onnx", parse_calib_spec(f"npz:{tmp / 'shared.npz'}", limit=limit), False)]
    n = min(limit, 64) * 5 // 4
    out += [
        ("superres", REAL / "superres" / "pytorch_super_resolution.onnx",
         parse_calib_spec(f"images:{photos_folder(tmp, 'sr', n, (224, 224))}", size="224,224", channels="gray"), False),
        ("fastestdet", REAL / "fastestdet" / "FastestDet.onnx",
         parse_calib_spec(f"images:{photos_folder(tmp, 'fd', n, (352, 352))}", size="352,352", channels="bgr"), False),
        ("resnet20", REAL / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx",
         parse_calib_spec(f"images:{photos_folder(tmp, 'rn', n, (32, 32))}", size="32,32", mean="0.485,0.456,0.406",
                          std="0.229,0.224,0.225"), False),
        ("ultraface-slim", REAL / "ultraface" / "version-slim-320.onnx",
         parse_calib_spec(f"images:{photos_folder(tmp, 'uf', n, (240, 320))}", size="240,320", scale=1.0, mean=127,
                          std=128), False),
    ]
    out += [(name, model, parse_calib_spec(f"npz:{npz}", limit=limit), False) for name, model, npz in audio_cases(tmp)]
    return out


def one_row(name: str, model: Path, calib, labeled: bool, sparse: float, k: int, tmp: Path,
            sequential: bool = True) -> dict:
    row = {"model": name, "sparse_ratio": sparse, "class_num": k, "calib_limit": calib.limit}
    try:
        t = time.perf_counter()
        free = onnx_dc.compress(model, None, sparse_ratio=sparse, class_num=k)
        row["free_seconds"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        aware = onnx_dc.compress(model, tmp / "aware.dc.onnx", {"calib": {"sequential": sequential}},
                                 sparse_ratio=sparse, class_num=k, calib=calib)
        row["aware_seconds"] = round(time.perf_counter() - t, 2)
    except onnx_dc.OnnxDcError as exc:
        row["error"] = str(exc)[:160]
        return row
    row["free"] = worst(fidelity(free.model, model, calib))
    row["aware"] = worst(aware.fidelity)
    row["calib_samples"] = len(aware.calib.data.calib)
    row["waves"] = aware.calib.result.waves
    row["passes"] = aware.calib.result.passes_ran()
    row["culprits"] = [n for n, _ in aware.fidelity.culprits]
    row["dcz_ratio"] = round(model.stat().st_size / onnx_dc.pack(tmp / "aware.dc.onnx", tmp / "aware.dcz"), 2)
    if name in AUDIO_MODELS:  # streaming models: also fed back their own states, frame after frame
        row["free_stream"], row["aware_stream"] = stream_fidelity(name, free.model, tmp / "aware.dc.onnx")
    if labeled:
        row["acc_dense"] = onnx_dc.evaluate(model, f"mnist:{MNIST}").accuracy
        row["acc_free"] = onnx_dc.evaluate(free.model, f"mnist:{MNIST}").accuracy
        row["acc_aware"] = onnx_dc.evaluate(aware.model, f"mnist:{MNIST}").accuracy
    return row


def speed_row(tmp: Path) -> dict:
    """An ~11 MB MLP (784-1536-1024-10) with 256 MNIST samples through the data-aware passes."""
    rng = np.random.default_rng(0)
    sizes, nodes, inits, cur = (784, 1536, 1024, 10), [], [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(a), (b, a)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes.append(oh.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [f"h{i}"], name=f"fc{i}", transB=1))
        cur = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append(oh.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    g = oh.make_graph(nodes, "big", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])],
                      [oh.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", 10])], inits)
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp / "big.onnx"
    write_model(model, path)
    calib = parse_calib_spec(f"mnist:{MNIST}", limit=256)
    t = time.perf_counter()
    result = onnx_dc.compress(path, None, sparse_ratio=0.5, class_num=32, calib=calib)
    total = time.perf_counter() - t
    return {"model": "mlp-784-1536-1024-10", "mbytes": round(path.stat().st_size / 1e6, 2), "samples": 256,
            "seconds_total": round(total, 2), "seconds_collect": round(result.calib.collected.seconds, 2),
            "passes": result.calib.result.passes_ran()}


def table(rows: list[dict]) -> str:
    """Readable table: N is the number of calibration samples (photo folders hold 80 images: 64 + 16 held out)."""
    head = f"{'model':<15} {'sp':>4} {'K':>4} {'N':>5} | {'free cos':>8} {'top1':>6} {'relL2':>6} | {'aware cos':>9} {'top1':>6} " \
           f"{'relL2':>6} | {'acc dense/free/aware':>20} | {'dcz x':>6} {'sec':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<15} {r['sparse_ratio']:>4} {r['class_num']:>4} {'-':>5} | "
                         f"error: {r['error'][:90]}")
            continue
        f, a = r["free"], r["aware"]
        fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
        acc = "/".join(fmt(r.get(k)) for k in ("acc_dense", "acc_free", "acc_aware")) if "acc_dense" in r else "-"
        lines.append(f"{r['model']:<15} {r['sparse_ratio']:>4} {r['class_num']:>4} {r['calib_samples']:>5} | {f['cosine']:8.4f} {fmt(f['top1']):>6} "
                     f"{f['rel_l2']:6.3f} | {a['cosine']:9.4f} {fmt(a['top1']):>6} {a['rel_l2']:6.3f} | {acc:>20} | "
                     f"{r['dcz_ratio']:6.1f} {r['aware_seconds']:6.1f}")
    return "\n".join(lines)


def stream_line(row: dict) -> str:
    """Closed-loop fidelity of a streaming model's outputs, data-free and data-aware."""
    parts = [f"{k} {row['free_stream'][k]['cosine']:.4f} -> {v['cosine']:.4f} (rel L2 {v['rel_l2']:.3f})"
             for k, v in row["aware_stream"].items()]
    return f"{'':<15} closed loop, cosine free -> aware: " + "; ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=str(ROOT / "out" / "bench_fidelity.json"))
    ap.add_argument("--only", nargs="*", help="model names to run (default: all)")
    ap.add_argument("--limit", type=int, default=256, help="calibration samples (default 256; photos: at most 64)")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-sequential", action="store_true",
                    help="data-aware statistics from the original model alone (calib: sequential: false)")
    ap.add_argument("--settings", help="only these sparse/class_num pairs, e.g. 0.5/32,0.8/16")
    ap.add_argument("--speed-only", action="store_true", help="only the ~11 MB speed row")
    args = ap.parse_args()
    rows = []
    out = {"platform": platform.platform(), "python": platform.python_version(), "limit": args.limit,
           "sequential": not args.no_sequential,
           "rows": rows, "speed": None}

    def save() -> None:  # after every row: a long run that stops early still leaves its rows
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, model, calib, labeled in [] if args.speed_only else cases(tmp, args.limit):
            if args.only and name not in args.only:
                continue
            chosen = SETTINGS if not args.settings else [
                (float(a), int(b)) for a, b in (pair.split("/") for pair in args.settings.split(","))]
            settings = [(s, k, calib) for s, k in chosen]
            if name == "lenet-300-100" and not args.settings:  # the goal setting, at the default and at 1024 samples
                settings += [(0.9, 32, calib), (0.9, 32, dataclasses.replace(calib, limit=1024))]
            for sparse, k, spec in settings:
                rows.append(one_row(name, model, spec, labeled, sparse, k, tmp, not args.no_sequential))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                if "aware_stream" in rows[-1]:
                    print(stream_line(rows[-1]), flush=True)
                save()
        speed = out["speed"] = None if args.no_speed else speed_row(tmp)
    save()
    print()
    print(table(rows))
    if speed:
        print(f"\nspeed: {speed['model']} ({speed['mbytes']} MB), {speed['samples']} samples: "
              f"{speed['seconds_total']} s data-aware compress ({speed['seconds_collect']} s collection)")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
