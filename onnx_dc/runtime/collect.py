"""Collect the input statistics of compressed layers by running calibration samples in onnxruntime.

Each layer's input tensor is exposed as an extra graph output; one session runs the
samples batch by batch and each batch's inputs are folded into running sums
(:class:`~onnx_dc.passes.stats.InputStats`) and dropped, so memory holds one batch of
activations, never all of them. Conv inputs become im2col patches in chunks of rows, at
most ``MAX_POSITIONS`` output positions per sample.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view

from onnx_dc.data.calib import Samples
from onnx_dc.graph.io import serialize
from onnx_dc.graph.layerview import LayerView, layer_views
from onnx_dc.passes.state import CompressionState
from onnx_dc.passes.stats import InputStats, WeightStats
from onnx_dc.runtime.session import InferenceSession

FULL_HESSIAN_MAX_DIM = 4096  # E[x x^T] is d x d doubles: 4096 -> 128 MB per group
_CHUNK_ELEMENTS = 1 << 22  # im2col rows are built this many elements at a time
# Conv statistics use at most this many output positions per sample (a seeded choice):
# neighbouring patches are highly correlated, and the d x d sums cost rows x d^2.
MAX_POSITIONS = 256


@dataclass(frozen=True)
class Collected:
    """Statistics per weight name, the weights without them (name -> reason), and the time taken."""

    stats: dict[str, WeightStats]
    unsupported: dict[str, str]
    seconds: float
    samples: int


def collect_stats(state: CompressionState, samples: Samples, batch_size: int = 64,
                  full_max_dim: int = FULL_HESSIAN_MAX_DIM, threads: int = 0) -> Collected:
    """Run ``samples`` through ``state.model`` (the original weights) and sum each layer's input statistics."""
    start = time.perf_counter()
    state.keep_originals()
    views: dict[str, list[LayerView]] = {}
    unsupported: dict[str, str] = {}
    for name, layer in state.layers.items():
        found, why = layer_views(state.model, layer.entry.site)
        if found:
            views[name] = found
        else:
            unsupported[name] = why
    per_view = {(name, i): _new_stats(v, full_max_dim) for name, vs in views.items() for i, v in enumerate(vs)}
    graph_inputs = {i.name for i in state.model.graph.input}
    wanted = sorted({v.activation for vs in views.values() for v in vs} - graph_inputs)
    session = InferenceSession(_with_outputs(state.model, wanted), threads=threads, spin=False)
    # Small batches (models with a fixed batch of 1) are pooled before the sums: one large
    # product x^T x runs far faster than many small ones.
    pending: list[dict[str, np.ndarray]] = []
    # One generator per view, seeded by its weight's name: a layer's statistics do not depend on
    # which other layers are measured in the same run (a sweep collects all, compress maybe one).
    rngs = {key: np.random.default_rng([zlib.crc32(key[0].encode()), key[1]]) for key in per_view}
    for feed in samples.batches(batch_size):
        outs = dict(zip(wanted, session.run(wanted, feed))) if wanted else {}
        outs.update({k: v for k, v in feed.items() if k in graph_inputs})
        pending.append(outs)
        if sum(a.size for a in outs.values()) * len(pending) >= _CHUNK_ELEMENTS:
            _flush(pending, views, per_view, rngs)
    _flush(pending, views, per_view, rngs)
    stats = {}
    for name, vs in views.items():
        first = per_view[(name, 0)]
        for i in range(1, len(vs)):
            if np.array_equal(vs[i].index, vs[0].index) and vs[i].groups == vs[0].groups:
                first.merge(per_view[(name, i)])
        stats[name] = WeightStats(vs[0], first, tuple(vs))
    return Collected(stats, unsupported, time.perf_counter() - start, len(samples))


def _flush(pending: list[dict[str, np.ndarray]], views, per_view, rngs: dict) -> None:
    if not pending:
        return
    for (name, i), st in per_view.items():
        view = views[name][i]
        parts = [np.asarray(outs[view.activation]) for outs in pending]
        if view.trans_a:
            for part in parts:
                _accumulate(view, st, part, rngs[(name, i)])
        else:
            _accumulate(view, st, parts[0] if len(parts) == 1 else np.concatenate(parts), rngs[(name, i)])
    pending.clear()


def _new_stats(view: LayerView, full_max_dim: int) -> InputStats:
    return InputStats(view.groups, view.cols, view.cols <= full_max_dim)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return serialize(out)


def _accumulate(view: LayerView, stats: InputStats, x: np.ndarray, rng: np.random.Generator) -> None:
    if view.conv is None:
        rows = x.reshape(-1, x.shape[-1]) if not view.trans_a else x.reshape(x.shape[0], -1).T
        for chunk in _row_chunks(rows, view.cols):
            stats.add(0, chunk)
        return
    geo = view.conv
    pads = same_pads(x.shape[2:], geo) if geo.auto_pad.startswith("SAME") else geo.pads
    step = max(1, _CHUNK_ELEMENTS // max(1, view.cols * view.groups * MAX_POSITIONS))
    for s in range(0, x.shape[0], step):
        patches = im2col(x[s : s + step], geo.kernel, geo.strides, geo.dilations, pads, MAX_POSITIONS, rng)
        # [n, P, C, *kernel] -> rows [n * P, groups, Cg * prod(kernel)]
        stats.add_groups(patches.reshape(-1, view.groups, view.cols))


def _row_chunks(rows: np.ndarray, width: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, width))
    for s in range(0, rows.shape[0], step):
        yield rows[s : s + step]


def same_pads(spatial_shape, geo) -> tuple[int, ...]:
    """Explicit pads of ``auto_pad`` SAME_UPPER / SAME_LOWER for an input of ``spatial_shape``."""
    begin, end = [], []
    for size, k, s, d in zip(spatial_shape, geo.kernel, geo.strides, geo.dilations):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begin.append(small if geo.auto_pad == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return tuple(begin + end)


def im2col(x: np.ndarray, kernel, strides, dilations, pads, max_positions: int | None = None,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """Patches ``[N, P, C, *kernel]`` of ``x`` ``[N, C, *spatial]`` as a Conv with these attributes reads them.

    ``P`` is every output position in order, or ``max_positions`` of them drawn by ``rng``
    (the same for every sample of the call) when there are more.
    """
    spatial = len(kernel)
    pad_width = [(0, 0), (0, 0)] + [(pads[i], pads[i + spatial]) for i in range(spatial)]
    xp = np.pad(x, pad_width) if any(pads) else x
    window = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    v = sliding_window_view(xp, window, axis=tuple(range(2, 2 + spatial)))
    pos = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
    v = v[pos + tuple(slice(None, None, d) for d in dilations)]  # [N, C, *out, *kernel], a view
    out_shape = v.shape[2 : 2 + spatial]
    n_pos = int(np.prod(out_shape))
    if max_positions is not None and n_pos > max_positions:
        flat = np.sort((rng or np.random.default_rng(0)).choice(n_pos, max_positions, replace=False))
    else:
        flat = np.arange(n_pos)
    coords = np.unravel_index(flat, out_shape)
    picked = v[(slice(None), slice(None)) + coords]  # [N, C, P, *kernel]
    return np.ascontiguousarray(np.moveaxis(picked, 2, 1))


def stats_summary(collected: Collected) -> str:
    """One line: layers measured, samples, seconds."""
    return (f"input statistics of {len(collected.stats)} layer(s) from {collected.samples} sample(s) in "
            f"{collected.seconds:.1f} s" + (f"; {len(collected.unsupported)} layer(s) without: "
                                           f"{', '.join(f'{k} ({v})' for k, v in list(collected.unsupported.items())[:3])}"
                                           if collected.unsupported else ""))


__all__ = ["Collected", "collect_stats", "im2col", "stats_summary", "FULL_HESSIAN_MAX_DIM"]
