"""Time one LeNet-5 sensitivity sweep run serially, in worker processes, and on a local Ray instance.

The sweep is every layer alone at every setting (onnx_dc.analysis.sensitivity.settings_grid), scored
by top-1 accuracy on MNIST test digits. The script checks that the three runs give the same
numbers and writes JSON (out/bench_sensitivity.json) and a table.

    .venv/bin/python scripts/bench_sensitivity.py [--limit 2000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_dc.analysis.metrics import Accuracy  # noqa: E402
from onnx_dc.analysis.sensitivity import run_sensitivity  # noqa: E402
from onnx_dc.sweep_grid import DEFAULT_CLASS_NUMS, DEFAULT_RATIOS  # noqa: E402
from onnx_dc.analysis.sweep import Runner  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "lenet5.onnx"))
    ap.add_argument("--data", default=f"mnist:{ROOT.parent / 'shared' / 'data' / 'mnist'}")
    ap.add_argument("--limit", type=int, default=2000, help="test digits per evaluation (default 2000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "out" / "bench_sensitivity.json"))
    args = ap.parse_args()

    metric = Accuracy(args.data, limit=args.limit)
    runs, reference = [], None
    for runner in (Runner(), Runner(workers=args.workers), Runner(ray="local")):
        start = time.perf_counter()
        sens = run_sensitivity(args.model, metric, DEFAULT_RATIOS, DEFAULT_CLASS_NUMS, runner)
        seconds = time.perf_counter() - start
        reference = reference or sens
        runs.append({"runner": runner.describe(), "seconds": round(seconds, 2), "evaluations": len(sens.points),
                     "per_second": round(len(sens.points) / seconds, 2),
                     "load_average_1min_after": round(os.getloadavg()[0], 2),  # other work on the machine
                     "identical_to_serial": sens.points == reference.points and sens.baseline == reference.baseline})
        print(f"{runner.describe()}: {seconds:.1f} s", file=sys.stderr, flush=True)
    out = {"model": args.model, "data": args.data, "limit": args.limit, "ratios": list(DEFAULT_RATIOS),
           "class_nums": list(DEFAULT_CLASS_NUMS), "layers": [i.node for i in reference.layers],
           "baseline": reference.baseline, "cpus": os.cpu_count(), "python": platform.python_version(),
           "runs": runs, "sensitivity": reference.to_dict()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"LeNet-5 sweep: {len(reference.layers)} layers x {len(reference.points) // len(reference.layers)} "
          f"settings, {args.limit} test digits each, {os.cpu_count()} CPUs")
    print(f"{'runner':<24} {'seconds':>8} {'evals':>6} {'evals/s':>8}  {'load':>5}  identical")
    for r in runs:
        print(f"{r['runner']:<24} {r['seconds']:8.1f} {r['evaluations']:6d} {r['per_second']:8.2f}  "
              f"{r['load_average_1min_after']:5.1f}  {r['identical_to_serial']}")
    print(f"wrote {args.json}")
    return 0 if all(r["identical_to_serial"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
