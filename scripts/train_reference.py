"""Train the reference models of models/ on MNIST, through onnx_dc's onnxruntime-training bridge.

    LeNet-300-100: 784-300-100-10 fully connected, ReLU        (266K weights)
    LeNet-5:       Caffe's LeNet: conv 20 5x5, max-pool 2, conv 50 5x5, max-pool 2,
                   fc 500, ReLU, fc 10                          (431K weights)

The initial ONNX is built with onnx.helper (He-normal weights, zero biases, fixed seed);
the models end in Softmax, as Caffe's deploy nets do, and train on the logits before it.
Inputs are pixel / 255, recorded in the model metadata. Dense training runs in
onnxruntime-training (SGD with momentum, weight decay, cosine learning rate).

    python scripts/train_reference.py [--data mnist:../shared/data/mnist] [--models lenet_300_100 lenet5]
                                      [--out models] [--json out/train_reference.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_dc import progress
from onnx_dc.api import prepare
from onnx_dc.graph.io import write_model
from onnx_dc.runtime.evaluate import evaluate
from onnx_dc.train.forms import TrainForm
from lenet import BUILDERS, PREPROCESS
from onnx_dc.train.loop import fit
from onnx_dc.train.schedule import training_data
from onnx_dc.train.settings import LrSchedule, OptimizerKind, StageSettings

# Dense training recipes (SGD, momentum 0.9, weight decay 5e-4 as in Caffe's LeNet solver).
RECIPES = {
    "lenet_300_100": StageSettings(epochs=30, lr=0.05, optimizer=OptimizerKind.SGD, momentum=0.9,
                                   weight_decay=5e-4, lr_schedule=LrSchedule.COSINE),
    "lenet5": StageSettings(epochs=20, lr=0.02, optimizer=OptimizerKind.SGD, momentum=0.9,
                            weight_decay=5e-4, lr_schedule=LrSchedule.COSINE),
}


def train_reference(name: str, data: str, out_dir: Path, seed: int = 0, epochs: int | None = None,
                    echo=print) -> dict:
    """Build, train and save one reference model; returns its figures."""
    model = BUILDERS[name](seed)
    state = prepare(model)  # default plan: nothing pruned, so fitting is plain dense training
    x, y, _ = training_data(state, data, PREPROCESS)
    recipe = RECIPES[name] if epochs is None else StageSettings(**{**RECIPES[name].__dict__, "epochs": epochs})
    start = time.perf_counter()
    with progress.echoed(echo):
        record = fit(state, TrainForm.DENSE, x, y, recipe, batch_size=64, seed=seed, name=name)
    trained = state.dense_model()
    path = out_dir / f"{name}.onnx"
    write_model(trained, path)
    result = evaluate(path, data)
    figures = {
        "name": name, "path": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "file_bytes": path.stat().st_size, "test_accuracy": result.accuracy,
        "top1_error": round(100.0 * (1.0 - result.accuracy), 3), "epochs": recipe.epochs,
        "recipe": recipe.to_dict(), "seed": seed, "train_seconds": round(time.perf_counter() - start, 1),
        "losses": record.losses,
    }
    echo(f"{name}: top-1 error {figures['top1_error']:.2f}% ({result.correct}/{result.n}), "
         f"{figures['file_bytes']} B, {figures['train_seconds']} s")
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=f"mnist:{ROOT.parent / 'shared' / 'data' / 'mnist'}")
    parser.add_argument("--models", nargs="+", choices=sorted(BUILDERS), default=sorted(BUILDERS))
    parser.add_argument("--out", default=str(ROOT / "models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the recipes' epochs (quick runs)")
    parser.add_argument("--json", default=str(ROOT / "out" / "train_reference.json"))
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [train_reference(n, args.data, out_dir, args.seed, args.epochs) for n in args.models]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"models": results}, indent=2))
    print(f"{'model':<16}{'top-1 error':>12}{'bytes':>10}")
    for r in results:
        print(f"{r['name']:<16}{r['top1_error']:>11.2f}%{r['file_bytes']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
