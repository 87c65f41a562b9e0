"""Sensitivity with calibration samples: plain passes (magnitude prune, k-means) against the data-aware ones.

Both sweeps score fidelity to the original model on the held-out samples of --calib; the
data-aware one runs the passes of ``compress(calib=...)`` on each layer alone. Writes JSON
(out/bench_sensitivity_calib.json) and a table of drops per layer and setting.

    .venv/bin/python scripts/bench_sensitivity_calib.py [--model M.onnx] [--calib mnist:DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_dc.data.calib import parse_calib_spec  # noqa: E402
from onnx_dc.graph.io import serialize  # noqa: E402
from onnx_dc.formats.models import load_model
from onnx_dc.analysis.metrics import Agreement  # noqa: E402
from onnx_dc.analysis.sensitivity import run_sensitivity  # noqa: E402
from onnx_dc.sweep_grid import parse_class_nums, parse_ratios  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "data" / "onnx" / "mnist-8.onnx"))
    ap.add_argument("--calib", default=f"mnist:{ROOT.parent / 'shared' / 'data' / 'mnist'}")
    ap.add_argument("--ratios", default="0.5,0.8,0.9,0.95")
    ap.add_argument("--class-nums", default="16,4")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench_sensitivity_calib.json"))
    args = ap.parse_args()
    spec = parse_calib_spec(args.calib)
    metric = Agreement(spec, serialize(load_model(args.model)))
    grid = {"ratios": parse_ratios(args.ratios), "class_nums": parse_class_nums(args.class_nums)}
    sweeps = {}
    for name, calib in (("plain", None), ("data_aware", spec)):
        start = time.perf_counter()
        sweeps[name] = run_sensitivity(args.model, metric, calib=calib, **grid)
        print(f"{name}: {time.perf_counter() - start:.1f} s")
        print(sweeps[name].to_table())
    rows = [{"layer": p.layer, "sparse_ratio": p.sparse_ratio, "class_num": p.class_num, "plain_drop": p.drop,
             "data_aware_drop": a.drop} for p, a in zip(sweeps["plain"].points, sweeps["data_aware"].points)]
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "calib": args.calib, "rows": rows,
                                          **{k: s.to_dict() for k, s in sweeps.items()}}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
