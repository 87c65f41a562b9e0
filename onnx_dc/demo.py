"""The embedded demo: train a small MLP on scikit-learn's digits, compress it, compare.

Nothing outside the repository is needed: the digits ship with scikit-learn. The MLP is
pruned to 20% of its weights in three steps with retraining, its weights shared among 8
values per layer, the shared values trained, and the result packed; the same settings
without fine-tuning are shown for comparison.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from onnx_dc import progress
from onnx_dc.data.datasets import METADATA_KEY, Preprocess, load_dataset
from onnx_dc.graph.io import write_model
from onnx_dc.importers.sklearn_mlp import mlp_to_onnx
from onnx_dc.passes.lower import set_metadata

DEMO_SETTINGS = {"sparse_ratio": 0.8, "class_num": 8}
DEMO_SCHEDULE = {"prune_steps": 3, "retrain": {"epochs": 40, "lr": 0.1}, "codebook": {"epochs": 20, "lr": 3e-3}}
# Where onnxruntime-training is missing (Python >= 3.13): settings that hold up without it.
DEMO_SETTINGS_NO_TRAINING = {"sparse_ratio": 0.5, "class_num": 16}
# Accuracy the compressed model may lose (as a fraction, 0.01 = one point) before the demo warns.
DEMO_TOLERANCE = 0.01


def train_digits_mlp(seed: int = 0, hidden: tuple[int, ...] = (128, 64)):
    """An MLPClassifier fitted on the digits train split (pixels / 16), and the ONNX model of it."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    train = load_dataset("digits", "train")
    prep = Preprocess(scale=train.default_scale)
    x = prep.apply(train.images, (64,))
    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=300, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, train.labels)
    model = mlp_to_onnx(clf)
    set_metadata(model, {METADATA_KEY: prep.to_metadata()})
    return clf, model


def run_demo(out_dir: str | Path = "out/demo") -> dict:
    """Train, compress (with fine-tuning where available), pack and evaluate; returns the figures of
    :func:`summary`."""
    from onnx_dc import api
    from onnx_dc.errors import TrainingUnavailable
    from onnx_dc.runtime.evaluate import evaluate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _, model = train_digits_mlp()
    src, dc, dcz = out / "digits_mlp.onnx", out / "digits_mlp.dc.onnx", out / "digits_mlp.dcz"
    write_model(model, src)
    settings, note = DEMO_SETTINGS, "pruned in 3 steps with retraining, shared values trained on digits/train"
    fine_tuned = True
    try:
        with progress.quieted(keep_bars=True):  # 140 epoch lines would bury the summary
            api.compress(src, dc, data="digits", schedule=DEMO_SCHEDULE, **settings)
    except TrainingUnavailable as exc:
        settings, note, fine_tuned = DEMO_SETTINGS_NO_TRAINING, f"no fine-tuning ({exc})", False
        api.compress(src, dc, **settings)
    untrained = api.compress(src, **settings)
    figures = {
        "settings": settings,
        "fine_tuned": fine_tuned,
        "dense_accuracy": evaluate(src, "digits").accuracy,
        "untrained_accuracy": evaluate(untrained.model, "digits").accuracy,
        "compressed_accuracy": evaluate(dc, "digits").accuracy,
        "source_bytes": src.stat().st_size,
        "dc_bytes": dc.stat().st_size,
        "note": note,
        "files": {"onnx": str(src), "dc": str(dc), "dcz": str(dcz)},
    }
    figures["dcz_bytes"] = api.pack(dc, dcz)
    figures["dcz_accuracy"] = evaluate(dcz, "digits").accuracy
    return figures


def summary(figures: dict) -> str:
    """The demo's comparison of :func:`run_demo`'s figures: sizes and accuracies, a warning when the compressed
    model lost more than :data:`DEMO_TOLERANCE`, and the packed model's report."""
    from onnx_dc.api import report

    src, dc, dcz = (figures["files"][k] for k in ("onnx", "dc", "dcz"))
    n_test = len(load_dataset("digits"))
    lines = [f"onnx_dc demo: MLP 64-128-64-10 trained on scikit-learn digits; top-1 on the test split "
             f"({n_test} images)",
             f"settings: {figures['settings']}; {figures['note']}",
             f"  {src:32} {figures['source_bytes']:>7} B  accuracy {figures['dense_accuracy']:.4f}",
             f"  {'(same settings, no fine-tuning)':32} {'':>9}  accuracy {figures['untrained_accuracy']:.4f}"]
    for path, size, acc in ((dc, figures["dc_bytes"], figures["compressed_accuracy"]),
                            (dcz, figures["dcz_bytes"], figures["dcz_accuracy"])):
        lines.append(f"  {path:32} {size:>7} B  accuracy {acc:.4f}  ({figures['source_bytes'] / size:.1f}x smaller)")
    drop = figures["dense_accuracy"] - figures["compressed_accuracy"]
    if drop > DEMO_TOLERANCE:
        lines.append(f"warning: the compressed model is {100 * drop:.1f} points less accurate than the original; "
                     f"check a model with: onnx-dc eval {dc} --data digits  (the original: onnx-dc eval {src} "
                     "--data digits)")
    return "\n".join([*lines, "", report(dcz).to_table()])
