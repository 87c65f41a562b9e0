"""Errors that come from the user's input become typed onnx_dc errors; a bug of onnx_dc's own code shows as itself.

Each place that turns a library's failure into a user error catches only the exception types
that library raises for bad input. A failure of ours injected there (a function of onnx_dc,
or a wrong call, made to raise) must come out with its own type, not as "the model is bad".
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest
from conftest import finish_model, init, mlp_model, needs_training
from onnx import TensorProto
from onnx import helper as oh

import onnx_dc
from onnx_dc.errors import FormatError, ModelError, OnnxDcError
from onnx_dc.graph import layout
from onnx_dc.graph.normalize import normalize
from onnx_dc.passes.lower import set_metadata
from onnx_dc.report import make_report
from onnx_dc.runtime.session import InferenceSession
from onnx_dc.train import ort_training


def unknown_op_model(opset: int = 17) -> onnx.ModelProto:
    """y = Foo(x): an op no opset defines (not checked, since the checker refuses it too)."""
    g = oh.make_graph([oh.make_node("Foo", ["x"], ["y"], name="foo")], "foo",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def compressed() -> onnx.ModelProto:
    return onnx_dc.compress(mlp_model(sizes=(64, 32, 10)), sparse_ratio=0.5, class_num=8).model


# ---------------------------------------------------------------------------- runtime/session.py
def test_a_model_onnxruntime_refuses_is_a_model_error():
    with pytest.raises(ModelError, match=r"^model: onnxruntime cannot load it \(\[ONNXRuntimeError\]"):
        InferenceSession(unknown_op_model().SerializeToString())
    with pytest.raises(ModelError, match=r"^model: onnxruntime cannot load it .*INVALID_PROTOBUF"):
        InferenceSession(b"\x01\x02 not an onnx model", decode=False)
    with pytest.raises(ModelError, match=r"^model: not an ONNX model, or the file is truncated"):
        InferenceSession(b"\x01\x02 not an onnx model")


def test_a_session_on_a_compressed_model_still_runs(compressed):
    x = np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32)
    y = InferenceSession(compressed).run(None, {"x": x})[0]
    assert y.shape == (2, 10)


def test_a_failure_of_our_decoding_is_not_reported_as_onnxruntime_refusing_the_model(compressed, monkeypatch):
    def broken(dec, arrays):
        raise ZeroDivisionError("a bug in decode_weight")

    monkeypatch.setattr(layout, "decode_weight", broken)
    with pytest.raises(ZeroDivisionError, match="a bug in decode_weight"):
        InferenceSession(compressed)


# ---------------------------------------------------------------------------- formats/dcz.py
@pytest.mark.parametrize("broken, message", [
    (lambda encode: lambda symbols: encode(np.asarray(symbols) ^ 1),  # decodes, to other symbols
     r"^a bug in onnx_dc's huffman coder: (codes|gaps) stream 'w[01]/dc/(codes|gaps)' does not unpack to the "
     r"bytes it was packed from$"),
    (lambda encode: lambda symbols: b"\x05 not huffman",  # does not decode at all
     r"^a bug in onnx_dc's coders: the packed file does not unpack \(section \d+ \(w[01]/dc/(codes|gaps)\): "),
], ids=["wrong symbols", "undecodable"])
def test_a_coder_that_does_not_round_trip_is_a_bug_naming_the_stream(compressed, monkeypatch, tmp_path, capsys,
                                                                       broken, message):
    from onnx_dc.cli import main
    from onnx_dc.formats import dcz
    from onnx_dc.graph.io import serialize
    from onnx_dc.numerics import huffman

    data = serialize(compressed)
    assert dcz.unpack_bytes(dcz.pack_bytes(data, codec="huffman")) == data  # the real coder round-trips
    monkeypatch.setattr(huffman, "encode", broken(huffman.encode))
    with pytest.raises(dcz.CoderBug, match=message) as caught:
        dcz.pack_bytes(data, codec="huffman")  # not stored around, where it would show only as a worse ratio
    assert not isinstance(caught.value, OnnxDcError)
    (tmp_path / "m.dc.onnx").write_bytes(data)
    assert main(["pack", str(tmp_path / "m.dc.onnx"), "-o", str(tmp_path / "m.dcz"), "--codec", "huffman"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("onnx-dc: bug: onnx_dc.formats.dcz.CoderBug: a bug in onnx_dc's ") and err.count("\n") == 1
    assert not (tmp_path / "m.dcz").exists()


# ---------------------------------------------------------------------------- graph/normalize.py
def test_an_opset_the_converter_cannot_convert_is_a_model_error():
    with pytest.raises(ModelError, match=r"^m\.onnx: cannot convert ai\.onnx opset 9 to 13 \(.*Foo.*re-export"):
        normalize(unknown_op_model(opset=9), "m.onnx")


def test_a_bad_call_of_the_converter_propagates(monkeypatch):
    from onnx import version_converter

    def wrong_call(model, target_version):
        raise TypeError("VersionConverter only accepts int as target_version")

    monkeypatch.setattr(version_converter, "convert_version", wrong_call)
    with pytest.raises(TypeError, match="only accepts int"):
        normalize(_opset_11_mlp(), "m.onnx")


def _opset_11_mlp() -> onnx.ModelProto:
    model = mlp_model()
    model.opset_import[0].version = 11
    return model


# ---------------------------------------------------------------------------- train/loop.py
def _round_model() -> onnx.ModelProto:
    """y = Round(x @ w): onnxruntime-training has no gradient for Round."""
    rng = np.random.default_rng(0)
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"], name="mm"), oh.make_node("Round", ["h"], ["y"], name="odd")]
    g = oh.make_graph(nodes, "round", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                      [init("w", rng.normal(size=(4, 3)).astype(np.float32))])
    return finish_model(g)


def _trainer(model: onnx.ModelProto):
    from onnx_dc.api import prepare
    from onnx_dc.train.distill import distillation_loss, output_targets
    from onnx_dc.train.forms import TrainForm
    from onnx_dc.train.loop import Trainer

    state = prepare(model)
    targets = output_targets(state.model, {"y": np.ones((2, 2, 3), np.float32)})
    return Trainer(state, TrainForm.MASKED, loss=distillation_loss(targets))


@needs_training
def test_an_op_without_a_gradient_is_a_model_error():
    with pytest.raises(ModelError, match=r"^model: onnxruntime-training has no gradient for op Round \(node odd\)$"):
        _trainer(_round_model())


@needs_training
def test_a_gradient_kernel_onnxruntime_refuses_is_a_model_error(monkeypatch):
    """onnxruntime reports a kernel that cannot run the gradient only when the training session opens."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    _, api = ort_training.training_modules()
    text = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during initialization: GRUTraining and GRUGrad "
            "kernel only supports the forward direction for now. Provided direction: 2")

    def refuse(*args, **kwargs):
        raise ort_state.RuntimeException(text)

    monkeypatch.setattr(api, "Module", refuse)
    with pytest.raises(ModelError, match="gradient of op GRU only supports the forward direction for now"):
        _trainer(mlp_model(sizes=(4, 3)))


@needs_training
@pytest.mark.parametrize("failing_call", [1, 2], ids=["building the artifacts", "opening the training session"])
def test_a_bug_of_ours_while_setting_up_training_propagates(monkeypatch, failing_call):
    from onnx_dc.train import gradients

    calls = []

    @contextlib.contextmanager
    def broken_quiet():
        calls.append(1)
        if len(calls) == failing_call:
            raise KeyError("a bug in _quiet_stderr")
        yield

    monkeypatch.setattr(gradients, "quiet_stderr", broken_quiet)
    with pytest.raises(KeyError, match="a bug in _quiet_stderr"):
        _trainer(mlp_model(sizes=(4, 3)))
    assert len(calls) == failing_call


# ---------------------------------------------------------------------------- report.py
@pytest.mark.parametrize("key, value, why", [
    (layout.META_SOURCE_BYTES, "12x", "not a whole number"),
    (layout.META_SOURCE_WEIGHT_BYTES, "", "not a whole number"),
    (layout.META_NOTES, "[unquoted", "not JSON"),
    (layout.META_SKIPPED, '[["conv", "Conv"', "not JSON"),
])
def test_corrupt_metadata_is_a_format_error_naming_the_model_and_the_key(compressed, key, value, why):
    model = onnx.ModelProto()
    model.CopyFrom(compressed)
    set_metadata(model, {key: value})
    with pytest.raises(FormatError, match=rf"^m\.dc\.onnx: metadata {key} holds .*{why}"):
        make_report(model, name="m.dc.onnx")
    with pytest.raises(OnnxDcError, match=rf"metadata {key}"):
        onnx_dc.report(model)


def test_intact_metadata_reads_back(compressed):
    meta = layout.metadata(compressed)
    rep = make_report(compressed, name="m.dc.onnx")
    assert rep.dense_weight_bytes == int(meta[layout.META_SOURCE_WEIGHT_BYTES])
    assert rep.source_file_bytes == int(meta[layout.META_SOURCE_BYTES])
    assert rep.notes == ()


def test_a_bug_of_ours_in_the_report_is_not_a_format_error(compressed, monkeypatch):
    def broken(graph):
        raise ValueError("a bug in bias_entries")

    monkeypatch.setattr(layout, "bias_entries", broken)
    with pytest.raises(ValueError, match="a bug in bias_entries") as caught:
        make_report(compressed, name="m.dc.onnx")
    assert not isinstance(caught.value, OnnxDcError)
