"""Fine-tuning through onnxruntime-training: forms, gradients, invariants, schedule, API and CLI.

Everything runs on scikit-learn's digits (1,257 training images of 8x8) and small MLPs.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import mlp_model, needs_training

import onnx_dc
from onnx_dc.api import finish, prepare
from onnx_dc.data.datasets import Preprocess, load_dataset
from onnx_dc.errors import ConfigError, TrainingUnavailable
from onnx_dc.graph.io import serialize
from onnx_dc.passes.prune import prune
from onnx_dc.passes.share import share
from onnx_dc.train import ort_training
from onnx_dc.train.forms import TrainForm, build_training_graph
from onnx_dc.train.settings import OptimizerKind, StageSettings, resolve_train_settings

pytestmark = needs_training

SIZES = (64, 32, 10)
CONFIG = {"defaults": {"class_num": 8}, "nodes": [{"match": "fc0", "sparse_ratio": 0.7}, {"match": "fc1", "sparse_ratio": 0.5}]}


@pytest.fixture(scope="module")
def digits():
    train = load_dataset("digits", "train")
    x = Preprocess(scale=1 / 16).apply(train.images, (64,))
    return x, train.labels


def _numpy_grads(ws, bs, x, y):
    """Analytic float64 gradients of mean softmax cross-entropy of Gemm-ReLU-Gemm."""
    w0, w1 = (w.astype(np.float64) for w in ws)
    z0 = x @ w0.T + bs[0]
    h = np.maximum(z0, 0)
    z1 = h @ w1.T + bs[1]
    p = np.exp(z1 - z1.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d1 = p.copy()
    d1[np.arange(len(y)), y] -= 1
    d1 /= len(y)
    dh = (d1 @ w1) * (z0 > 0)
    return [dh.T @ x, d1.T @ h]


def test_shared_codebook_gradient_is_the_per_cluster_sum(digits):
    """Eq. 3: one SGD step moves each centroid by lr x the sum of its weights' gradients."""
    from onnx_dc.train.loop import Trainer
    from onnx_dc.train.optim import Optimizer

    x, y = digits[0][:128], digits[1][:128]
    state = prepare(mlp_model(sizes=SIZES), CONFIG)
    prune(state)
    share(state)
    trainer = Trainer(state, TrainForm.SHARED)
    try:
        before = {w: trainer.shared[w].codebook.copy() for w in trainer.shared}
        ws = [state.layers[w].weights for w in ("w0", "w1")]
        bs = [trainer.values[b].astype(np.float64) for b in ("b0", "b1")]
        expected = _numpy_grads(ws, bs, x.astype(np.float64), y)
        lr = 0.01
        trainer.step(x, y, Optimizer(StageSettings(lr=lr, momentum=0.0, optimizer=OptimizerKind.SGD), 1))
        for w, g in zip(("w0", "w1"), expected):
            codes = state.layers[w].codes.ravel()
            per_cluster = np.bincount(codes, weights=g.ravel(), minlength=before[w].size)
            per_cluster[0] = 0.0
            moved = (before[w] - trainer.shared[w].codebook) / lr
            np.testing.assert_allclose(moved, per_cluster, rtol=2e-3, atol=2e-5)
            assert trainer.shared[w].codebook[0] == 0.0
            # the weights written to onnxruntime are codebook[codes]
            np.testing.assert_array_equal(trainer.shared[w].weights, trainer.shared[w].codebook[state.layers[w].codes])
    finally:
        trainer.close()


def test_codebook_training_with_reassignment_steps_latent_values_and_moves_codes(digits):
    """reassign_lr > 0: latent values take the weights' gradient step, each weight then takes its nearest centroid."""
    from onnx_dc.train.loop import Trainer, fit
    from onnx_dc.train.optim import Optimizer

    x, y = digits[0][:128], digits[1][:128]
    state = prepare(mlp_model(sizes=SIZES), CONFIG)
    prune(state)
    share(state)
    masks = {w: layer.mask.copy() for w, layer in state.layers.items()}
    trainer = Trainer(state, TrainForm.SHARED, reassign_lr=20.0)
    try:
        sh = trainer.shared["w0"]
        latent0, codes0 = sh.latent.copy(), sh.codes.copy()
        np.testing.assert_array_equal(latent0, sh.codebook[codes0])  # latent values start at codebook[codes]
        ws = [state.layers[w].weights for w in ("w0", "w1")]
        bs = [trainer.values[b].astype(np.float64) for b in ("b0", "b1")]
        g = _numpy_grads(ws, bs, x.astype(np.float64), y)[0].ravel()[sh.index]
        trainer.step(x, y, Optimizer(StageSettings(lr=0.01, momentum=0.0, optimizer=OptimizerKind.SGD), 1))
        np.testing.assert_allclose(sh.latent, latent0 - 20.0 * g, rtol=1e-4, atol=1e-5)
        # every kept weight now has the code of the non-zero centroid nearest its latent value
        distance = np.abs(sh.latent[:, None] - sh.codebook[None, 1:])
        np.testing.assert_array_equal(sh.codes, distance.argmin(1) + 1)
        assert np.any(sh.codes != codes0)
        np.testing.assert_array_equal(sh.weights.ravel()[sh.index], sh.codebook[sh.codes])
    finally:
        trainer.close()
    # a whole stage: codes move, masks and the number of shared values stay, weights are codebook[codes]
    codes_before = {w: layer.codes.copy() for w, layer in state.layers.items()}
    record = fit(state, TrainForm.SHARED, digits[0], digits[1],
                 StageSettings(epochs=2, lr=1e-3, optimizer=OptimizerKind.ADAMW, reassign_lr=1e-2))
    assert record.losses[-1] < record.losses[0]
    for w, layer in state.layers.items():
        assert np.any(layer.codes != codes_before[w])
        np.testing.assert_array_equal(layer.codes != 0, masks[w])
        np.testing.assert_array_equal(layer.weights, layer.codebook[layer.codes])
        assert np.unique(layer.weights[layer.weights != 0]).size <= 8
    # reassign_lr 0 (the paper's Eq. 3 alone): codes stay as they are
    codes_before = {w: layer.codes.copy() for w, layer in state.layers.items()}
    fit(state, TrainForm.SHARED, digits[0], digits[1], StageSettings(epochs=1, lr=1e-3, optimizer=OptimizerKind.ADAMW))
    for w, layer in state.layers.items():
        np.testing.assert_array_equal(layer.codes, codes_before[w])


@pytest.mark.parametrize("pruned", [True, False])
def test_reassignment_gives_every_weight_its_nearest_centroid(pruned):
    """Only weights that left their interval are searched again; the codes equal a brute-force nearest centroid,
    also after large moves, with centroids out of order and with two equal centroids."""
    from onnx_dc.train.loop import _Shared

    rng = np.random.default_rng(3)
    codebook = rng.normal(size=9).astype(np.float32)
    codebook[3] = codebook[5]  # two centroids with one value
    first = 1 if pruned else 0
    if pruned:
        codebook[0] = 0.0
    latent = rng.normal(size=5000).astype(np.float32)
    codes = np.abs(latent[:, None] - codebook[None, first:]).argmin(1) + first
    sh = _Shared(codebook, codes, np.arange(5000) if pruned else None, np.zeros(5000, np.float32), latent.copy())
    for scale in (1e-3, 0.3, 3.0):
        sh.latent += rng.normal(scale=scale, size=5000).astype(np.float32)
        sh.codebook[first:] += rng.normal(scale=scale / 10, size=9 - first).astype(np.float32)
        sh.codebook[3] = sh.codebook[5]
        sh.reassign()
        got = sh.codebook[sh.codes]
        best = np.abs(sh.latent[:, None] - sh.codebook[None, first:]).min(1)
        np.testing.assert_array_equal(np.abs(sh.latent - got), best)
        assert sh.codes.min() >= first


def test_training_graph_trains_on_logits_before_softmax():
    import onnx
    from onnx import helper as oh

    model = mlp_model(sizes=SIZES)
    model.graph.node.append(oh.make_node("Softmax", ["y"], ["prob"], name="softmax", axis=1))
    model.graph.output[0].name = "prob"
    onnx.checker.check_model(model)
    graph = build_training_graph(prepare(model), TrainForm.DENSE)
    assert "Softmax" not in [n.op_type for n in graph.model.graph.node]
    loss_node = next(n for n in graph.model.graph.node if n.op_type == "SoftmaxCrossEntropyLoss")
    flatten = next(n for n in graph.model.graph.node if n.output[0] == loss_node.input[0])
    assert flatten.input[0] == "y"


def test_masked_training_keeps_pruned_weights_zero_and_loss_decreases(digits):
    from onnx_dc.train.loop import fit

    x, y = digits
    state = prepare(mlp_model(sizes=SIZES), CONFIG)
    first = fit(state, TrainForm.DENSE, x, y, StageSettings(epochs=3, lr=0.05), seed=0)
    assert first.losses[-1] < first.losses[0]
    prune(state)
    kept_before = {w: layer.weights.copy() for w, layer in state.layers.items()}
    for stage in (StageSettings(epochs=2, lr=0.05, weight_decay=1e-3),
                  StageSettings(epochs=1, lr=1e-3, optimizer=OptimizerKind.ADAMW, weight_decay=0.1)):
        fit(state, TrainForm.MASKED, x, y, stage, seed=1)
    for w, layer in state.layers.items():
        assert np.all(layer.weights[~layer.mask] == 0.0)
        assert not np.array_equal(layer.weights[layer.mask], kept_before[w][layer.mask])


def test_schedule_invariants_and_codebook_training_lowers_loss(tmp_path):
    schedule = {"prune_steps": [["fc0"], ["fc1"]], "retrain": {"epochs": 2, "lr": 0.05},
                "codebook": {"epochs": 3, "lr": 1e-3}}
    lines: list[str] = []
    result = onnx_dc.compress(mlp_model(sizes=SIZES), tmp_path / "m.dc.onnx", CONFIG, data="digits",
                              schedule=schedule, echo=lines.append)
    for w, ratio in (("w0", 0.7), ("w1", 0.5)):
        layer = result.state.layers[w]
        nonzero = np.unique(layer.weights[layer.weights != 0])
        assert nonzero.size <= 8
        assert np.all(layer.weights[~layer.mask] == 0.0)
        assert abs(1 - layer.kept() / layer.weights.size - ratio) < 0.01
    # prune steps ran layer by layer: fc0 alone first, then fc1
    steps = [line for line in lines if line.startswith("prune step")]
    assert len(steps) == 2 and "w0" in steps[0] and "w1" not in steps[0] and "w1" in steps[1]
    codebook_losses = [float(line.split("loss ")[1].split()[0]) for line in lines if line.startswith("  codebook")]
    assert len(codebook_losses) == 3 and codebook_losses[-1] < codebook_losses[0]
    untrained = onnx_dc.compress(mlp_model(sizes=SIZES), tmp_path / "u.dc.onnx", CONFIG)
    assert untrained.layers[0].kept == result.layers[0].kept
    acc = onnx_dc.evaluate(tmp_path / "m.dc.onnx", "digits").accuracy
    assert acc > onnx_dc.evaluate(tmp_path / "u.dc.onnx", "digits").accuracy + 0.4


def test_prune_steps_iterative_and_errors():
    from onnx_dc.train.schedule import prune_steps

    state = prepare(mlp_model(sizes=SIZES), CONFIG)
    steps = prune_steps(state, resolve_train_settings({"prune_steps": 2}))
    assert steps == [{"w0": (0.35, None), "w1": (0.25, None)}, {"w0": (0.7, None), "w1": (0.5, None)}]
    steps = prune_steps(state, resolve_train_settings({"prune_steps": [["fc1"]]}))
    assert steps == [{"w1": (0.5, None)}, {"w0": (0.7, None)}]  # unnamed layers prune last
    with pytest.raises(ConfigError, match="nothing"):
        prune_steps(state, resolve_train_settings({"prune_steps": [["nothing*"]]}))


def test_prune_ramp_cubic_takes_big_steps_first():
    from onnx_dc.train.schedule import prune_steps

    state = prepare(mlp_model(sizes=SIZES), CONFIG)
    steps = prune_steps(state, resolve_train_settings({"prune_steps": 4, "prune_ramp": "cubic"}))
    ratios = [s["w0"][0] for s in steps]
    expected = [0.7 * (1 - (1 - i / 4) ** 3) for i in (1, 2, 3, 4)]
    np.testing.assert_allclose(ratios, expected)
    assert ratios[-1] == pytest.approx(0.7)
    increments = np.diff([0.0, *ratios])
    assert np.all(np.diff(increments) < 0)  # each step removes fewer weights than the one before
    assert resolve_train_settings({"prune_ramp": "cubic"}).to_dict()["prune_ramp"] == "cubic"
    with pytest.raises(ConfigError, match="prune_ramp"):
        resolve_train_settings({"prune_ramp": "exponential"})


def test_train_settings_report_every_problem():
    with pytest.raises(ConfigError) as err:
        resolve_train_settings({"epochs": -1, "optimizer": "rmsprop", "bogus": 1,
                                "retrain": {"lr": 0, "speed": 2}, "batch_size": 0, "codebook": {"reassign_lr": -1}})
    text = str(err.value)
    for fragment in ("epochs", "rmsprop", "bogus", "lr", "speed", "batch_size", "codebook.reassign_lr: -1"):
        assert fragment in text
    s = resolve_train_settings({"epochs": 5, "codebook": {"epochs": 1}}, {"optimizer": "adamw"}, {"epochs": 2})
    assert (s.retrain.epochs, s.codebook.epochs, s.retrain.optimizer) == (2, 2, OptimizerKind.ADAMW)
    assert resolve_train_settings({"codebook": {"reassign_lr": 1e-3}}).codebook.reassign_lr == 1e-3
    assert resolve_train_settings({}).codebook.reassign_lr == 0.0  # labeled training keeps the paper's codes


def test_finetune_restores_the_state_and_keeps_the_layout(tmp_path):
    from onnx_dc.train.restore import state_from_dc

    src = tmp_path / "m.dc.onnx"
    plain = onnx_dc.compress(mlp_model(sizes=SIZES), src, CONFIG)
    restored = state_from_dc(plain.model)
    assert serialize(finish(restored).model) == serialize(plain.model)  # lossless round trip
    tuned = onnx_dc.finetune(src, tmp_path / "t.dc.onnx", "digits", epochs=2, schedule={"codebook": {"lr": 1e-3}})
    for w, layer in tuned.state.layers.items():
        np.testing.assert_array_equal(layer.codes, plain.state.layers[w].codes)
        assert not np.array_equal(layer.codebook, plain.state.layers[w].codebook)
    assert [(r.kept, r.code_bits) for r in tuned.layers] == [(r.kept, r.code_bits) for r in plain.layers]
    before = onnx_dc.evaluate(src, "digits").accuracy
    after = onnx_dc.evaluate(tmp_path / "t.dc.onnx", "digits").accuracy
    assert after >= before - 0.02


def test_cli_compress_with_data_and_finetune(tmp_path, capsys):
    from onnx_dc.cli import main
    from onnx_dc.graph.io import write_model

    src = tmp_path / "m.onnx"
    write_model(mlp_model(sizes=SIZES), src)
    assert main(["compress", str(src), "-o", str(tmp_path / "m.dc.onnx"), "--sparse-ratio", "0.5", "--class-num", "8",
                 "--data", "digits", "--epochs", "1", "--lr", "0.05", "--json"]) == 0
    assert main(["finetune", str(tmp_path / "m.dc.onnx"), "-o", str(tmp_path / "t.dc.onnx"), "--data", "digits",
                 "--epochs", "1", "--optimizer", "adamw", "--lr", "1e-3"]) == 0
    assert (tmp_path / "t.dc.onnx").is_file()
    capsys.readouterr()
    assert main(["compress", str(src), "-o", str(tmp_path / "x.dc.onnx"), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "need --data" in err and len(err.strip().splitlines()) == 1


def test_fixed_batch_models_are_refused_in_one_line():
    from onnx import helper as oh

    from onnx_dc.errors import ModelError

    model = mlp_model(sizes=SIZES)
    model.graph.input[0].CopyFrom(oh.make_tensor_value_info("x", 1, [1, 64]))
    with pytest.raises(ModelError, match="fixes the batch size"):
        build_training_graph(prepare(model), TrainForm.DENSE)


def test_training_unavailable_is_one_line_and_the_rest_works(monkeypatch, tmp_path):
    ort_training.training_modules.cache_clear()
    monkeypatch.setitem(sys.modules, "onnxruntime.training.api", None)
    monkeypatch.setitem(sys.modules, "onnxruntime.training.artifacts", None)
    try:
        with pytest.raises(TrainingUnavailable) as err:
            onnx_dc.compress(mlp_model(sizes=SIZES), None, CONFIG, data="digits")
        assert "onnxruntime-training" in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(TrainingUnavailable):
            onnx_dc.finetune(tmp_path / "missing.dc.onnx", None, "digits")
        assert onnx_dc.compress(mlp_model(sizes=SIZES), None, CONFIG).layers  # compression still works
    finally:
        monkeypatch.undo()
        ort_training.training_modules.cache_clear()


def test_prune_step_line_is_a_summary_and_says_when_nothing_prunes():
    """Issue 23 item 13: on a 70-layer model the line listed every layer (~2,000 characters)."""
    from onnx_dc.api import prepare
    from onnx_dc.passes.prune import prune_layer
    from onnx_dc.train.schedule import prune_step_summary

    state = prepare(mlp_model(sizes=(64, 48, 32, 10)), sparse_ratio=0.5, class_num=8)
    for name, ratio in zip(state.layers, (0.5, 0.7, 0.9)):
        prune_layer(state.layers[name], sparse_ratio=ratio)
    step = {name: (None, None) for name in state.layers}
    line = prune_step_summary(state, step)
    assert line.startswith("3 layers, 10.0-50.0% kept (mean ") and not any(n in line for n in state.layers)
    first = next(iter(state.layers))
    assert prune_step_summary(state, {first: (0.5, None)}) == f"fc0 [{first}] 50.0% kept"  # node [weight]
    assert "no layer is pruned" in prune_step_summary(state, {})
