"""Smaller fixed costs of a ``*.dc.onnx`` (issue 12, lever 4), one part per test group.

1. small weights call one generic decoder function per kind (widths from the node's
   attributes), large weights keep bodies specialised to their widths, old names still read
   (bit-exactness at every width and folding: tests/test_decoders.py);
2. decoder nodes carry only the settings attributes that differ from what is assumed when absent;
3. function bodies are compact (short names, unnamed constants, no repeated node);
4. ``onnx_dc.skipped`` records no bias of a compressed layer, readers derive them;
5. the ``bias: float16`` setting, through restore, finetune, export-dense, report and pack.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import ROOT, mlp_model, run

import onnx_dc
from onnx_dc.api import finish
from onnx_dc.config import BiasType, CentroidInit, Form, Settings, parse_config
from onnx_dc.errors import ConfigError
from onnx_dc.graph import biases, decoders, layout
from onnx_dc.graph.io import serialize
from onnx_dc.train.restore import state_from_dc

SIZES = (64, 300, 64, 10)  # b0 (1200 B) stays in the source file when read lazily
CONFIG = {"defaults": {"sparse_ratio": 0.8, "class_num": 8},
          "nodes": [{"match": "fc0", "bias": "float16"}, {"match": "fc2", "sparse_ratio": 0.0, "class_num": 16}]}
STRUCTURE = {"code_bits", "index_bits", "count", "numel", "shape"}
FORMAT1 = ROOT / "tests" / "fixtures" / "lenet5-32x.format1.dc.onnx"  # a format-1 file (models/ before format 2): bare kind names, every attribute


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """Compressed from a file, as the CLI does (its tensors are read lazily from the source file)."""
    folder = tmp_path_factory.mktemp("small")
    onnx.save(mlp_model(sizes=SIZES), str(folder / "m.onnx"))
    return folder / "m.dc.onnx", onnx_dc.compress(folder / "m.onnx", folder / "m.dc.onnx", CONFIG)


# Part 1: generic decoder functions for small weights.

def test_part1_small_weights_share_one_generic_function_per_kind(compressed):
    _, result = compressed
    ops = [n.op_type for n in layout.decoder_nodes(result.model.graph)]
    assert ops == ["DecodeSparse_g", "DecodeSparse_g", "DecodeDense_g"]
    assert sorted(f.name for f in result.model.functions) == ["DecodeDense_g", "DecodeSparse_g"]
    assert [layout.kind_of(n) for n in layout.decoder_nodes(result.model.graph)] == [
        layout.SPARSE, layout.SPARSE, layout.DENSE]


def test_part1_large_weights_keep_specialised_functions():
    big = (layout.GENERIC_MAX_NUMEL // 512 + 1, 512)
    node = layout.make_decoder_node("W", layout.SPARSE, 5, 4, 10, big, Settings(), shared=True, reserves_zero=True)
    assert node.op_type == "DecodeSparse_c5_i4"
    small = layout.make_decoder_node("W", layout.SPARSE, 5, 4, 10, (512, 512), Settings(), shared=True,
                                     reserves_zero=True)
    assert small.op_type == "DecodeSparse_g"
    assert layout.read_decoder(node).settings == layout.read_decoder(small).settings == Settings()


def test_part1_format1_file_still_reads_and_runs():
    """A file written with the bare kind names and every attribute: report, export-dense and stock onnxruntime agree."""
    if not FORMAT1.is_file():
        pytest.fail(f"{FORMAT1} is missing: it ships with the repository")
    model = onnx.load(str(FORMAT1))
    assert {n.op_type for n in layout.decoder_nodes(model.graph)} == {"DecodeSparse"}
    report = onnx_dc.report(FORMAT1)
    assert [r.weight for r in report.layers] == ["conv1.weight", "conv2.weight", "ip1.weight", "ip2.weight"]
    biased = [s for s in report.skipped if s[3] == biases.FLOAT32_REASON]
    assert [s[2] for s in biased] == ["conv1.bias", "conv2.bias", "ip1.bias", "ip2.bias"]  # listed once each
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    dense = onnx_dc.export_dense(model)
    np.testing.assert_allclose(run(model, {model.graph.input[0].name: x})[0],
                               run(dense, {dense.graph.input[0].name: x})[0], rtol=1e-5, atol=1e-5)


# Part 2: settings attributes only when they differ from the absent value.

def test_part2_default_settings_write_no_settings_attribute():
    node = layout.make_decoder_node("W", layout.SPARSE, 5, 4, 10, (8, 8), Settings(), shared=True, reserves_zero=True)
    assert {a.name for a in node.attribute} == STRUCTURE
    assert layout.read_decoder(node).settings == Settings()
    assert layout.read_decoder(node).reserves_zero


def test_part2_every_non_default_setting_travels_through_the_node():
    s = Settings(sparse_ratio=0.7, class_num=9, centroid_init=CentroidInit.DENSITY, index_bits=6,
                 form=Form.SPARSE, seed=5, bias=BiasType.FLOAT16)
    node = layout.make_decoder_node("W", layout.SPARSE_VALUES, 0, 6, 10, (8, 8), s, shared=False, reserves_zero=False)
    dec = layout.read_decoder(node)
    assert dec.settings == Settings(**{**vars(s), "quantize_term": False}) and not dec.reserves_zero
    q = Settings(prune_quality=1.5)
    assert layout.read_decoder(layout.make_decoder_node("W", layout.SPARSE, 5, 4, 10, (8, 8), q, shared=True,
                                                        reserves_zero=True)).settings == q


# Part 3: compact function bodies.

@pytest.mark.parametrize("op", ["DecodeDense_g", "DecodeSparse_g", "DecodeSparseValues_g",
                                "DecodeDense_c5", "DecodeSparse_c9_i5", "DecodeSparseValues_i3"])
def test_part3_function_bodies_are_compact(op):
    fn = decoders.make_function(op, 13)
    onnx.checker.check_function(fn)
    outputs = [v for n in fn.node for v in n.output if v != "W"]
    assert all(len(v) <= 2 for v in outputs) and len(set(outputs)) == len(outputs)
    tensors = [a.t for n in fn.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    assert tensors and all(t.name == "" for t in tensors)
    keys = []
    for n in fn.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        del copy.output[:]
        keys.append(copy.SerializeToString())
    assert len(set(keys)) == len(keys), "a node repeats an earlier one"
    refs = {a.ref_attr_name for n in fn.node for a in n.attribute if a.ref_attr_name}
    assert set(fn.attribute) == refs
    if op.endswith("_g"):  # measured 0.9-1.6 KB; a width-specialised one was 1.9-3.3 KB, one per width pair
        assert len(fn.SerializeToString()) < 1700


# Part 4: no bias entries in onnx_dc.skipped.

def test_part4_skipped_record_leaves_out_compressed_biases_and_readers_derive_them(compressed):
    _, result = compressed
    recorded = json.loads(layout.metadata(result.model)[layout.META_SKIPPED])
    assert not any(e[2].startswith("b") for e in recorded)
    report = onnx_dc.report(result.model)
    assert sorted(s[2] for s in report.skipped) == ["b0", "b1", "b2"]
    assert {s[2]: s[3] for s in report.skipped} == {
        "b0": biases.FLOAT16_REASON, "b1": biases.FLOAT32_REASON, "b2": biases.FLOAT32_REASON}
    restored = state_from_dc(result.model)
    assert sorted(s.tensor for s in restored.plan.skipped) == ["b0", "b1", "b2"]


def test_part4_other_skipped_entries_stay_recorded(tmp_path):
    config = {"defaults": {"class_num": 8}, "nodes": [{"match": "fc1", "skip": True}]}
    result = onnx_dc.compress(mlp_model(sizes=SIZES), tmp_path / "m.dc.onnx", config)
    recorded = json.loads(layout.metadata(result.model)[layout.META_SKIPPED])
    # fc1 is not compressed: its weight and bias stay listed; the biases of fc0 and fc2 are derived.
    assert sorted(e[2] for e in recorded) == ["b1", "w1"]
    assert sorted(s[2] for s in onnx_dc.report(result.model).skipped) == ["b0", "b1", "b2", "w1"]


# Part 5: float16 biases.

def test_part5_bias_setting_is_typed():
    assert parse_config({"defaults": {"bias": "float16"}}).defaults["bias"] is BiasType.FLOAT16
    with pytest.raises(ConfigError) as err:
        parse_config({"nodes": [{"match": "fc0", "bias": "int8"}]})
    assert "bias: 'int8' must be one of float32, float16" in str(err.value) and "\n" not in str(err.value)


def test_part5_float16_bias_is_stored_half_and_runs(compressed):
    path, result = compressed
    graph = result.model.graph
    kinds = {t.name: t.data_type for t in graph.initializer}
    assert kinds["b0/dc/f16"] == onnx.TensorProto.FLOAT16 and "b0" not in kinds
    assert kinds["b1"] == kinds["b2"] == onnx.TensorProto.FLOAT
    assert next(n for n in graph.node if n.name == "fc0").input[2] == "b0"  # the consumer is unchanged
    onnx.checker.check_model(result.model, full_check=True)
    # Stock onnxruntime (folding the Cast) computes what the plain model with float16-rounded biases computes.
    dense = onnx_dc.export_dense(result.model)
    b0 = next(t for t in dense.graph.initializer if t.name == "b0")
    assert b0.data_type == onnx.TensorProto.FLOAT and not any(n.op_type == "Cast" for n in dense.graph.node)
    original = next(t for t in mlp_model(sizes=SIZES).graph.initializer if t.name == "b0")
    half = onnx.numpy_helper.to_array(original).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(b0), half)
    x = np.random.default_rng(0).normal(size=(4, SIZES[0])).astype(np.float32)
    np.testing.assert_allclose(run(result.model, {"x": x})[0], run(dense, {"x": x})[0], rtol=1e-6, atol=1e-6)
    assert "bias stored as float16" in onnx_dc.report(path).to_table()


def test_part5_float16_bias_round_trips_restore_pack_and_finetune(compressed, tmp_path):
    path, result = compressed
    restored = state_from_dc(result.model)
    assert restored.layers["w0"].entry.settings.bias == BiasType.FLOAT16
    assert serialize(finish(restored).model) == serialize(result.model)  # lossless
    onnx_dc.pack(path, tmp_path / "m.dcz")
    onnx_dc.unpack(tmp_path / "m.dcz", tmp_path / "u.dc.onnx")
    assert (tmp_path / "u.dc.onnx").read_bytes() == path.read_bytes()
    tuned = onnx_dc.finetune(path, tmp_path / "t.dc.onnx", "digits", epochs=1, schedule={"codebook": {"lr": 1e-3}})
    names = {t.name: t.data_type for t in tuned.model.graph.initializer}
    assert names["b0/dc/f16"] == onnx.TensorProto.FLOAT16 and names["b1"] == onnx.TensorProto.FLOAT
    assert [n.op_type for n in layout.decoder_nodes(tuned.model.graph)] == [
        n.op_type for n in layout.decoder_nodes(result.model.graph)]
    before_b0, after_b0 = (onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "b0/dc/f16"))
                           for m in (result.model, tuned.model))
    assert not np.array_equal(before_b0, after_b0)  # trained in float32, then stored in float16 again
    before = onnx_dc.evaluate(path, "digits").accuracy
    assert onnx_dc.evaluate(tmp_path / "t.dc.onnx", "digits").accuracy >= before - 0.02
