"""compress as a declared list of stages: which stages a call runs, each once, and a new stage plugged in."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import mlp_model, needs_training

import onnx_dc
from onnx_dc import config, pipeline
from onnx_dc.errors import ConfigError


def names(result) -> list[str]:
    return [s.name for s in result.stages]


def test_data_free_compress_runs_read_plan_passes_lower_write():
    result = onnx_dc.compress(mlp_model(), None, sparse_ratio=0.5, class_num=8)
    assert names(result) == ["read", "plan", "data-free passes", "lower", "write"]
    assert "2 weights to compress" in result.stages[1].did
    assert result.stages[-1].did.endswith("B in memory")


def test_calibration_samples_run_the_data_aware_passes_and_the_fidelity():
    result = onnx_dc.compress(mlp_model(), None, sparse_ratio=0.5, class_num=8, calib="digits")
    assert names(result) == ["read", "plan", "calibration samples", "data-aware passes", "lower", "write",
                             "fidelity"]
    by_name = {s.name: s.did for s in result.stages}
    assert by_name["data-aware passes"] == ", ".join(result.calib.result.passes_ran())
    assert f"on {result.fidelity.samples} held-out sample(s)" in by_name["fidelity"]


@needs_training
def test_labeled_data_runs_one_fine_tuning_stage():
    result = onnx_dc.compress(mlp_model(), None, sparse_ratio=0.5, class_num=8, data="digits", epochs=1)
    assert names(result) == ["read", "plan", "labeled fine-tuning", "lower", "write"]
    assert "training stages on digits" in result.stages[2].did


@needs_training
def test_label_free_fine_tuning_runs_every_stage_once_and_parses_the_config_once(monkeypatch):
    parsed = []
    real = config.parse_config
    monkeypatch.setattr(config, "parse_config", lambda raw, *a, **k: parsed.append(raw) or real(raw, *a, **k))
    raw = {"version": 1, "train": {"start": "both"}}
    result = onnx_dc.compress(mlp_model(), None, raw, sparse_ratio=0.5, class_num=8, calib="digits", epochs=1)
    ran = names(result)
    assert ran[:6] == ["read", "plan", "calibration samples", "data-aware passes", "label-free fine-tuning",
                       "start: both"]
    assert len(ran) == len(set(ran))  # no stage twice
    assert ran[-3:] == ["lower", "write", "fidelity"]
    assert len(parsed) == 1


def test_a_schedule_without_data_is_refused_before_any_stage_runs():
    ctx = pipeline.Context(mlp_model(), config.Config(), schedule={"epochs": 1})
    with pytest.raises(ConfigError, match="without data"):
        pipeline.stages_for(ctx)


def test_a_new_pass_plugs_in_as_a_stage():
    """A stage between the passes and lowering sees the state and its line is listed."""
    seen = {}

    def halve_codebooks(state, ctx):
        for name, layer in state.layers.items():
            layer.codebook = layer.codebook * np.float32(0.5)
            layer.weights = layer.codebook[layer.codes]
            seen[name] = layer.codebook.copy()
        return pipeline.Done(f"{len(seen)} codebooks halved")

    ctx = pipeline.Context(mlp_model(), config.Config().with_overrides({"sparse_ratio": 0.5, "class_num": 8}))
    stages = pipeline.stages_for(ctx)
    stages.insert(stages.index(pipeline.LOWER), pipeline.Stage("halve codebooks", halve_codebooks))
    state, ran = pipeline.run(stages, ctx)
    result = pipeline.result(state, ctx, ran)
    assert [str(s) for s in ran][3] == "halve codebooks: 2 codebooks halved"
    for name, codebook in seen.items():
        np.testing.assert_array_equal(result.state.layers[name].codebook, codebook)


def test_a_stage_with_nothing_to_do_is_not_listed():
    ctx = pipeline.Context(mlp_model(), config.Config().with_overrides({"class_num": 8}))
    skipped = pipeline.Stage("nothing", lambda state, ctx: None)
    state, ran = pipeline.run([pipeline.READ, pipeline.PLAN, skipped, pipeline.DATA_FREE], ctx)
    assert [s.name for s in ran] == ["read", "plan", "data-free passes"] and state.layers
