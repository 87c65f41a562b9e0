"""Finer shared values, layer by layer: one codebook per layer against a per-output-channel scale times the
layer's codebook, and a codebook per group of rows (measured before the format carried them; it now carries
both, ``codebook: channel`` and ``codebook: group:G``).

For each real model (scripts/bench_distill.py's cases: the calibration samples, photo crops or
tokenized sentences) and each compressed layer with input statistics ``H = E[x x^T]``, the
layer is pruned and re-solved as the data-aware passes do (activation pruning, reconstruct), then
its kept weights are shared three ways with K values:

    layer:    W_q[o, i] = c[code]                          (one weighted k-means over the layer)
    channel:  W_q[o, i] = s_o * c[code],  s_o = RMS of row o's kept weights  (k-means of W / s_o,
              weighted by E[x_i^2] s_o^2, so it minimises the same weighted error)
    group:G:  W_q[o, i] = c_g(o)[code]                     (G contiguous groups of rows, K values each)

and scored by the relative output error of the layer on the calibration inputs,

    e = sum_g (W - W_q)_g H_g (W - W_q)_g^T / sum_g W_g H_g W_g^T

against the extra bytes each adds (channel: one float16 scale per row; group: (G - 1) * K float32
values). No compressed file is written: this measures which granularity wins where, before the
decoders, the .dcz and the report learn it. Statistics are measured on the original model (not
wave by wave), so e is each layer alone.

    python scripts/bench_codebooks.py [--models cifar10-resnet20,fastestdet,superres,minilm]
        [--class-nums 16,32] [--groups 4] [--limit 32] [--json out/bench_codebooks.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_distill  # noqa: E402
from onnx_dc.api import prepare  # noqa: E402
from onnx_dc.calibrate import collect_calib_stats  # noqa: E402
from onnx_dc.numerics.kmeans import kmeans_1d  # noqa: E402
from onnx_dc.passes.data_aware import kmeans_importance, original_weights  # noqa: E402
from onnx_dc.passes.prune_activation import prune_layer_by_activation  # noqa: E402
from onnx_dc.passes.reconstruct import reconstruct_layer  # noqa: E402
from onnx_dc.passes.refit import output_error  # noqa: E402


def quantize(values: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """``values`` replaced by the nearest of ``k`` weighted k-means centroids (no values: unchanged)."""
    if values.size == 0:
        return values
    result = kmeans_1d(values, k, "linear", weights=weights)
    return result.centroids[result.labels]


def share_ways(w2: np.ndarray, keep2: np.ndarray, h2: np.ndarray, groups: np.ndarray, k: int,
               n_groups: int) -> dict[str, np.ndarray]:
    """The kept weights ``[out, in]`` shared the three ways of the module docstring (pruned stay 0)."""
    out: dict[str, np.ndarray] = {}
    kept, imp = w2[keep2], h2[keep2]
    layer = np.zeros_like(w2)
    layer[keep2] = quantize(kept, imp, k)
    out["layer"] = layer
    rms = np.sqrt(np.sum(np.where(keep2, w2, 0) ** 2, axis=1) / np.maximum(keep2.sum(axis=1), 1))
    half = rms.astype(np.float16).astype(np.float64)  # stored as float16: a scale that under- or overflows is 1
    scale = np.where((half > 0) & np.isfinite(half), half, 1.0)[:, None]
    scaled = np.zeros_like(w2)
    normalized = (w2 / scale)[keep2]
    scaled[keep2] = quantize(normalized, (h2 * scale**2)[keep2], k)
    out["channel"] = scaled * scale
    grouped = np.zeros_like(w2)
    for rows in np.array_split(np.arange(w2.shape[0]), n_groups):
        part = keep2[rows]
        block = np.zeros((rows.size, w2.shape[1]))
        block[part] = quantize(w2[rows][part], h2[rows][part], k)
        grouped[rows] = block
    out[f"group:{n_groups}"] = grouped
    return out


def bench_model(name: str, class_nums: list[int], n_groups: int, limit: int, folder: Path) -> list[dict]:
    """Per (class_num, way): the mean relative output error over the layers, and the extra bytes."""
    case = bench_distill.cases(folder, epochs=1, limit=limit, audio_limit=limit)[name]()
    rows = []
    for k in class_nums:
        state = prepare(str(case["path"]), sparse_ratio=case["settings"]["sparse_ratio"], class_num=k)
        stats = collect_calib_stats(state, case["spec"]).stats
        errors: dict[str, list[float]] = {}
        extra = {"layer": 0, "channel": 0, f"group:{n_groups}": 0}
        start = time.perf_counter()
        for wname, st in stats.items():
            if len(st.pieces()) > 1 or st.stats.hessian() is None or st.view.lookup:
                continue  # one view with a full H: the error above is exact for it
            layer, original = state.layers[wname], original_weights(state, wname)
            prune_layer_by_activation(layer, st)
            reconstruct_layer(layer, original, st)
            index = st.view.index
            w2 = layer.weights.ravel()[index].astype(np.float64)
            keep2 = np.ones(index.shape, bool) if layer.mask is None else layer.mask.ravel()[index]
            h2 = kmeans_importance(st, layer.weights.shape).ravel()[index]
            groups, h = st.view.group_of_rows(), st.stats.hessian()
            full = output_error(original.ravel()[index], np.zeros_like(w2), h, groups)
            for way, wq2 in share_ways(w2, keep2, h2, groups, k, n_groups).items():
                err = output_error(original.ravel()[index], wq2, h, groups)
                errors.setdefault(way, []).append(err / max(full, 1e-30))
            extra["channel"] += 2 * index.shape[0]
            extra[f"group:{n_groups}"] += 4 * k * (n_groups - 1)
        for way, errs in errors.items():
            rows.append({"model": name, "class_num": k, "way": way, "layers": len(errs),
                         "mean_rel_error": float(np.mean(errs)), "median_rel_error": float(np.median(errs)),
                         "extra_bytes": extra[way], "seconds": round(time.perf_counter() - start, 1)})
            print(f"{name:<18} K={k:<3} {way:<9} layers {len(errs):>3}  mean e {np.mean(errs):.4f}  "
                  f"median {np.median(errs):.4f}  +{extra[way]} B", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cifar10-resnet20,fastestdet,superres,minilm")
    parser.add_argument("--class-nums", default="16,32")
    parser.add_argument("--groups", type=int, default=4, help="row groups of the group:G way (default 4)")
    parser.add_argument("--limit", type=int, default=32, help="calibration samples (default 32)")
    parser.add_argument("--json", default=str(ROOT / "out" / "bench_codebooks.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_codebooks_") as tmp:
        for name in args.models.split(","):
            rows += bench_model(name, [int(k) for k in args.class_nums.split(",")], args.groups, args.limit, Path(tmp))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
