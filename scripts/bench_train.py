"""Training speed of the three forms (dense, masked, shared) on LeNet-300-100, batch 64.

Each form runs the same loop as fine-tuning (onnxruntime-training forward/backward, NumPy
optimizer step, parameters written back): a few warm-up steps, then the best of
``--repeats`` timed runs of ``--steps`` steps, alternating between forms (the best,
because other processes on a shared machine only ever slow a run down). Masked and shared use the paper's Table 2
pruning (models/lenet_300_100.dc.yaml); "shared, unpruned" shares all weights.

    python scripts/bench_train.py [--steps 400] [--repeats 3] [--json out/bench_train.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_dc.api import prepare
from onnx_dc.passes.prune import prune
from onnx_dc.passes.share import share
from onnx_dc.train.forms import TrainForm
from lenet import lenet_300_100
from onnx_dc.train.loop import Trainer
from onnx_dc.train.optim import Optimizer
from onnx_dc.train.settings import OptimizerKind, StageSettings

CONFIG = ROOT / "models" / "lenet_300_100.dc.yaml"


def _state(kind: str):
    model_path = ROOT / "models" / "lenet_300_100.onnx"
    model = str(model_path) if model_path.is_file() else lenet_300_100()
    if kind == "shared, unpruned":
        state = prepare(model, None, class_num=63)
    else:
        state = prepare(model, CONFIG if CONFIG.is_file() else None)
    if kind in ("masked", "shared"):
        prune(state)
    if kind.startswith("shared"):
        share(state)
    return state


FORMS = {"dense": TrainForm.DENSE, "masked": TrainForm.MASKED, "shared": TrainForm.SHARED,
         "shared, unpruned": TrainForm.SHARED}


def bench(steps: int, repeats: int, batch: int, threads: int, optimizer: str) -> list[dict]:
    """Steps per second of every form; timed runs alternate between forms so load hits all alike."""
    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    stage = StageSettings(epochs=1, lr=1e-3, optimizer=OptimizerKind(optimizer))
    runs = {}
    for kind, form in FORMS.items():
        state = _state(kind)
        runs[kind] = (state, Trainer(state, form, threads), Optimizer(stage, steps * (repeats + 1)), [])
    try:
        for state, trainer, opt, _ in runs.values():
            for _ in range(50):
                trainer.step(x, y, opt)
        for _ in range(repeats):
            for state, trainer, opt, times in runs.values():
                start = time.perf_counter()
                for _ in range(steps):
                    trainer.step(x, y, opt)
                times.append(time.perf_counter() - start)
    finally:
        for _, trainer, _, _ in runs.values():
            trainer.close()
    rows = []
    for kind, (state, _, _, times) in runs.items():
        best = min(times)
        kept = sum(layer.kept() for layer in state.layers.values())
        total = sum(layer.weights.size for layer in state.layers.values())
        rows.append({"form": kind, "steps_per_s": round(steps / best, 1), "ms_per_step": round(1000 * best / steps, 3),
                     "runs_steps_per_s": [round(steps / t, 1) for t in times], "kept_pct": round(100 * kept / total, 2)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--json", default=str(ROOT / "out" / "bench_train.json"))
    args = parser.parse_args(argv)
    rows = bench(args.steps, args.repeats, args.batch_size, args.threads, args.optimizer)
    dense = rows[0]["steps_per_s"]
    for r in rows:
        r["vs_dense"] = round(r["steps_per_s"] / dense, 3)
    import onnxruntime

    out = {"model": "LeNet-300-100", "batch_size": args.batch_size, "optimizer": args.optimizer,
           "steps": args.steps, "repeats": args.repeats, "onnxruntime": onnxruntime.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"LeNet-300-100, batch {args.batch_size}, {args.optimizer}; best of {args.repeats} x {args.steps} steps")
    print(f"{'form':<18}{'kept %':>8}{'steps/s':>10}{'ms/step':>9}{'vs dense':>10}")
    for r in rows:
        print(f"{r['form']:<18}{r['kept_pct']:>8.1f}{r['steps_per_s']:>10.0f}{r['ms_per_step']:>9.3f}"
              f"{r['vs_dense']:>9.2f}x")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
