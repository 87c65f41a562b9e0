"""Estimated sweeps: the model run at a few anchor settings per layer, the other points from each layer's own
output error (onnx_dc/analysis/estimate.py), on a real model against the sweep that measures every point."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import MNIST_DIR, MNIST8, SHARED_DATA, needs_shared, shared_path
from test_cli import cli, expect_user_error

from onnx_dc.analysis.estimate import P_MAX, anchor_indices, estimate
from onnx_dc.analysis.sensitivity import run_sensitivity
from onnx_dc.errors import ConfigError


def test_anchors_are_at_the_quantiles_of_the_own_errors():
    own = [5.0, 1.0, 0.0, 3.0, 2.0, 4.0]
    # positive errors ranked: 1 (i=1), 2 (i=4), 3 (i=3), 4 (i=5), 5 (i=0)
    assert anchor_indices(own, (0.0, 1.0)) == [0, 1]
    assert anchor_indices(own, (0.5,)) == [3]
    assert anchor_indices([0.0, 0.0], (0.5,)) == [0]  # nothing changed anywhere: one measurement says so
    assert anchor_indices([1.0, None, 2.0]) == [0, 1, 2]  # a layer without statistics: every point measured


def test_estimate_follows_the_power_law_through_the_anchors():
    own = [0.5, 1.0, 2.0, 4.0, 8.0, 0.0]
    true = [3 * e ** 1.5 for e in own]
    baseline = 100.0
    measured = {1: (baseline - 2 * true[1], true[1]), 3: (baseline - 2 * true[3], true[3])}
    out = estimate(own, measured, baseline)
    assert [est for _, _, est in out] == [True, False, True, False, True, True]
    for (score, error, _), t in zip(out, true):
        assert error == pytest.approx(t) and score == pytest.approx(baseline - 2 * t)
    # the slope stays within [P_MIN, P_MAX]: a steeper pair of anchors does not extrapolate wildly
    steep = {1: (90.0, 1.0), 3: (10.0, 4.0 ** 5)}
    assert estimate(own, steep, baseline)[4][1] == pytest.approx(4.0 ** 5 * 2.0 ** P_MAX)
    # anchors that left the outputs as they were: so are the others
    assert estimate([1.0, 2.0], {0: (baseline, 0.0)}, baseline)[1] == (baseline, 0.0, True)


@needs_shared
def test_residual_error_is_the_layer_error_less_what_bias_correction_takes_out():
    """On a real model's statistics: without the correction it is the data-aware passes' own layer error; the mean
    error a bias can take out is what the correction removes, so it never grows."""
    import onnx_dc
    from onnx_dc.api import prepare
    from onnx_dc.calibrate import collect_calib_stats
    from onnx_dc.passes.bias_correct import residual_error
    from onnx_dc.passes.data_aware import layer_error, original_weights

    calib = f"mnist:{MNIST_DIR}"
    base = prepare(str(MNIST8), None)
    stats = collect_calib_stats(base, calib)
    dc = onnx_dc.compress(MNIST8, config={"defaults": {"sparse_ratio": 0.5, "class_num": 4}}, calib=calib)

    checked = 0
    for name, st in stats.stats.items():
        original = original_weights(base, name)
        compressed = dc.state.layers[name].weights
        plain = residual_error(compressed, original, st, corrected=False)
        assert plain == pytest.approx(layer_error(compressed, original, st), rel=1e-9)
        assert 0 <= residual_error(compressed, original, st) <= plain * (1 + 1e-12)
        checked += 1
    assert checked >= 2


@pytest.fixture(scope="module")
def resnet20_sweeps(tmp_path_factory):
    """ResNet-20 on 120 augmented photo crops (32x32), every point measured and estimated."""
    from calib_images import require, write_folder
    from onnx_dc.analysis.metrics import Agreement
    from onnx_dc.data.calib import parse_calib_spec

    model = require(SHARED_DATA / "real" / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx")
    folder = write_folder(tmp_path_factory.mktemp("r20"), 120, (48, 48), seed=7, suffix=".jpg")
    calib = parse_calib_spec(f"images:{folder}", size="32,32", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    metric = Agreement(calib, model.read_bytes())
    grid = dict(ratios=(0.5,), class_nums=(4, 8, 16, 32), calib=calib)
    return model, metric, calib, run_sensitivity(model, metric, **grid), run_sensitivity(model, metric, estimated=True,
                                                                                          **grid)


@needs_shared
def test_estimated_points_are_close_to_the_measured_ones_on_resnet20(resnet20_sweeps):
    _, _, _, full, est = resnet20_sweeps
    assert len(est.points) == len(full.points) and not any(p.estimated for p in full.points)
    measured = [p for p in est.points if not p.estimated]
    assert len(measured) == 2 * len(est.layers)  # two anchors a layer
    for p in est.points:
        q = full.point(p.layer, p.setting)
        assert (p.bytes, p.passes) == (q.bytes, q.passes)
        if not p.estimated:  # an anchor is the measured point itself
            assert (p.score, p.error) == (q.score, q.error)
    logs = [abs(math.log(p.error / full.point(p.layer, p.setting).error)) for p in est.points if p.estimated]
    assert np.median(logs) < 0.35, np.median(logs)  # within about 40% of the measured error, half the points
    ranks = [np.argsort(np.argsort(v)) for v in ([p.error for p in est.points],
                                                  [full.point(p.layer, p.setting).error for p in est.points])]
    assert np.corrcoef(*ranks)[0, 1] > 0.9  # the points rank as measured (Spearman)


@needs_shared
def test_a_size_target_from_the_estimated_sweep_is_as_close_as_from_the_measured_one(resnet20_sweeps):
    from onnx_dc.analysis.curves import config_for
    from onnx_dc.analysis.target import config_measure, knapsack_bytes, uniform_candidates

    model, metric, calib, full, est = resnet20_sweeps
    measure = config_measure(model, metric, calib=calib)
    capacity = int(sum(info.dense_bytes for info in full.layers) / 7)  # about 4.5 bits a weight
    errors = {}
    for name, sens in (("measured", full), ("estimated", est)):
        chosen = knapsack_bytes(sens, capacity)
        errors[name] = measure(config_for({w: None if p is None else p.setting for w, p in chosen.items()},
                                          sens.layers))[3]
    _, _, setting = next(c for c in uniform_candidates(full) if c[1] <= capacity)
    errors["uniform"] = measure(config_for({info.weight: setting for info in full.layers}, full.layers))[3]
    print(errors, full.seconds, est.seconds)
    # the estimate keeps the knapsack's gain over one setting everywhere, within a little of the measured sweep's
    # (estimated / measured / uniform: .00612 / .00503 / .01137 in an earlier environment, .00547 / .00354 / .01072
    # with numpy 2.4.6, scipy 1.17.1, onnx 1.23.2: near its capacity the knapsack flips a few layers' choices on
    # small differences of the points)
    assert errors["estimated"] <= 1.6 * errors["measured"] and errors["estimated"] < 0.7 * errors["uniform"], errors


@needs_shared
def test_estimate_flag(capsys, tmp_path):
    calib = f"mnist:{MNIST_DIR}"
    grid = ("--ratios", "0.5", "--class-nums", "4,16")
    code, text, err = cli(capsys, "sensitivity", shared_path(MNIST8), "--calib", calib, *grid, "--estimate",
                          "--plot", tmp_path / "e.png", "--json", tmp_path / "e.json")
    assert code == 0, err
    assert "~" in text and "6 evaluations and 9 points estimated from the layers' own errors" in text
    assert (tmp_path / "e.png").stat().st_size > 0  # estimated points drawn hollow
    saved = json.loads((tmp_path / "e.json").read_text())["points"]
    assert sum(p["estimated"] for p in saved) == 9 and all(p["own_error"] > 0 for p in saved)
    code, text, err = cli(capsys, "sensitivity", MNIST8, "--calib", calib, *grid)  # a table: measured by default
    assert code == 0, err
    assert "~" not in text and "15 evaluations in" in text
    # compress --calib --target-ratio estimates by default, and says so; --no-estimate measures every point
    for flags, line in (((), "sweep: 6 evaluations and 9 points estimated"),
                        (("--no-estimate",), "sweep: 15 evaluations in")):
        code, text, err = cli(capsys, "compress", MNIST8, "-o", tmp_path / "r.dc.onnx", "--calib", calib, *grid,
                              "--target-ratio", "4", *flags)
        assert code == 0 and line in text, err + text
    expect_user_error(capsys, "sensitivity", MNIST8, "--data", f"mnist:{MNIST_DIR}", "--estimate",
                      contains="--estimate needs --calib")
    expect_user_error(capsys, "compress", MNIST8, "-o", tmp_path / "x.dc.onnx", "--estimate",
                      contains="--target-drop")


@needs_shared
def test_estimated_sweep_gives_the_same_points_in_worker_processes():
    """One job per layer (its settings compressed, its anchors measured): worker processes give the same numbers."""
    from onnx_dc.analysis.metrics import Agreement
    from onnx_dc.analysis.sweep import Runner
    from onnx_dc.graph.io import serialize
    from onnx_dc.formats.models import load_model

    calib = f"mnist:{MNIST_DIR}"
    metric = Agreement(calib, serialize(load_model(shared_path(MNIST8))))
    grid = dict(ratios=(0.5,), class_nums=(4, 16), calib=calib, estimated=True)
    serial = run_sensitivity(MNIST8, metric, **grid)
    assert sum(p.estimated for p in serial.points) == 9
    assert run_sensitivity(MNIST8, metric, runner=Runner(workers=2), **grid).points == serial.points
    with pytest.raises(ConfigError, match="needs calibration samples"):  # nothing to estimate from
        run_sensitivity(MNIST8, metric, ratios=(0.5,), class_nums=(4,), estimated=True)


@needs_shared
def test_finer_codebooks_in_the_grid_leave_the_other_points_estimates_as_they_were():
    """The anchors are taken among the one-codebook-a-layer settings (mnist-8, real digits): a sweep that also tries
    ``group:4`` and ``channel`` gives the layer codebook's points exactly as the sweep without them, and its new
    points are estimated from the same anchors."""
    from onnx_dc.analysis.metrics import Agreement
    from onnx_dc.graph.io import serialize
    from onnx_dc.formats.models import load_model

    calib = f"mnist:{MNIST_DIR}"
    metric = Agreement(calib, serialize(load_model(shared_path(MNIST8))))
    grid = dict(ratios=(0.5,), class_nums=(4, 16), calib=calib, estimated=True)
    plain = run_sensitivity(MNIST8, metric, **grid)
    wider = run_sensitivity(MNIST8, metric, codebooks=("layer", "channel", "group:4"), **grid)
    assert wider.points and len(wider.points) > len(plain.points)
    assert [p for p in wider.points if p.codebook == "layer"] == list(plain.points)
    finer = [p for p in wider.points if p.codebook != "layer"]
    assert {p.codebook for p in finer} == {"channel", "group:4"} and all(p.estimated for p in finer)
