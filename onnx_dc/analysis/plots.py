"""Figures of a compressed model: what pruning and sharing did to the weights, and where the bytes went.

- histograms: per layer, the weights before pruning, the ones pruning kept, and the shared
  values with the centroids marked (the paper's Figures 4 and 6);
- bytes per layer before (float32) and after, the latter stacked into codes, indices and codebook;
- bits per weight per layer (stored bits / weights, P+Q);
- the sensitivity curves (score against sparse ratio and against class_num, one line per layer).

matplotlib is an optional extra (``onnx_dc[plot]``); PNGs are written atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from onnx_dc.errors import ArgumentError
from onnx_dc.graph.io import write_bytes_atomic

# scripts/setup_env.sh installs the source checkout into .venv in editable mode
PLOT_INSTALL = ("in the source checkout .venv/bin/pip install -e '.[plot]' "
                "(an installed package: pip install 'onnx_dc[plot]')")
DPI = 80


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ArgumentError(f"plots need matplotlib, which is not installed: {PLOT_INSTALL}") from None
    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    pyplot().close(fig)
    write_bytes_atomic(buf.getvalue(), path)
    return Path(path)


def plot_sensitivity(sens, path: str | os.PathLike) -> Path:
    """Score against sparse ratio (no sharing) and against class_num (no pruning), one line per layer."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for info in sens.layers:
        xs, ys = zip(*sens.prune_curve(info.weight))
        (line,) = left.plot(xs, ys, marker="o", label=f"{info.node} ({info.weights} w)")
        share = sens.share_curve(info.weight)
        if share:
            ks, ss = zip(*share)
            right.plot(ks, ss, marker="s", label=info.node, color=line.get_color())
        # estimated points (analysis.estimate) hollow, over the line's filled markers
        guessed = [p for p in sens.options(info.weight) if p.estimated and p.codebook == "layer"]
        for ax, pts, x, mark in ((left, [p for p in guessed if p.class_num is None], "sparse_ratio", "o"),
                                 (right, [p for p in guessed if p.sparse_ratio == 0 and p.class_num], "class_num", "s")):
            if pts:
                ax.scatter([getattr(p, x) for p in pts], [p.score for p in pts], marker=mark, facecolors="white",
                           edgecolors=line.get_color(), zorder=3)
    what, _, data = sens.metric.partition(" on ")  # "top-1 accuracy (%) on mnist:DIR test"
    left.set(xlabel="sparse ratio (fraction pruned), this layer only", ylabel=what,
             title="pruned, no retraining")
    right.set(xlabel="class_num (shared values), this layer only", title="shared, no pruning", xscale="log")
    right.set_xticks(list(sens.class_nums), [str(k) for k in sens.class_nums])
    right.minorticks_off()
    right.invert_xaxis()
    for ax in (left, right):
        ax.axhline(sens.baseline, color="gray", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"sensitivity of {Path(sens.model).name}" + (f" on {Path(data).name}" if data else "")
                 + " (dashed: uncompressed" + ("; hollow: estimated from the layer's own output error"
                                                   if any(p.estimated for p in sens.points) else "") + ")", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_histograms(layers: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]],
                    path: str | os.PathLike) -> Path:
    """Per layer three panels: all weights, the weights pruning kept, the shared values with centroids.

    ``layers``: (name, original weights, keep-mask or None, decoded weights or None, centroids or None).
    """
    plt = pyplot()
    fig, axes = plt.subplots(len(layers), 3, figsize=(12, 2.3 * len(layers) + 0.6), squeeze=False)
    for row, (name, w, mask, decoded, centroids) in zip(axes, layers):
        w = w.ravel()
        kept = w if mask is None else w[mask.ravel()]
        spread = [w] + ([centroids] if centroids is not None and len(centroids) else [])
        lo, hi = min(float(a.min()) for a in spread), max(float(a.max()) for a in spread)
        bins = np.linspace(lo, hi, 101)
        row[0].hist(w, bins=bins, color="tab:blue")
        row[0].set_title(f"{name}: before pruning ({w.size} weights)", fontsize=9)
        row[1].hist(kept, bins=bins, color="tab:green")
        row[1].set_title(f"after pruning ({kept.size} kept, {100 * kept.size / w.size:.1f}%)", fontsize=9)
        if decoded is not None and centroids is not None:
            values = decoded.ravel()[decoded.ravel() != 0] if mask is not None else decoded.ravel()
            row[2].hist(values, bins=bins, color="tab:orange")
            if len(centroids) <= 64:
                for c in centroids:
                    row[2].axvline(c, color="black", lw=0.6, alpha=0.7)
                marks = "lines"
            else:  # full-height lines would hide the histogram: ticks along the axis instead
                row[2].plot(centroids, np.zeros(len(centroids)), "|", color="black", markersize=12, clip_on=False)
                marks = "ticks"
            row[2].set_title(f"after sharing: {len(centroids)} centroids ({marks})", fontsize=9)
        else:
            row[2].text(0.5, 0.5, "not shared", ha="center", va="center", transform=row[2].transAxes)
            row[2].set_title("after sharing", fontsize=9)
        for ax in row:
            ax.set_xlim(lo, hi)
            ax.tick_params(labelsize=7)
        row[0].set_ylabel("count", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("weight value", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_bytes(rows, path: str | os.PathLike) -> Path:
    """Bytes per layer: float32 before against after (log scale), and after stacked by stream."""
    plt = pyplot()
    names = [r.nodes for r in rows]
    x = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(x - 0.2, [r.dense_bytes for r in rows], 0.4, label="before (float32)", color="tab:gray")
    left.bar(x + 0.2, [r.total_bytes for r in rows], 0.4, label="after (codes + indices + codebook)", color="tab:blue")
    for i, r in enumerate(rows):
        left.text(i + 0.2, r.total_bytes, f"{r.ratio:.0f}x", ha="center", va="bottom", fontsize=8)
    left.set(yscale="log", ylabel="bytes", title="bytes per layer, before and after",
             ylim=(None, 30 * max(r.dense_bytes for r in rows)))  # room for the legend above the bars
    bottom = np.zeros(len(rows))
    for label, key, color in (("codes", "codes_bytes", "tab:blue"), ("indices", "index_bytes", "tab:orange"),
                              ("codebook", "codebook_bytes", "tab:green")):
        values = np.array([getattr(r, key) for r in rows], float)
        right.bar(x, values, 0.6, bottom=bottom, label=label, color=color)
        bottom += values
    right.set(ylabel="bytes", title="after, by stream")
    for ax in (left, right):
        ax.set_xticks(x, names, rotation=30 if len(rows) > 6 else 0, fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_bits(rows, path: str | os.PathLike) -> Path:
    """Stored bits per weight per layer (codes + indices + codebook over the layer's weight count)."""
    plt = pyplot()
    bits = [8.0 * r.total_bytes / r.weights for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows) + 2), 3.5))
    bars = ax.bar([r.nodes for r in rows], bits, color="tab:purple")
    for bar, b in zip(bars, bits):
        ax.text(bar.get_x() + bar.get_width() / 2, b, f"{b:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="bits per weight", title="stored bits per weight (codes + indices + codebook; float32: 32)",
           ylim=(0, max(max(bits) * 1.25, 1.0)))
    ax.tick_params(axis="x", labelsize=8, rotation=30 if len(rows) > 6 else 0)
    fig.tight_layout()
    return _save(fig, path)
