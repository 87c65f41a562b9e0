"""The figures of one compressed model against its original (the ``plot`` command): weight histograms,
bytes and bits per layer, and the sensitivity curves when a sweep is given (figures in
:mod:`onnx_dc.analysis.plots`)."""

from __future__ import annotations

import os
from pathlib import Path

from onnx_dc.analysis.plots import plot_bits, plot_bytes, plot_histograms, plot_sensitivity


def plot_model(model: str | os.PathLike, baseline: str | os.PathLike, out_dir: str | os.PathLike,
               sensitivity=None) -> list[Path]:
    """Write histograms.png, bytes.png, bits.png (and sensitivity.png when a sweep is given) under ``out_dir``.

    ``out_dir`` is created (its parent must exist) only once both models are read and match, so a
    refused baseline leaves no empty folder behind.
    """
    from onnx_dc.api import report
    from onnx_dc.formats.models import load_model
    from onnx_dc.graph.normalize import normalize
    from onnx_dc.train.restore import state_from_dc

    rep = report(model, baseline=baseline)  # also refuses a baseline the model was not compressed from
    from onnx import numpy_helper

    base = normalize(load_model(baseline), str(baseline))
    originals = {t.name: numpy_helper.to_array(t) for t in base.graph.initializer}
    state = state_from_dc(load_model(model), str(model))
    hist = []
    for row in rep.layers:
        layer = state.layers[row.weight]
        centroids = layer.codebook[1:] if layer.codebook is not None else None
        hist.append((row.nodes, originals[row.weight], layer.mask, layer.weights, centroids))
    out = Path(out_dir)
    out.mkdir(exist_ok=True)
    paths = [plot_histograms(hist, out / "histograms.png"), plot_bytes(rep.layers, out / "bytes.png"),
             plot_bits(rep.layers, out / "bits.png")]
    if sensitivity is not None:
        paths.append(plot_sensitivity(sensitivity, out / "sensitivity.png"))
    return paths
