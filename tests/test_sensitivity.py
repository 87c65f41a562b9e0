"""Sensitivity sweeps, settings from a target drop, plots, and sweeps in worker processes and on Ray."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest
from conftest import MNIST_DIR, ROOT, SHARED_DATA, needs_shared, shared_path
from test_cli import cli, expect_user_error

import onnx_dc
from onnx_dc.config import load_config
from onnx_dc.errors import ConfigError
from onnx_dc.runtime.evaluate import evaluate
from onnx_dc.analysis.curves import LayerInfo, Point, Sensitivity, Setting
from onnx_dc.analysis.metrics import Accuracy
from onnx_dc.analysis.sensitivity import run_sensitivity
from onnx_dc.analysis.sweep import Runner
from onnx_dc.analysis.target import knapsack, knapsack_bytes

LENET = ROOT / "models" / "lenet_300_100.onnx"
DATA = f"mnist:{MNIST_DIR}"
GRID = {"ratios": (0.5, 0.95), "class_nums": (16, 2)}


@pytest.fixture(scope="module")
def sweep() -> Sensitivity:
    """LeNet-300-100 on 500 MNIST test digits, serial."""
    shared_path(MNIST_DIR)  # set up before any function-scoped guard: this is the one that fails in CI
    return run_sensitivity(LENET, Accuracy(DATA, limit=500), **GRID)


@needs_shared
def test_each_point_is_that_layer_alone_compressed(sweep):
    assert [i.node for i in sweep.layers] == ["ip1", "ip2", "ip3"]
    assert len(sweep.points) == 3 * (2 + 2 + 4)
    assert sweep.baseline == 100 * evaluate(LENET, DATA, limit=500).accuracy
    for point in (sweep.points[0], sweep.points[-1], sweep.points[11]):
        node = sweep.layer(point.layer).node
        rule = {"match": node, "sparse_ratio": point.sparse_ratio}
        rule.update({"class_num": point.class_num} if point.class_num else {"quantize_term": False})
        others = [{"match": i.node, "skip": True} for i in sweep.layers if i.weight != point.layer]
        dc = onnx_dc.compress(LENET, config={"nodes": [rule] + others})
        (row,) = dc.report.layers
        assert point.bytes == row.total_bytes
        assert point.score == 100 * evaluate(dc.model, DATA, limit=500).accuracy
        assert point.drop == sweep.baseline - point.score
    # pruning 95% of one layer alone costs more than 50% (the curves mean something)
    for info in sweep.layers:
        assert sweep.point(info.weight, sweep.points[1].setting).score < sweep.baseline


@needs_shared
def test_suggested_config_is_the_smallest_within_the_drop(sweep, tmp_path):
    for max_drop in (0.0, 1.0, 5.0):
        chosen = sweep.suggest(max_drop)
        for weight, point in chosen.items():
            fits = [p for p in sweep.options(weight) if p.drop <= max_drop]
            assert (point is None) == (not fits)
            if point is not None:
                assert point.bytes == min(p.bytes for p in fits)
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(sweep.suggested_config(1.0)))  # JSON is YAML
    result = onnx_dc.compress(LENET, config=load_config(path))
    assert [r.nodes for r in result.report.layers] == [
        i.node for i in sweep.layers if sweep.suggest(1.0)[i.weight] is not None]


@needs_shared
def test_workers_and_ray_give_the_same_numbers(sweep):
    metric = Accuracy(DATA, limit=500)
    for runner in (Runner(workers=2), Runner(ray="local")):
        other = run_sensitivity(LENET, metric, runner=runner, **GRID)
        assert other.points == sweep.points and other.baseline == sweep.baseline, runner
        assert other.runner == runner.describe()


def _synthetic(drops: list[list[tuple[float, int]]]) -> Sensitivity:
    layers = tuple(LayerInfo(f"w{i}", f"n{i}", "Gemm", (10,), 10) for i in range(len(drops)))
    points = tuple(Point(f"w{i}", 0.1 * j, None, 100 - d, d, b) for i, opts in enumerate(drops)
                   for j, (d, b) in enumerate(opts))
    return Sensitivity("m", "acc", "%", 100.0, layers, points, (), ())


def test_knapsack_equals_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(30):
        drops = [[(float(rng.choice([-0.1, 0, 0.05, 0.3, 0.7, 1.2, 3.0])), int(rng.integers(10, 1000)))
                  for _ in range(int(rng.integers(1, 5)))] for _ in range(int(rng.integers(1, 4)))]
        sens = _synthetic(drops)
        for budget in (0.0, 0.3, 1.0, 2.5):
            combos = [c for c in itertools.product(*drops) if sum(max(0.0, d) for d, _ in c) <= budget]
            if not combos:
                with pytest.raises(ConfigError, match="best reachable"):
                    knapsack(sens, budget)
                continue
            chosen = knapsack(sens, budget)
            assert sum(max(0.0, p.drop) for p in chosen.values()) <= budget + 1e-9
            assert sum(p.bytes for p in chosen.values()) == min(sum(b for _, b in c) for c in combos)


@needs_shared
def test_target_drop_is_met_and_smaller_than_uniform(capsys, sweep, tmp_path):
    saved = tmp_path / "s.json"
    saved.write_text(json.dumps(sweep.to_dict()))
    out, chosen = tmp_path / "t.dc.onnx", tmp_path / "chosen.yaml"
    code, text, err = cli(capsys, "compress", LENET, "-o", out, "--data", DATA, "--target-drop", "1.0", "--limit",
                          "500", "--sensitivity", saved, "--config-out", chosen, "--json")
    assert code == 0, err
    res = json.loads(text)
    measured = sweep.baseline - 100 * evaluate(out, DATA, limit=500).accuracy
    assert measured == res["target"]["rounds"][-1]["measured"] <= 1.0
    again = onnx_dc.compress(LENET, config=chosen)  # the written config reproduces the model
    assert again.report.totals()["compressed_bytes"] == res["totals"]["compressed_bytes"]
    # no uniform measured setting that keeps within the target is smaller
    for p in {p.setting for p in sweep.points}:
        kwargs = {"sparse_ratio": p.sparse_ratio, "class_num": p.class_num or 32, "quantize_term": bool(p.class_num)}
        uniform = onnx_dc.compress(LENET, **kwargs)
        if sweep.baseline - 100 * evaluate(uniform.model, DATA, limit=500).accuracy <= 1.0:
            assert uniform.report.totals()["compressed_bytes"] >= res["totals"]["compressed_bytes"], p


def test_knapsack_over_bytes_equals_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(30):
        drops = [[(float(rng.choice([-0.1, 0, 0.05, 0.3, 0.7, 1.2, 3.0])), int(rng.integers(1, 40)))
                  for _ in range(int(rng.integers(1, 4)))] for _ in range(int(rng.integers(1, 4)))]
        sens = _synthetic(drops)  # every layer also has its dense option: 40 B, no drop
        options = [[(0.0, 40)] + [(max(0.0, d), b) for d, b in layer] for layer in drops]
        for capacity in (20, 50, 80, 400):
            combos = [c for c in itertools.product(*options) if sum(b for _, b in c) <= capacity]
            if not combos:
                with pytest.raises(ConfigError, match="smallest measured settings"):
                    knapsack_bytes(sens, capacity, steps=capacity)
                continue
            chosen = knapsack_bytes(sens, capacity, steps=capacity)  # one byte per unit: exact
            total = sum(40 if p is None else p.bytes for p in chosen.values())
            assert total <= capacity
            assert sum(0.0 if p is None else max(0.0, p.drop) for p in chosen.values()) == pytest.approx(
                min(sum(d for d, _ in c) for c in combos))


def test_knapsack_over_bytes_minimises_the_smooth_error_where_the_sweep_measured_it():
    """Every drop 0 (no held-out sample changes its top-1 with one layer compressed), errors differ: the
    choice is the one of least summed error (brute force), not the first that fits; a sweep whose points
    lack errors (labels, or an older JSON) still ranks by drops."""
    rng = np.random.default_rng(2)
    for _ in range(30):
        opts = [[(float(rng.uniform(0, 1)), int(rng.integers(1, 40))) for _ in range(int(rng.integers(1, 4)))]
                for _ in range(int(rng.integers(1, 4)))]
        layers = tuple(LayerInfo(f"w{i}", f"n{i}", "Gemm", (10,), 10) for i in range(len(opts)))
        points = tuple(Point(f"w{i}", 0.1 * j, 16, 100.0, 0.0, b, error=e) for i, layer in enumerate(opts)
                       for j, (e, b) in enumerate(layer))
        sens = Sensitivity("m", "fidelity", "%", 100.0, layers, points, (), ())
        assert sens.smooth and not _synthetic([[(0.0, 5)]]).smooth
        assert Sensitivity.from_dict(json.loads(json.dumps(sens.to_dict()))).points == points
        options = [[(0.0, 40)] + list(layer) for layer in opts]
        for capacity in (20, 50, 80):
            combos = [c for c in itertools.product(*options) if sum(b for _, b in c) <= capacity]
            if not combos:
                continue
            chosen = knapsack_bytes(sens, capacity, steps=capacity)
            assert sum(40 if p is None else p.bytes for p in chosen.values()) <= capacity
            assert sum(0.0 if p is None else p.error for p in chosen.values()) == pytest.approx(
                min(sum(e for e, _ in c) for c in combos))


def test_knapsack_over_bytes_of_many_layers_keeps_within_the_capacity():
    """200 layers of 6 settings: every layer's rounding to whole units stays within the capacity, and a
    capacity just above the smallest settings' sum is met (units at most 1 / 100 of it per layer), and
    so is a capacity of exactly that sum (solved again in bytes when the rounding refuses it)."""
    from onnx_dc.analysis import target

    rng = np.random.default_rng(4)
    layers = tuple(LayerInfo(f"w{i}", f"n{i}", "Gemm", (2000,), 2000) for i in range(200))  # dense: 8000 B
    points = tuple(Point(f"w{i}", 0.1 * j, 16, 100.0, 0.0, int(rng.integers(100, 5000)), error=float(rng.uniform(0, 2)))
                   for i in range(200) for j in range(6))
    sens = Sensitivity("m", "fidelity", "%", 100.0, layers, points, (), ())
    least = sum(min(p.bytes for p in sens.options(info.weight)) for info in layers)
    rounded = [[(None, 0.0, 8000)] + [(p, p.error, p.bytes) for p in sens.options(info.weight)] for info in layers]
    assert target._knapsack_units(rounded, least, target.UNITS_PER_LAYER * 200) is None  # rounding refuses it
    for capacity in (least, int(least * 1.01), int(least * 1.5), 8000 * 200):
        chosen = knapsack_bytes(sens, capacity)
        assert sum(8000 if p is None else p.bytes for p in chosen.values()) <= capacity
    with pytest.raises(ConfigError, match="more than the"):
        knapsack_bytes(sens, least - 1)


def test_target_ratio_also_measures_the_best_uniform_setting_that_fits():
    """Where the layers' errors do not add up (here a mix of settings costs 1.0 more than its parts), the
    knapsack's mixed choice measures worse than one swept setting on every layer: the size target measures
    the best uniform settings predicted to fit and keeps the better, as measured. A uniform setting
    predicted too large is not compressed at all."""
    from onnx_dc.analysis.curves import config_for
    from onnx_dc.analysis.target import UNIFORM_TRIES, choose_for_ratio, uniform_candidates

    layers = tuple(LayerInfo(f"w{i}", f"n{i}", "Gemm", (10,), 10) for i in range(2))  # dense: 40 B each
    points = (Point("w0", 0.0, 16, 100.0, 0.0, 10, error=0.1), Point("w0", 0.0, 8, 100.0, 0.0, 6, error=0.3),
              Point("w0", 0.5, 8, 100.0, 0.0, 4, error=0.05),
              Point("w1", 0.0, 16, 100.0, 0.0, 10, error=0.1), Point("w1", 0.0, 8, 100.0, 0.0, 6, error=0.3))
    sens = Sensitivity("m", "fidelity", "%", 100.0, layers, points, (0.5,), (8, 16))
    assert [(e, b, (s.sparse_ratio, s.class_num)) for e, b, s in uniform_candidates(sens)] == [
        (pytest.approx(0.2), 20, (0.0, 16)), (pytest.approx(0.6), 12, (0.0, 8))]
    measured = []

    def measure(config):
        nodes = config["nodes"]
        kinds = {(n.get("sparse_ratio"), n.get("class_num")) for n in nodes}
        nbytes = sum(next(p.bytes for p in points if p.layer == f"w{i}" and (p.sparse_ratio, p.class_num) == k)
                     for i, k in enumerate((n["sparse_ratio"], n["class_num"]) for n in nodes))
        error = sum(next(p.error for p in points if p.layer == f"w{i}" and (p.sparse_ratio, p.class_num) == (
            n["sparse_ratio"], n["class_num"])) for i, n in enumerate(nodes)) + (1.0 if len(kinds) > 1 else 0.0)
        measured.append(config)
        return 100.0, nbytes, nbytes, error  # the "model" is its bytes here

    result = choose_for_ratio(sens, 5.0, 80, measure, packed_size=lambda nbytes: nbytes)
    kinds = [r.kind for r in result.rounds]
    assert kinds[0] == "knapsack" and kinds[-1] == "uniform 0/8" and len(measured) == len(result.rounds)
    assert sum(k != "knapsack" for k in kinds) <= UNIFORM_TRIES
    assert result.rounds[0].config["nodes"][0]["sparse_ratio"] == 0.5  # the knapsack mixes 0.5 / 8 and 0 / 16
    assert result.chosen.kind == "uniform 0/8" and result.chosen.error == pytest.approx(0.6)
    assert result.chosen.config == config_for({i.weight: points[1].setting for i in layers}, layers)
    assert config_for({i.weight: points[0].setting for i in layers}, layers) not in measured  # 20 B > 16 B
    assert "(uniform 0/8)" in result.summary() and result.to_dict()["rounds"][-1]["kind"] == "uniform 0/8"


@needs_shared
def test_target_ratio_on_resnet20_ranks_layers_by_output_error(tmp_path):
    """ResNet-20 on unlabeled crops: top-1 agreement on the held-out crops moves in whole samples, and
    often not at all with one layer compressed, so ranked by drops the knapsack sees such settings as free. Ranked by the sweep's output
    errors, the same byte capacity gives a whole model closer to the original (lower error, higher cosine)."""
    import dataclasses

    from calib_images import require, write_folder
    from onnx_dc.analysis.metrics import Agreement
    from onnx_dc.analysis.curves import config_for
    from onnx_dc.analysis.target import config_measure
    from onnx_dc.calibrate import fidelity
    from onnx_dc.data.calib import parse_calib_spec

    model = require(SHARED_DATA / "real" / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx")
    calib = parse_calib_spec(f"images:{write_folder(tmp_path / 'r20', 120, (48, 48), seed=7, suffix='.jpg')}",
                             size="32,32", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    metric = Agreement(calib, model.read_bytes())
    sens = run_sensitivity(model, metric, ratios=(0.0,), class_nums=(4, 8, 32), calib=calib)
    assert sens.smooth and all(p.error > 0 for p in sens.points)
    coarse = dataclasses.replace(sens, points=tuple(dataclasses.replace(p, error=None) for p in sens.points))
    held_out = len(metric._heldout()[0])
    steps = {round(p.drop * held_out / 100, 6) for p in sens.points}
    assert all(float(k).is_integer() for k in steps)  # drops move in whole held-out samples
    capacity = int(sum(info.dense_bytes for info in sens.layers) / 6)  # about 5 bits a weight
    measure = config_measure(model, metric, calib=calib)
    got = {}
    for name, s in (("error", sens), ("drop", coarse)):
        chosen = knapsack_bytes(s, capacity)
        config = config_for({w: None if p is None else p.setting for w, p in chosen.items()}, sens.layers)
        _, _, compressed, error = measure(config)
        got[name] = (error, fidelity(compressed, model, calib).outputs[0].cosine)
    assert got["error"][0] < 0.8 * got["drop"][0] and got["error"][1] > got["drop"][1], got


@needs_shared
def test_target_ratio_is_met_by_the_packed_file_with_the_best_measured_round(capsys, sweep, tmp_path, monkeypatch):
    saved = tmp_path / "s.json"
    saved.write_text(json.dumps(sweep.to_dict()))
    out = tmp_path / "r.dc.onnx"
    runs = []
    real_compress = onnx_dc.api.compress
    monkeypatch.setattr(onnx_dc.api, "compress", lambda *a, **k: runs.append(k) or real_compress(*a, **k))
    code, text, err = cli(capsys, "compress", LENET, "-o", out, "--data", DATA, "--target-ratio", "30", "--limit",
                          "500", "--sensitivity", saved, "--json")
    assert code == 0, err
    target = json.loads(text)["target"]
    assert len(runs) == len(target["rounds"])  # the chosen round's model is written, not compressed again
    chosen = target["rounds"][target["chosen_round"] - 1]
    packed = onnx_dc.pack(out, tmp_path / "r.dcz")
    assert packed == chosen["packed_bytes"] and LENET.stat().st_size / packed >= 30  # measured on the file written
    assert sweep.baseline - 100 * evaluate(out, DATA, limit=500).accuracy == chosen["measured"]
    assert chosen["measured"] == min(r["measured"] for r in target["rounds"] if r["ratio"] >= 30)
    err = expect_user_error(capsys, "compress", LENET, "-o", tmp_path / "x.dc.onnx", "--data", DATA, "--limit", "500",
                            "--target-ratio", "2000", "--sensitivity", saved, contains="not met; the smallest .dcz")
    assert not (tmp_path / "x.dc.onnx").exists()


@needs_shared
def test_unreachable_target_says_the_best_reachable(capsys, tmp_path):
    err = expect_user_error(capsys, "compress", LENET, "-o", tmp_path / "x.dc.onnx", "--data", DATA,
                            "--target-drop", "0", "--limit", "500", "--ratios", "0.95", "--class-nums", "2",
                            contains="best reachable")
    assert "--target-drop 0" in err or "drop of 0" in err
    assert not (tmp_path / "x.dc.onnx").exists()


@needs_shared
def test_sensitivity_cli_writes_table_json_plot_and_config(capsys, tmp_path):
    paths = {k: tmp_path / f"s.{k}" for k in ("json", "png", "yaml")}
    code, text, err = cli(capsys, "sensitivity", LENET, "--data", DATA, "--limit", "200", "--ratios", "0.9",
                          "--class-nums", "4", "--json", paths["json"], "--plot", paths["png"],
                          "--config-out", paths["yaml"], "--max-drop", "2")
    assert code == 0, err
    assert text.splitlines()[1].split() == ["layer", "op", "weights", "r0.9", "k4"]
    saved = json.loads(paths["json"].read_text())
    assert len(saved["points"]) == 3 * 3 and saved["max_drop"] == 2.0
    assert load_config(paths["yaml"]).nodes[0].match == "ip1"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_shared
def test_plot_writes_the_figures(capsys, sweep, tmp_path):
    dc = tmp_path / "m.dc.onnx"
    onnx_dc.compress(LENET, dc, sparse_ratio=0.9, class_num=16)
    saved = tmp_path / "s.json"
    saved.write_text(json.dumps(sweep.to_dict()))
    code, text, err = cli(capsys, "plot", dc, "--baseline", LENET, "-o", tmp_path / "plots", "--sensitivity", saved)
    assert code == 0, err
    from matplotlib.image import imread

    for name in ("histograms", "bytes", "bits", "sensitivity"):
        image = imread(tmp_path / "plots" / f"{name}.png")
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.05, name


def test_bad_input_is_one_line(capsys, tmp_path, monkeypatch):
    model = tmp_path / "m.onnx"
    from conftest import mlp_model
    from onnx_dc.graph.io import write_model

    write_model(mlp_model(), model)
    base = ("sensitivity", model, "--data", "digits")
    expect_user_error(capsys, *base, "--ratios", "0.5,1.0", contains="--ratios: 1 is outside [0, 1)")
    expect_user_error(capsys, *base, "--ratios", "-0.1", contains="outside [0, 1)")
    expect_user_error(capsys, *base, "--ratios", ",", contains="--ratios: empty list")
    expect_user_error(capsys, *base, "--class-nums", "1", contains="outside 2..256")
    expect_user_error(capsys, *base, "--workers", "0", contains="--workers 0")
    expect_user_error(capsys, *base, "--ray", "127.0.0.1:9", contains="no Ray cluster answers")
    expect_user_error(capsys, "compress", model, "-o", tmp_path / "o.dc.onnx", "--data", "digits",
                      "--target-drop", "-1", contains="--target-drop -1")
    expect_user_error(capsys, "compress", model, "-o", tmp_path / "o.dc.onnx", "--ratios", "0.5",
                      contains="only with --target-drop")
    expect_user_error(capsys, "compress", model, "-o", tmp_path / "o.dc.onnx", "--data", "digits",
                      "--target-ratio", "1", contains="--target-ratio must be a number above 1")
    expect_user_error(capsys, "compress", model, "-o", tmp_path / "o.dc.onnx", "--data", "digits",
                      "--target-ratio", "8", "--target-drop", "1", contains="not both")
    expect_user_error(capsys, "compress", model, "-o", tmp_path / "o.dc.onnx", "--data", "digits",
                      "--target-ratio", "8", "--class-num", "4", contains="--target-ratio chooses the settings itself")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    expect_user_error(capsys, *base, "--plot", tmp_path / "s.png", contains="pip install 'onnx_dc[plot]'")
    expect_user_error(capsys, "plot", model, "--baseline", model, "-o", tmp_path / "p",
                      contains="pip install 'onnx_dc[plot]'")


def test_sensitivity_quiet_without_an_output_is_refused(capsys, tmp_path):
    from conftest import mlp_model
    from onnx_dc.graph.io import write_model

    model = tmp_path / "m.onnx"
    write_model(mlp_model(), model)
    base = ("sensitivity", model, "--data", "digits", "--ratios", "0.5", "--class-nums", "8")
    expect_user_error(capsys, *base, "-q", contains="-q needs --json FILE or --plot PNG (or --config-out YAML)")
    code, text, err = cli(capsys, *base, "-q", "--json", tmp_path / "s.json")
    assert code == 0 and text == "" and err == ""
    assert len(json.loads((tmp_path / "s.json").read_text())["points"]) == 2 * 3  # layers x (ratio, k, both)


def test_plot_checks_the_baseline_before_creating_the_folder(capsys, tmp_path):
    models = ROOT / "models"
    plots = tmp_path / "plots"
    expect_user_error(capsys, "plot", models / "lenet5.dc.onnx", "--baseline", LENET, "-o", plots,
                      contains="not the model")
    (tmp_path / "notes.onnx").write_text("not a model\n")
    expect_user_error(capsys, "plot", models / "lenet5.dc.onnx", "--baseline", tmp_path / "notes.onnx", "-o", plots,
                      contains="notes.onnx: not an ONNX model")
    assert not plots.exists()
    code, _, err = cli(capsys, "plot", models / "lenet5.dc.onnx", "--baseline", models / "lenet5.onnx", "-o", plots)
    assert code == 0 and sorted(p.name for p in plots.iterdir()) == ["bits.png", "bytes.png", "histograms.png"], err


@needs_shared
def test_fidelity_path_without_labels(capsys, tmp_path):
    from onnx_dc.graph.io import serialize
    from onnx_dc.formats.models import load_model
    from onnx_dc.analysis.metrics import Agreement

    metric = Agreement(f"mnist:{MNIST_DIR}", serialize(load_model(LENET)))
    grid = {"ratios": (0.95,), "class_nums": (2,)}
    serial = run_sensitivity(LENET, metric, **grid)
    assert serial.baseline == 100.0 and all(p.drop > 0 for p in serial.points)  # 95% pruned or 2 values: changes
    assert run_sensitivity(LENET, metric, runner=Runner(workers=2), **grid).points == serial.points
    out = tmp_path / "f.dc.onnx"
    code, text, err = cli(capsys, "compress", LENET, "-o", out, "--calib", f"mnist:{MNIST_DIR}", "--target-drop", "2",
                          "--ratios", "0.5,0.9", "--class-nums", "16", "--json")
    assert code == 0, err
    measured = json.loads(text)["target"]["rounds"][-1]["measured"]
    assert measured == 100.0 - metric(load_model(out)) <= 2.0
    expect_user_error(capsys, "sensitivity", LENET, "--data", DATA, "--calib", DATA, contains="one of the two")


@needs_shared
def test_calib_sweep_runs_the_data_aware_passes_per_layer(capsys, tmp_path):
    from conftest import MNIST8
    from onnx_dc.graph.io import serialize
    from onnx_dc.formats.models import load_model
    from onnx_dc.analysis.metrics import Agreement

    calib = f"mnist:{MNIST_DIR}"
    metric = Agreement(calib, serialize(load_model(MNIST8)))
    grid = {"ratios": (0.8,), "class_nums": (16,)}
    aware = run_sensitivity(MNIST8, metric, calib=calib, **grid)
    assert aware.passes == ("prune_by_activation", "reconstruct", "weighted_kmeans", "gptq", "refit", "bias_correction")
    assert run_sensitivity(MNIST8, metric, calib=calib, runner=Runner(workers=2), **grid).points == aware.points
    # a point is what compress(calib=...) makes of that layer alone at that setting
    for point in (aware.points[0], aware.points[5], aware.points[-1]):
        rule = {"match": aware.layer(point.layer).node, "sparse_ratio": point.sparse_ratio}
        rule.update({"class_num": point.class_num} if point.class_num else {"quantize_term": False})
        others = [{"match": i.node, "skip": True} for i in aware.layers if i.weight != point.layer]
        dc = onnx_dc.compress(MNIST8, config={"nodes": [rule] + others}, calib=calib)
        assert point.passes == tuple(dc.calib.result.passes_ran())
        assert (point.score, point.bytes) == (metric(dc.model), dc.report.layers[0].total_bytes)
    # the data-aware passes lose less than magnitude pruning at 80% on this real model
    plain = run_sensitivity(MNIST8, metric, ratios=(0.8,), class_nums=(16,))
    assert plain.passes == ("prune", "share")
    pruned = [(plain.point(i.weight, Setting(0.8)), aware.point(i.weight, Setting(0.8))) for i in aware.layers]
    assert all(a.score >= p.score for p, a in pruned) and sum(a.score - p.score for p, a in pruned) > 5
    saved = tmp_path / "plain.json"
    saved.write_text(json.dumps(plain.to_dict()))
    expect_user_error(capsys, "compress", MNIST8, "-o", tmp_path / "x.dc.onnx", "--calib", calib,
                      "--target-drop", "1", "--sensitivity", saved, contains="data-aware")
