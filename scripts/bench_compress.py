"""Benchmark compression: sizes, ratios and time, and 1-D k-means against scikit-learn.

    .venv/bin/python scripts/bench_compress.py [--json out/bench_compress.json] [--skip-sklearn-1e7]

Models: the ONNX zoo mnist-8 (../shared/data/onnx/mnist-8.onnx) and one 4096x4096 Gemm
with normally distributed weights, each at a few settings. K-means: the project's sorted
1-D Lloyd against scikit-learn's KMeans (n_init=1, k-means++ from the same seed, and
the default tolerance) on 1e6 and 1e7 normal weights, K=32. Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper as oh
from onnx import numpy_helper

import onnx_dc
from onnx_dc.graph.io import write_model
from onnx_dc.numerics.kmeans import kmeans_1d

ROOT = Path(__file__).resolve().parents[1]
MNIST8 = ROOT.parent / "shared" / "data" / "onnx" / "mnist-8.onnx"
SETTINGS = [
    {"sparse_ratio": 0.5, "class_num": 32},
    {"class_num": 16},
    {"sparse_ratio": 0.9, "class_num": 32},
]


def gemm_4096() -> onnx.ModelProto:
    w = np.random.default_rng(0).normal(0, 0.02, (4096, 4096)).astype(np.float32)
    g = oh.make_graph([oh.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "gemm",
                      [oh.make_tensor_value_info("x", 1, ["N", 4096])], [oh.make_tensor_value_info("y", 1, ["N", 4096])],
                      [numpy_helper.from_array(w, "w")])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def bench_models(tmp: Path) -> list[dict]:
    models = {"gemm-4096x4096": tmp / "gemm.onnx"}
    write_model(gemm_4096(), models["gemm-4096x4096"])
    if MNIST8.is_file():
        models = {"mnist-8": MNIST8, **models}
    rows = []
    for name, path in models.items():
        for settings in SETTINGS:
            out = tmp / f"{name}.dc.onnx"
            start = time.perf_counter()
            result = onnx_dc.compress(path, out, **settings)
            seconds = time.perf_counter() - start
            totals = result.report.totals()
            rows.append({
                "model": name, "settings": settings, "bytes_in": path.stat().st_size, "bytes_out": out.stat().st_size,
                "ratio_vs_file": round(path.stat().st_size / out.stat().st_size, 2),
                "ratio_vs_dense_weights": totals.get("ratio_vs_dense_weights"),
                "compress_seconds": round(seconds, 3),
            })
    return rows


def bench_kmeans(sizes: list[int], k: int, sklearn_max: int) -> list[dict]:
    from sklearn.cluster import KMeans

    rows = []
    for n in sizes:
        x = np.random.default_rng(1).normal(size=n).astype(np.float32)
        for init in ("linear", "kmeans++"):
            start = time.perf_counter()
            res = kmeans_1d(x, k, init, seed=0)
            rows.append({"n": n, "k": k, "method": f"onnx_dc 1-D Lloyd ({init})", "seconds": round(time.perf_counter() - start, 3),
                         "inertia": res.inertia, "iterations": res.iterations})
        if n <= sklearn_max:
            start = time.perf_counter()
            km = KMeans(k, n_init=1, random_state=0).fit(x.reshape(-1, 1))
            rows.append({"n": n, "k": k, "method": "sklearn KMeans (k-means++)", "seconds": round(time.perf_counter() - start, 3),
                         "inertia": float(km.inertia_), "iterations": int(km.n_iter_)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(ROOT / "out" / "bench_compress.json"))
    parser.add_argument("--skip-sklearn-1e7", action="store_true", help="scikit-learn takes ~40 s on 1e7 values")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = bench_models(Path(tmp))
    kmeans = bench_kmeans([10**6, 10**7], 32, 10**6 if args.skip_sklearn_1e7 else 10**7)
    result = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
              "compress": models, "kmeans": kmeans}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))

    print(f"{'model':16} {'settings':36} {'bytes in':>10} {'bytes out':>10} {'x file':>7} {'x weights':>9} {'seconds':>8}")
    for r in models:
        print(f"{r['model']:16} {json.dumps(r['settings']):36} {r['bytes_in']:>10} {r['bytes_out']:>10} "
              f"{r['ratio_vs_file']:>7.1f} {r['ratio_vs_dense_weights'] or 0:>9.1f} {r['compress_seconds']:>8.2f}")
    print()
    print(f"{'n':>9} {'k':>3} {'method':34} {'seconds':>8} {'inertia':>14} {'iters':>5}")
    for r in kmeans:
        print(f"{r['n']:>9} {r['k']:>3} {r['method']:34} {r['seconds']:>8.3f} {r['inertia']:>14.4f} {r['iterations']:>5}")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
