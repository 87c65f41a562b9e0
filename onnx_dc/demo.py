"""The embedded demo: train a small MLP on scikit-learn's digits, compress it, compare.

Nothing outside the repository is needed: the digits ship with scikit-learn.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from onnx_dc.data.datasets import METADATA_KEY, Preprocess, load_dataset
from onnx_dc.graph.io import save_model
from onnx_dc.importers.sklearn_mlp import mlp_to_onnx
from onnx_dc.passes.lower import set_metadata

DEMO_SETTINGS = {"sparse_ratio": 0.5, "class_num": 16}


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


def run_demo(out_dir: str | Path = "out/demo", echo=print) -> dict:
    """Train, compress, pack and evaluate; print a summary; return the figures."""
    import onnx_dc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _, model = train_digits_mlp()
    src, dc, dcz = out / "digits_mlp.onnx", out / "digits_mlp.dc.onnx", out / "digits_mlp.dcz"
    save_model(model, src)
    result = onnx_dc.compress(src, dc, **DEMO_SETTINGS)
    figures = {
        "dense_accuracy": onnx_dc.evaluate(src, "digits").accuracy,
        "compressed_accuracy": onnx_dc.evaluate(dc, "digits").accuracy,
        "source_bytes": src.stat().st_size,
        "dc_bytes": dc.stat().st_size,
    }
    figures["dcz_bytes"] = onnx_dc.pack(dc, dcz)
    figures["dcz_accuracy"] = onnx_dc.evaluate(dcz, "digits").accuracy
    echo(f"onnx_dc demo: MLP 64-128-64-10 on scikit-learn digits (test split, {len(load_dataset('digits'))} images)")
    echo(f"settings: {DEMO_SETTINGS}")
    echo(f"  {src}: {figures['source_bytes']:>7} B  accuracy {figures['dense_accuracy']:.4f}")
    echo(f"  {dc}: {figures['dc_bytes']:>7} B  accuracy {figures['compressed_accuracy']:.4f}  "
         f"({figures['source_bytes'] / figures['dc_bytes']:.1f}x smaller)")
    echo(f"  {dcz}: {figures['dcz_bytes']:>7} B  accuracy {figures['dcz_accuracy']:.4f}  "
         f"({figures['source_bytes'] / figures['dcz_bytes']:.1f}x smaller)")
    echo("")
    echo(result.report.to_table())
    return figures
