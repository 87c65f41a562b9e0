"""Block reconstruction: each block trained alone, in onnxruntime-training, to reproduce the original block's output.

Runs real onnxruntime-training sessions on the stem and first stage of the CIFAR-10 ResNet-20 of
../shared/data/real (photo crops, the data-aware passes first), on small models built with
onnx.helper (one with an op onnxruntime-training has no gradient for), and through the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import onnx
import pytest
from calib_images import require, write_folder
from conftest import SHARED_DATA, conv_model, finish_model, init, mlp_model, needs_training, run
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc import calibrate
from onnx_dc.api import prepare
from onnx_dc.cli import main
from onnx_dc.data.calib import Samples, parse_calib_spec
from onnx_dc.errors import ConfigError
from onnx_dc.graph.io import write_model
from onnx_dc.passes.data_aware import parse_data_aware
from onnx_dc.passes.prune import prune
from onnx_dc.passes.share import share
from onnx_dc.train.blocks import find_blocks, reconstruct_blocks
from onnx_dc.train.distill import DISTILL_DEFAULTS, run_teacher
from onnx_dc.train.settings import resolve_train_settings

RESNET20 = SHARED_DATA / "real" / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx"
STAGE1 = "/layer1/layer1.2/relu_1/Relu_output_0"  # ResNet-20 after its stem and first stage (7 convolutions)
FAST = resolve_train_settings(DISTILL_DEFAULTS, {"retrain": {"epochs": 0}, "codebook": {
    "epochs": 12, "lr": 3e-3, "reassign_lr": 3e-3, "lr_schedule": "cosine"}})


def data_free(model: onnx.ModelProto, **settings):
    """A state pruned by magnitude and shared by plain k-means, and the model it started from."""
    state = prepare(model, **settings)
    original = state.dense_model()
    prune(state)
    share(state)
    return state, original


def snapshot(state) -> dict:
    return {n: (layer.mask, layer.codebook.copy(), layer.codes.copy()) for n, layer in state.layers.items()}


def check_still_compressed(state, before: dict) -> None:
    """Masks as they were, the same number of codebook entries, every weight a codebook value."""
    for name, layer in state.layers.items():
        mask, codebook, _ = before[name]
        assert (layer.mask is None) == (mask is None)
        if mask is not None:
            np.testing.assert_array_equal(layer.mask, mask)
            assert np.all(layer.weights[~mask] == 0.0) and layer.codebook[0] == 0.0
        assert layer.codebook.shape == codebook.shape
        np.testing.assert_array_equal(layer.weights, layer.codebook[layer.codes])


def stage1_of_resnet20(tmp_path) -> onnx.ModelProto:
    """The real ResNet-20 cut after its first stage (stem + three residual blocks), as a file-less model."""
    from onnx.utils import Extractor

    model = onnx.shape_inference.infer_shapes(onnx.load(str(require(RESNET20))))
    cut = Extractor(model).extract_model(["input"], [STAGE1])
    cut.ir_version = 10
    return cut


def two_blocks_model(op: str = "Round") -> onnx.ModelProto:
    """MatMul -> ``op`` -> MatMul -> Relu: the first block ends in ``op``."""
    rng = np.random.default_rng(0)
    nodes = [oh.make_node("MatMul", ["x", "w0"], ["h"], name="fc0"), oh.make_node(op, ["h"], ["hr"], name="odd"),
             oh.make_node("MatMul", ["hr", "w1"], ["z"], name="fc1"), oh.make_node("Relu", ["z"], ["y"], name="relu")]
    g = oh.make_graph(nodes, "two_blocks", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                      [init("w0", rng.normal(0, 0.3, (32, 32)).astype(np.float32)),
                       init("w1", rng.normal(0, 0.3, (32, 16)).astype(np.float32))])
    return finish_model(g)


def test_blocks_of_a_graph_follow_the_layers():
    """A block runs from a layer's node to the next layer's; a weight's Transpose comes with it; chains merge."""
    state, _ = data_free(conv_model(), class_num=4)
    blocks = find_blocks(state)
    assert [b.name for b in blocks] == ["conv", "deconv", "fc"]
    graph = state.model.graph
    assert [[graph.node[i].name for i in b.nodes] for b in blocks] == [
        ["conv", "relu"], ["deconv", "flatten"], ["fc_w_T", "fc"]]
    assert [b.inputs for b in blocks] == [("x",), ("r",), ("f",)]
    assert [b.outputs for b in blocks] == [("r",), ("f",), ("y",)]
    two = find_blocks(state, block_layers=2)
    assert [(b.name, len(b.layers)) for b in two] == [("conv", 2), ("fc", 1)]
    assert two[0].outputs == ("f",)


def test_a_weight_read_by_two_blocks_is_left_out_with_the_reason():
    """``w`` is read before and after ``v``'s layer: neither block can train alone; within one block it can."""
    from conftest import shared_weight_model

    rng = np.random.default_rng(0)
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"], name="first"), oh.make_node("Relu", ["h"], ["hr"], name="r0"),
             oh.make_node("MatMul", ["hr", "v"], ["g"], name="mid"), oh.make_node("Relu", ["g"], ["gr"], name="r1"),
             oh.make_node("MatMul", ["gr", "w"], ["y"], name="second")]
    g = oh.make_graph(nodes, "tied", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                      [init("w", rng.normal(size=(16, 16)).astype(np.float32)),
                       init("v", rng.normal(size=(16, 16)).astype(np.float32))])
    state, _ = data_free(finish_model(g), class_num=4)
    first, mid = find_blocks(state)
    assert "also read by node second (MatMul) of a later block" in first.skipped
    assert mid.skipped == "it reads the weight w of another layer"
    state, _ = data_free(shared_weight_model(), class_num=4)
    (block,) = find_blocks(state)
    assert block.skipped is None and len(block.nodes) == 3


@needs_training
def test_block_reconstruction_lowers_each_blocks_error_on_resnet20(tmp_path):
    """The real ResNet-20's first stage after the data-aware passes at sparse 0.5 / class_num 16: no block's
    validation error rises, one falls, the compression stays, and the whole cut moves closer to the original."""
    cut = stage1_of_resnet20(tmp_path)
    folder = write_folder(tmp_path / "imgs", 40, (32, 32))
    spec = parse_calib_spec(f"images:{folder}", mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    state = prepare(cut, sparse_ratio=0.5, class_num=16)
    run_ = calibrate.run_calibrated(state, calibrate.start_calib(state, spec, None))
    original = calibrate.original_model(state, run_.result)
    # chains of two follow the residual blocks: the stem alone, then each block's two convolutions and its Add
    assert [len(b.layers) for b in find_blocks(state, 2)] == [1, 2, 2, 2]
    before = snapshot(state)
    result = reconstruct_blocks(state, original, run_.data.calib, FAST)
    assert len(result.blocks) == 7 and not any(b.skipped for b in result.blocks)
    for b in result.blocks:
        assert b.error_after <= b.error_before, b
    assert any(b.kept and b.error_after < b.error_before for b in result.blocks)
    check_still_compressed(state, before)
    json.dumps(result.to_dict())


@needs_training
def test_a_block_without_a_gradient_says_so_in_one_line_and_the_others_train(caplog):
    """The second block trains on the first one's compressed output and takes out the error that brings."""
    state, original = data_free(two_blocks_model("Round"), sparse_ratio=0.5, class_num=4)
    before = snapshot(state)
    x = np.random.default_rng(1).normal(size=(256, 1, 32)).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        result = reconstruct_blocks(state, original, Samples({"x": x}, stackable=True), FAST)
    first, second = result.blocks
    assert first.skipped is not None and "op Round (node odd)" in first.skipped
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "op Round (node odd)" in warned[0] and "\n" not in warned[0]
    _, codebook, codes = before["w0"]
    np.testing.assert_array_equal(state.layers["w0"].codebook, codebook)
    np.testing.assert_array_equal(state.layers["w0"].codes, codes)
    assert second.skipped is None and second.kept and second.error_after < second.error_before, second
    assert not np.array_equal(state.layers["w1"].codebook, before["w1"][1])
    check_still_compressed(state, before)


def shape_reading_model() -> onnx.ModelProto:
    """x [N, 32] -> MatMul -> Reshape to Shape(x) -> Relu -> MatMul: the first block reads a shape computed
    at run time (a tensor without the batch axis), as a transformer's reshapes do."""
    rng = np.random.default_rng(0)
    nodes = [oh.make_node("Shape", ["x"], ["xs"], name="shape"),
             oh.make_node("MatMul", ["x", "w0"], ["h"], name="fc0"),
             oh.make_node("Reshape", ["h", "xs"], ["hr"], name="reshape"),
             oh.make_node("Relu", ["hr"], ["a"], name="relu"),
             oh.make_node("MatMul", ["a", "w1"], ["y"], name="fc1")]
    g = oh.make_graph(nodes, "shapes", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                      [init("w0", rng.normal(0, 0.3, (32, 32)).astype(np.float32)),
                       init("w1", rng.normal(0, 0.3, (32, 8)).astype(np.float32))])
    return finish_model(g)


@needs_training
def test_a_block_reading_a_shape_computed_at_run_time_trains_one_sample_at_a_time():
    state, original = data_free(shape_reading_model(), sparse_ratio=0.5, class_num=4)
    before = snapshot(state)
    first = find_blocks(state)[0]
    assert "xs" in first.inputs  # [2], not per sample: joined samples would not split back
    x = np.random.default_rng(3).normal(size=(48, 1, 32)).astype(np.float32)
    result = reconstruct_blocks(state, original, Samples({"x": x}, stackable=True), FAST)
    assert all(b.skipped is None and b.error_after <= b.error_before for b in result.blocks), result.to_dict()
    check_still_compressed(state, before)


@needs_training
def test_a_block_that_training_makes_worse_keeps_the_layer_passes_result():
    """Keep-better per block: a learning rate far too large raises each block's error, and each is undone."""
    state, original = data_free(mlp_model(), sparse_ratio=0.5, class_num=4)
    before = snapshot(state)
    biases = {t.name: onnx.numpy_helper.to_array(t).copy() for t in state.model.graph.initializer
              if t.name.startswith("b")}
    x = np.random.default_rng(2).normal(size=(48, 1, 64)).astype(np.float32)
    settings = dataclasses.replace(FAST, codebook=dataclasses.replace(FAST.codebook, lr=10.0, reassign_lr=0.0))
    result = reconstruct_blocks(state, original, Samples({"x": x}, stackable=True), settings)
    assert [(b.kept, b.error_after == b.error_before) for b in result.blocks] == [(False, True), (False, True)]
    for name, layer in state.layers.items():
        np.testing.assert_array_equal(layer.codebook, before[name][1])
        np.testing.assert_array_equal(layer.codes, before[name][2])
    for t in state.model.graph.initializer:
        if t.name in biases:
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), biases[t.name])


def test_calib_blocks_settings_are_checked():
    assert parse_data_aware({"blocks": True, "block_layers": 2}).block_layers == 2
    with pytest.raises(ConfigError, match="block_layers"):
        parse_data_aware({"block_layers": 0})
    with pytest.raises(ConfigError, match="blocks"):
        parse_data_aware({"blocks": "yes"})


@needs_training
def test_compress_with_calib_blocks_runs_from_the_cli(tmp_path, capsys):
    src = tmp_path / "mlp.onnx"
    write_model(mlp_model(), src)
    cfg = tmp_path / "dc.yaml"
    cfg.write_text("version: 1\ncalib: {blocks: true}\n")
    x = np.random.default_rng(0).normal(size=(60, 1, 64)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "mlp.dc.onnx"
    assert main(["compress", str(src), "-o", str(out), "--sparse-ratio", "0.5", "--class-num", "8", "--config",
                 str(cfg), "--calib", f"npz:{tmp_path / 'x.npz'}", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    blocks = result["data_aware"]["blocks"]
    assert [b["name"] for b in blocks["blocks"]] == ["fc0", "fc1"]
    assert all(b["skipped"] is None and b["error_before"] is not None for b in blocks["blocks"])
    (y,) = run(onnx.load(str(out)), {"x": x[:4, 0]})
    reference = run_teacher(onnx.load(str(src)), Samples({"x": x[:4]}, stackable=True), ["y"])["y"][:, 0]
    assert y.shape == (4, 10) and np.corrcoef(y.ravel(), reference.ravel())[0, 1] > 0.9
