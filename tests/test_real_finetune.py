"""Every model of ../shared/data/real, minilm included, fine-tunes label-free with no "skipped" line.

Each model is planned at sparse 0.5 / class_num 32 and trained one epoch against its own outputs
on a few calibration samples (the feeds scripts/bench_distill.py uses: photo crops, the speech
recording's streaming feeds, minilm's tokenized sentences). Before onnx_dc's equivalents, DTLN's
LSTMs, silero-vad's If nodes and minilm's LayerNormalization stopped it; the fidelity it reaches
is scripts/bench_distill.py's to measure.
"""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT, needs_training, shared_path

from onnx_dc.api import prepare
from onnx_dc.data.calib import load_calib

sys.path.insert(0, str(ROOT / "scripts"))
import bench_distill  # noqa: E402

MODELS = ["superres", "cifar10-resnet20", "ultraface-RFB", "ultraface-slim", "fastestdet", "dtln-1", "dtln-2",
          "gtcrn", "silero-vad", "minilm"]


@needs_training
@pytest.mark.parametrize("name", MODELS)
def test_real_model_fine_tunes_label_free_without_skipping(name, tmp_path, monkeypatch):
    from onnx_dc.train.distill import DISTILL_DEFAULTS, distill
    from onnx_dc.train.settings import resolve_train_settings

    shared_path(bench_distill.WAV)
    monkeypatch.setattr(bench_distill, "N_IMAGES", 12)  # photo crops written (the benchmark writes 160)
    monkeypatch.setattr(bench_distill, "N_SMALL_IMAGES", 12)  # (and 1280 of ResNet-20's size)
    case = bench_distill.cases(tmp_path, epochs=1, limit=8, audio_epochs=1, audio_limit=8)[name]()
    state = prepare(str(shared_path(case["path"])), **case["settings"])
    samples = load_calib(case["spec"], state.model).calib
    settings = resolve_train_settings(DISTILL_DEFAULTS, {"epochs": 1, "batch_size": 4})
    result = distill(state, samples, settings, name=name)
    assert result.skipped is None, result.skipped
    assert any(r.steps for r in result.records)
