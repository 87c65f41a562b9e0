"""The PyTorch-exported fixtures (scripts/make_torch_fixtures.py) run in onnxruntime and
reproduce torch's outputs; their IR version and opset suit onnxruntime 1.19."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torch"
EXPECTED = {
    "mlp": ("torchscript", "dynamo"),
    "lenet": ("torchscript", "dynamo"),
    "bn_cnn": ("torchscript", "dynamo", "dynamo_noopt"),
    "shared": ("torchscript", "dynamo", "dynamo_noopt"),
}
FILES = [f"{model}.{exporter}" for model, exporters in EXPECTED.items() for exporter in exporters]


def test_every_fixture_is_there_and_small():
    names = sorted(p.name for p in FIXTURES.iterdir())
    assert names == sorted([f"{f}.onnx" for f in FILES] + [f"{m}.npz" for m in EXPECTED])
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 1_000_000


@pytest.mark.parametrize("name", FILES)
def test_fixture_matches_torch_in_onnxruntime(name):
    model = onnx.load(FIXTURES / f"{name}.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10
    assert [(o.domain, o.version <= 21) for o in model.opset_import] == [("", True)]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # batch dimension is symbolic
    with np.load(FIXTURES / f"{name.split('.')[0]}.npz") as sample:
        x, y = sample["x"], sample["y"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x})
    np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-5)
    (single,) = session.run(None, {"x": x[:1]})  # another batch size
    np.testing.assert_allclose(single, y[:1], rtol=1e-4, atol=1e-5)


def _readers(model: onnx.ModelProto, initializer: str) -> list[str]:
    return [n.op_type for n in model.graph.node if initializer in n.input]


def test_shared_weight_is_one_initializer_read_twice():
    for exporter in EXPECTED["shared"]:
        model = onnx.load(FIXTURES / f"shared.{exporter}.onnx")
        assert _readers(model, "mid.weight") == ["Gemm", "Gemm"], exporter
    tied = {e: _readers(onnx.load(FIXTURES / f"shared.{e}.onnx"), "enc.weight") for e in EXPECTED["shared"]}
    assert tied == {
        "torchscript": ["Gemm", "Gemm"],
        "dynamo": ["Gemm"],
        "dynamo_noopt": ["Gemm", "Transpose"],
    }
