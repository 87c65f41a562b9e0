"""compress --target-drop against uniform settings of the same size, on MNIST models.

For each model and target D: the settings chosen from the sensitivity sweep (knapsack, then
measured back-off), and for each class_num the uniform sparse ratio (found by bisection to
0.005) whose layers take at most as many bytes as the chosen ones; both scored on the MNIST
test set. The sweep is read from out/sens/NAME.json when there (onnx-dc sensitivity --json
with the same data), else run. Writes out/bench_target_drop.json and prints a table.

    .venv/bin/python scripts/bench_target_drop.py [--targets 0.5,1.0] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx_dc  # noqa: E402
from onnx_dc.analysis.curves import load_sensitivity  # noqa: E402
from onnx_dc.analysis.metrics import Accuracy  # noqa: E402
from onnx_dc.analysis.sensitivity import run_sensitivity  # noqa: E402
from onnx_dc.analysis.sweep import Runner  # noqa: E402
from onnx_dc.analysis.target import compress_for_target  # noqa: E402

MODELS = {"lenet_300_100": ROOT / "models" / "lenet_300_100.onnx",
          "mnist8": ROOT.parent / "shared" / "data" / "onnx" / "mnist-8.onnx"}


def uniform_at_size(model: Path, class_num: int, max_bytes: int) -> tuple[float, int] | None:
    """The smallest uniform sparse ratio (to 0.005) whose layers fit in ``max_bytes``; None if none does."""
    def size(r: float) -> int:
        return onnx_dc.compress(model, sparse_ratio=r, class_num=class_num).report.totals()["compressed_bytes"]

    lo, hi = 0.0, 0.995
    if size(hi) > max_bytes:
        return None
    if size(lo) <= max_bytes:
        return lo, size(lo)
    while hi - lo > 0.005:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if size(mid) <= max_bytes else (mid, hi)
    return hi, size(hi)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=f"mnist:{ROOT.parent / 'shared' / 'data' / 'mnist'}")
    ap.add_argument("--targets", default="0.5,1.0")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "out" / "bench_target_drop.json"))
    args = ap.parse_args()
    metric = Accuracy(args.data)
    rows = []
    for name, model in MODELS.items():
        saved = ROOT / "out" / "sens" / f"{name}.json"
        sens = load_sensitivity(saved) if saved.exists() else run_sensitivity(model, metric,
                                                                               runner=Runner(args.workers))
        for target in (float(t) for t in args.targets.split(",")):
            result, chosen = compress_for_target(model, None, metric, target, sens)
            nbytes = result.report.totals()["compressed_bytes"]
            row = {"model": name, "target": target, "baseline": sens.baseline, "rounds": len(chosen.rounds),
                   "chosen_bytes": nbytes, "chosen_accuracy": metric(result.model),
                   "chosen_config": chosen.chosen.config, "uniform": []}
            for k in sens.class_nums:
                found = uniform_at_size(model, k, nbytes)
                if found is None:
                    continue
                r, ubytes = found
                acc = metric(onnx_dc.compress(model, sparse_ratio=r, class_num=k).model)
                row["uniform"].append({"class_num": k, "sparse_ratio": round(r, 4), "bytes": ubytes, "accuracy": acc})
            rows.append(row)
            print(f"{name} D={target:g} done", file=sys.stderr, flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"{'model':<14} {'D':>4} {'baseline':>8}  {'chosen B':>8} {'acc':>6}  uniform at <= that size (k, r, B, acc)")
    for row in rows:
        uni = "; ".join(f"k{u['class_num']} r{u['sparse_ratio']:.3f} {u['bytes']} B {u['accuracy']:.2f}"
                        for u in row["uniform"])
        print(f"{row['model']:<14} {row['target']:4g} {row['baseline']:8.2f}  {row['chosen_bytes']:8d} "
              f"{row['chosen_accuracy']:6.2f}  {uni}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
