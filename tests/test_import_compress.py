"""Compressing what the importers bring: PyTorch-exported fixtures and the real Caffe LeNet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MNIST_DIR, SHARED_DATA, run, shared_path
from test_compress import check_compressed
from test_torch_fixtures import FILES, FIXTURES

import onnx_dc
from onnx_dc.cli import main

CAFFE = SHARED_DATA / "caffe"
STAGE5 = CAFFE / "deepcompression_stages" / "lenet_train_test_compress_stage5.prototxt"
CAFFEMODEL = CAFFE / "lenet_iter_10000.caffemodel"


@pytest.mark.parametrize("name", FILES)
def test_torch_exports_compress_and_match(name):
    with np.load(FIXTURES / f"{name.split('.')[0]}.npz") as sample:
        x, y = sample["x"], sample["y"]
    result = onnx_dc.compress(FIXTURES / f"{name}.onnx", sparse_ratio=0.5, class_num=32)
    check_compressed(result, {"x": x})
    assert result.layers, "no weight compressed"
    # the uncompressed reference of the check is the export itself with shared weights; the export
    # with its original weights still reproduces torch
    state_free = onnx_dc.prepare(FIXTURES / f"{name}.onnx").dense_model()
    np.testing.assert_allclose(run(state_free, {"x": x})[0], y, rtol=1e-4, atol=1e-5)
    ops = {op for r in result.layers for op in r.op_type.split(",")}
    assert ops <= {"Gemm", "Conv", "MatMul"}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo", "dynamo_noopt"])
def test_shared_linear_is_compressed_once(exporter):
    result = onnx_dc.compress(FIXTURES / f"shared.{exporter}.onnx", class_num=8)
    multi = [r for r in result.layers if "," in r.nodes]
    assert multi, [r.nodes for r in result.layers]  # one compressed tensor read by two layers


def test_transposed_weight_through_transpose_node():
    # the dynamo export without optimization keeps weight -> Transpose -> Gemm
    state = onnx_dc.prepare(FIXTURES / "shared.dynamo_noopt.onnx")
    vias = {c.via for e in state.plan.entries for c in e.site.consumers}
    assert ("Transpose",) in vias


def test_caffe_stage5_settings_compress_the_real_lenet(tmp_path, capsys, mnist_dir):
    shared_path(CAFFEMODEL)
    out = tmp_path / "lenet.dc.onnx"
    code = main(["compress", "--caffe", str(STAGE5), str(CAFFEMODEL), "--input-shape", "1,28,28", "-o", str(out),
                 "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    kept = {r["nodes"]: r["kept_pct"] for r in report["layers"]}
    assert kept == pytest.approx({"conv1": 67.0, "conv2": 20.0, "fc1": 10.0, "fc2": 20.0}, abs=0.1)
    assert {r["nodes"]: r["class_num"] for r in report["layers"]} == {"conv1": 256, "conv2": 256, "fc1": 32, "fc2": 32}
    assert report["totals"]["ratio_vs_dense_weights"] > 20
    acc = onnx_dc.evaluate(out, f"mnist:{MNIST_DIR}")
    assert acc.preprocess.scale == 0.00390625  # the prototxt's transform_param, carried through
    dense = onnx_dc.evaluate(onnx_dc.import_caffe(STAGE5, CAFFEMODEL, input_shape=(1, 28, 28))[0], f"mnist:{MNIST_DIR}")
    assert dense.correct == 9908  # the data README's figure, from an independent NumPy forward pass
    assert acc.accuracy >= dense.accuracy - 0.03  # the stage-5 settings without fine-tuning: within 3 points


def test_compress_caffe_needs_its_input_shape(tmp_path, capsys):
    shared_path(CAFFEMODEL)
    code = main(["compress", "--caffe", str(STAGE5), str(CAFFEMODEL), "-o", str(tmp_path / "x.dc.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "input_shape" in err and err.count("\n") == 1
    assert not Path(tmp_path / "x.dc.onnx").exists()
