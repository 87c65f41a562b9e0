"""Shared fixtures: paths to ../shared/data and small models built with onnx.helper."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import numpy as np
import onnx
import pytest
from hypothesis import strategies as st
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MNIST_DIR = SHARED_DATA / "mnist"
FASHION_DIR = SHARED_DATA / "fashion-mnist"
MNIST8 = SHARED_DATA / "onnx" / "mnist-8.onnx"

# Symbol streams for the entropy coders: small and full alphabets, skewed, one repeated symbol.
symbol_arrays = st.one_of(
    st.lists(st.integers(0, 7), max_size=300),
    st.lists(st.integers(0, 2**16 - 1), max_size=300),
    st.lists(st.sampled_from([0, 1, 5, 40000]), min_size=1, max_size=3000),
    st.integers(1, 5000).map(lambda n: [3] * n),
).map(lambda xs: np.array(xs, dtype=np.uint16))



def in_ci() -> bool:
    """Whether the tests run in CI: ``CI`` is ``true`` or ``1``, in any case (the one rule of every guard here)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def missing(what: str, reason: str) -> NoReturn:
    """A test cannot run without ``what``: fail in CI, skip elsewhere with ``reason``.

    CI always has every requirement, so a missing one there is a broken setup, not a reason
    to pass having checked nothing; on a developer's machine the skip says what is missing.
    """
    if in_ci():
        pytest.fail(f"CI runs with {what}, but {reason}", pytrace=False)
    pytest.skip(reason)


def shared_path(path: Path) -> Path:
    """``path`` (under ../shared/data) when it is there; otherwise fail in CI, skip elsewhere (:func:`missing`)."""
    if path.exists():
        return path
    missing("../shared/data", f"{path} is not present (../shared/data beside the repository)")


def require_training() -> None:
    """onnxruntime-training installed; otherwise fail in CI, skip elsewhere (:func:`missing`)."""
    from onnx_dc.train.ort_training import training_available

    if not training_available():
        missing("onnxruntime-training", "onnxruntime-training is not installed")


@pytest.fixture
def training_runtime() -> None:
    require_training()


needs_training = pytest.mark.usefixtures("training_runtime")


@pytest.fixture
def shared_data() -> Path:
    return shared_path(SHARED_DATA)


needs_shared = pytest.mark.usefixtures("shared_data")


def finish_model(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    """Stamp IR 10 and an opset, then check the model."""
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def mlp_model(seed: int = 0, sizes=(64, 48, 10)) -> onnx.ModelProto:
    """Gemm(transB) + Relu MLP with a free batch dimension."""
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [init(f"w{i}", rng.normal(0, 0.3, (b, a)).astype(np.float32)),
                  init(f"b{i}", rng.normal(0, 0.1, b).astype(np.float32))]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(oh.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [out], name=f"fc{i}", transB=1))
        cur = out
        if out != "y":
            nodes.append(oh.make_node("Relu", [cur], [f"{cur}r"], name=f"relu{i}"))
            cur = f"{cur}r"
    g = oh.make_graph(nodes, "mlp", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])], inits)
    return finish_model(g)


@pytest.fixture
def mlp_path(tmp_path) -> Path:
    """:func:`mlp_model` written to a file."""
    from onnx_dc.graph.io import write_model

    path = tmp_path / "mlp.onnx"
    write_model(mlp_model(), path)
    return path


def conv_model(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> ConvTranspose -> Reshape -> MatMul(weight via Transpose) with a Constant-node weight."""
    rng = np.random.default_rng(seed)
    w_conv = rng.normal(0, 0.3, (6, 1, 3, 3)).astype(np.float32)
    w_deconv = rng.normal(0, 0.3, (6, 2, 2, 2)).astype(np.float32)
    w_fc_t = rng.normal(0, 0.3, (5, 2 * 8 * 8)).astype(np.float32)  # stored transposed, used through Transpose
    nodes = [
        oh.make_node("Constant", [], ["conv_w"], value=numpy_helper.from_array(w_conv, "conv_w")),
        oh.make_node("Conv", ["x", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c"], ["r"], name="relu"),
        oh.make_node("ConvTranspose", ["r", "deconv_w"], ["d"], name="deconv", strides=[2, 2]),
        oh.make_node("Reshape", ["d", "flat_shape"], ["f"], name="flatten"),
        oh.make_node("Transpose", ["fc_wt"], ["fc_w"], name="fc_w_T", perm=[1, 0]),
        oh.make_node("MatMul", ["f", "fc_w"], ["y"], name="fc"),
    ]
    inits = [init("deconv_w", w_deconv), init("fc_wt", w_fc_t), init("flat_shape", np.array([-1, 128], np.int64))]
    g = oh.make_graph(nodes, "convnet", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    return finish_model(g)


def shared_weight_model(seed: int = 0) -> onnx.ModelProto:
    """One weight read by two MatMuls (tied layers)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, (32, 32)).astype(np.float32)
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"], name="first"),
             oh.make_node("Relu", ["h"], ["hr"], name="relu"),
             oh.make_node("MatMul", ["hr", "w"], ["y"], name="second")]
    g = oh.make_graph(nodes, "tied", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], [init("w", w)])
    return finish_model(g)


def fp16_model() -> onnx.ModelProto:
    """A Gemm with a float16 weight next to a float32 one."""
    rng = np.random.default_rng(0)
    nodes = [oh.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16, name="cast"),
             oh.make_node("MatMul", ["xh", "wh"], ["yh"], name="half_fc"),
             oh.make_node("Cast", ["yh"], ["yf"], to=TensorProto.FLOAT, name="back"),
             oh.make_node("MatMul", ["yf", "wf"], ["y"], name="float_fc")]
    inits = [init("wh", rng.normal(size=(16, 16)).astype(np.float16)), init("wf", rng.normal(size=(16, 4)).astype(np.float32))]
    g = oh.make_graph(nodes, "fp16", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return finish_model(g)


def run(model: onnx.ModelProto | bytes | str, feeds: dict) -> list[np.ndarray]:
    """Outputs of a model in onnxruntime (CPU)."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


def cross_entropy(model: onnx.ModelProto, feeds: dict, labels: np.ndarray) -> float:
    """Mean cross-entropy of the model's first output (logits [N, K]) in onnxruntime, in float64."""
    z = run(model, feeds)[0].astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def assert_step_is_the_gradient(model: onnx.ModelProto, x: np.ndarray, labels: np.ndarray, weight: str,
                                eps: float = 1e-3, count: int = 24, seed: int = 0, branches=None) -> None:
    """One SGD step of fine-tuning (the rewritten training graph) moves ``weight`` by lr x the gradient
    of the unchanged model's cross-entropy, taken by central finite differences in onnxruntime
    (at ``count`` random positions of the weight).
    """
    from onnx_dc.api import prepare
    from onnx_dc.train.forms import TrainForm
    from onnx_dc.train.loop import Trainer
    from onnx_dc.train.optim import Optimizer
    from onnx_dc.train.settings import OptimizerKind, StageSettings

    w0 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == weight)).astype(np.float64)
    positions = np.random.default_rng(seed).choice(w0.size, size=min(count, w0.size), replace=False)
    numeric = np.zeros(len(positions))
    for k, flat in enumerate(positions):
        losses = []
        for sign in (1, -1):
            w = w0.copy()
            w.flat[flat] += sign * eps
            probe = onnx.ModelProto()
            probe.CopyFrom(model)
            for t in probe.graph.initializer:
                if t.name == weight:
                    t.CopyFrom(numpy_helper.from_array(w.astype(np.float32), weight))
            losses.append(cross_entropy(probe, {"x": x}, labels))
        numeric[k] = (losses[0] - losses[1]) / (2 * eps)
    state = prepare(model, class_num=256)  # planned, no pass run: the weights are the original ones
    trainer = Trainer(state, TrainForm.DENSE, name=weight, branches=branches)
    try:
        lr = 0.1
        before = trainer.values[weight].copy()
        trainer.step(x, labels, Optimizer(StageSettings(lr=lr, momentum=0.0, optimizer=OptimizerKind.SGD), 1))
        moved = ((before - trainer.values[weight]) / lr).ravel()[positions]
    finally:
        trainer.close()
    assert np.abs(numeric).max() > 1e-3  # gradient reaches the weight through the op
    np.testing.assert_allclose(moved, numeric, rtol=2e-2, atol=2e-3)


@pytest.fixture
def mnist8() -> Path:
    return shared_path(MNIST8)


@pytest.fixture
def mnist_dir() -> Path:
    return shared_path(MNIST_DIR)
