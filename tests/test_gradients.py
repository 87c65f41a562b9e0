"""When onnxruntime-training cannot build a gradient, the message names the op and node (onnx_dc.train.gradients);
shape and integer ops on the trained path stop the gradient and never block it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_step_is_the_gradient, finish_model, init, needs_training
from onnx import TensorProto
from onnx import helper as oh

from onnx_dc.api import prepare
from onnx_dc.errors import ModelError
from onnx_dc.train import equivalents
from onnx_dc.train.gradients import gradient_failure, plain
from test_equivalents import layer_norm_model


MODULE_FAILURE = ("/onnxruntime_src/orttraining/orttraining/training_api/module.cc:312 onnxruntime::training::api::Module::"
                  "Module(const onnxruntime::training::api::ModelIdentifiers&, onnxruntime::training::api::CheckpointState*, "
                  "const onnxruntime::SessionOptions&) [ONNXRuntimeError] : 1 : FAIL : Node (a_Grad/b) Op (Concat) "
                  "[ShapeInferenceError] Can't merge shape info.")


def _trainer(model: onnx.ModelProto):
    from onnx_dc.train.forms import TrainForm
    from onnx_dc.train.loop import Trainer

    trainer = Trainer(prepare(model, class_num=256), TrainForm.DENSE, name="m")
    trainer.close()


def test_messages_never_show_a_cpp_signature():
    text = plain(RuntimeError(MODULE_FAILURE))
    assert text == "Node (a_Grad/b) Op (Concat) [ShapeInferenceError] Can't merge shape info."
    line = gradient_failure(RuntimeError(MODULE_FAILURE))
    assert "onnxruntime_src" not in line and "::" not in line and "\n" not in line


@needs_training
def test_a_node_without_a_usable_gradient_is_named(monkeypatch):
    """LayerNormalization with one output (as PyTorch exports it), its equivalent turned off: onnxruntime's
    message is a failed C++ check on the node's output count; ours names the op and node."""
    monkeypatch.setitem(equivalents.REWRITES, "layer_norm", lambda node, known: None)
    with pytest.raises(ModelError) as err:
        _trainer(layer_norm_model())
    message = str(err.value)
    assert message.startswith("m: onnxruntime-training cannot build the gradient of op LayerNormalization (node ln): ")
    assert "onnxruntime_src" not in message and "::" not in message and "\n" not in message


@needs_training
def test_with_its_equivalent_the_same_model_builds():
    _trainer(layer_norm_model())


def shape_ops_model(seed: int = 0) -> onnx.ModelProto:
    """x [N, 4] -> MatMul (w) -> h [N, 3], then shape and integer ops on h's path:
    y = Where(Equal(Cast(Shape(h)[1]), 3), h, -h) * ConstantOfShape(Shape(h), 2) + Cast(Shape(h)[1])."""
    rng = np.random.default_rng(seed)
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             oh.make_node("Shape", ["h"], ["shape"], name="shape"),
             oh.make_node("Gather", ["shape", "one"], ["cols"], name="cols", axis=0),
             oh.make_node("Cast", ["cols"], ["cols_f"], name="cast", to=TensorProto.FLOAT),
             oh.make_node("Equal", ["cols_f", "three"], ["is3"], name="equal"),
             oh.make_node("Neg", ["h"], ["neg"], name="neg"),
             oh.make_node("Where", ["is3", "h", "neg"], ["picked"], name="where"),
             oh.make_node("ConstantOfShape", ["shape"], ["twos"], name="fill",
                          value=oh.make_tensor("v", TensorProto.FLOAT, [1], [2.0])),
             oh.make_node("Mul", ["picked", "twos"], ["scaled"], name="scale"),
             oh.make_node("Add", ["scaled", "cols_f"], ["y"], name="shift")]
    g = oh.make_graph(nodes, "shape_ops", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                      [init("w", rng.normal(size=(4, 3)).astype(np.float32)), init("one", np.int64(1)),
                       init("three", np.float32(3))])
    return finish_model(g)


@needs_training
def test_shape_and_integer_ops_stop_the_gradient_and_never_block_it():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    assert_step_is_the_gradient(shape_ops_model(2), x, rng.integers(0, 3, 24).astype(np.int64), "w")


def test_a_failed_check_is_told_by_its_message_or_its_place():
    check = ("/onnxruntime_src/orttraining/orttraining/core/graph/gradient_builder_base.h:123 onnxruntime::training::ArgDef "
             "onnxruntime::training::GradientBuilderBase::O(size_t, bool) const i < node_->OutputDefs().size() was false.")
    assert plain(RuntimeError(check)) == "an internal check failed at gradient_builder_base.h:123"
    told = check + " LayerNormalization needs its mean output."
    assert plain(RuntimeError(told)) == "LayerNormalization needs its mean output."
