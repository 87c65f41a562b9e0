"""Settings, config files, weight finding and plan resolution."""

from __future__ import annotations

import onnx
import pytest
from conftest import conv_model, fp16_model, mlp_model, shared_weight_model

from onnx_dc.config import CentroidInit, Config, Settings, load_config, parse_config
from onnx_dc.errors import ConfigError, ModelError
from onnx_dc.graph.normalize import normalize
from onnx_dc.graph.weights import find_weights
from onnx_dc.plan import make_plan


def test_layering_defaults_op_type_then_first_matching_pattern():
    cfg = parse_config({
        "defaults": {"sparse_ratio": 0.5, "class_num": 16},
        "by_op_type": {"Gemm": {"class_num": 64}},
        "nodes": [{"match": "fc1", "sparse_ratio": 0.9}, {"match": "fc*", "sparse_ratio": 0.1}],
    })
    s, origin = cfg.settings_for("fc1", "Gemm", "w1")
    assert (s.sparse_ratio, s.class_num, origin) == (0.9, 64, "nodes[fc1]")
    s, origin = cfg.settings_for("fc2", "Gemm", "w2")
    assert (s.sparse_ratio, origin) == (0.1, "nodes[fc*]")
    s, origin = cfg.settings_for("conv", "Conv", "wc")
    assert (s.sparse_ratio, s.class_num, origin) == (0.5, 16, "defaults")
    assert Settings().centroid_init is CentroidInit.LINEAR


def test_patterns_match_weight_names_too():
    cfg = parse_config({"nodes": [{"match": "Parameter193", "class_num": 4}]})
    assert cfg.settings_for("Times212", "MatMul", "Parameter193")[0].class_num == 4


def test_prune_quality_replaces_sparse_ratio_from_lower_layers():
    cfg = parse_config({"defaults": {"sparse_ratio": 0.5}, "nodes": [{"match": "a", "prune_quality": 1.2}]})
    s, _ = cfg.settings_for("a", "Conv", "w")
    assert s.prune_quality == 1.2 and s.sparse_ratio == 0.0


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_config({
            "defaults": {"sparse_ratio": 1.0, "class_num": 1, "colour": "red"},
            "by_op_type": {"Relu": {}},
            "nodes": [{"match": "x", "class_num": 257}, {"sparse_ratio": 0.3}],
            "extra": 1,
        })
    msg = str(err.value)
    for part in ("sparse_ratio: 1.0", "class_num: 1 ", "unknown setting 'colour'", "'Relu' is not a compressible op",
                 "class_num: 257", "nodes[1]", "unknown key 'extra'"):
        assert part in msg, part
    assert "\n" not in msg


@pytest.mark.parametrize("bad", [{"centroid_init": "spiral"}, {"index_bits": 0}, {"index_bits": 17},
                                 {"quantize_term": "yes"}, {"sparse_ratio": -0.1}, {"prune_quality": 0}])
def test_bad_values(bad):
    with pytest.raises(ConfigError):
        parse_config({"defaults": bad})


def test_yaml_file(tmp_path):
    path = tmp_path / "dc.yaml"
    path.write_text("version: 1\ndefaults: {sparse_ratio: 0.8}\nnodes:\n  - match: fc0\n    class_num: 8\n")
    cfg = load_config(path)
    assert cfg.settings_for("fc0", "Gemm", "w0")[0].class_num == 8
    path.write_text("defaults: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 2, column 1"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_cli_style_overrides_beat_config_defaults():
    cfg = parse_config({"defaults": {"sparse_ratio": 0.5, "class_num": 8}}).with_overrides({"class_num": 32})
    assert cfg.settings_for("n", "Conv", "w")[0].class_num == 32
    with pytest.raises(ConfigError, match="class_num"):
        Config().with_overrides({"class_num": 300})


def test_find_weights_through_pass_through_ops_and_constants():
    model = normalize(conv_model())
    inv = find_weights(model)
    sites = {s.name: s for s in inv.sites}
    assert set(sites) == {"conv_w", "deconv_w", "fc_wt"}
    assert sites["fc_wt"].consumers[0].via == ("Transpose",)
    assert sites["conv_w"].op_type == "Conv" and sites["deconv_w"].op_type == "ConvTranspose"
    assert not any(n.op_type == "Constant" for n in model.graph.node)  # Constant weight became an initializer


def test_shared_weight_is_one_site_with_two_consumers():
    inv = find_weights(normalize(shared_weight_model()))
    assert len(inv.sites) == 1 and [c.node for c in inv.sites[0].consumers] == ["first", "second"]


def test_shared_weight_with_conflicting_settings_is_an_error():
    inv = find_weights(normalize(shared_weight_model()))
    with pytest.raises(ConfigError, match="shared by nodes"):
        make_plan(inv, parse_config({"nodes": [{"match": "first", "class_num": 4}]}))


def test_skips_are_explained():
    inv = find_weights(normalize(fp16_model()))
    assert [s.name for s in inv.sites] == ["wf"]
    reasons = {s.tensor: s.reason for s in inv.skipped}
    assert "float16 weight is not compressed" in reasons["wh"]
    inv = find_weights(normalize(mlp_model()))
    assert all("bias" in s.reason for s in inv.skipped) and len(inv.skipped) == 2


def test_plan_rejects_patterns_that_match_nothing_and_models_with_no_weights():
    inv = find_weights(normalize(mlp_model()))
    with pytest.raises(ConfigError, match="'conv9' matches no compressible node"):
        make_plan(inv, parse_config({"nodes": [{"match": "conv9", "sparse_ratio": 0.5}]}))
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", 1, [2])], [onnx.helper.make_tensor_value_info("y", 1, [2])]), opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match="no compressible weights"):
        make_plan(find_weights(normalize(model)), Config())


def test_skip_setting_and_nothing_to_do_are_listed():
    inv = find_weights(normalize(mlp_model()))
    plan = make_plan(inv, parse_config({"nodes": [{"match": "fc0", "skip": True},
                                                  {"match": "fc1", "quantize_term": False}]}))
    assert plan.entries == ()
    reasons = {s.node: s.reason for s in plan.skipped}
    assert "skip: true" in reasons["fc0"] and "quantize_term is false" in reasons["fc1"]
