"""The op audit (scripts/audit_ops.py): its JSON (tests/data/op_audit.json) and table (docs/OPS.md) are current.

The audit says, for every ONNX op of opsets 11-21 and every op kind of ../shared/data/real, whether
fine-tuning trains through it: onnxruntime-training's own gradient, an onnx_dc equivalent, or none.
Here: the stored results agree with the op table and with the docs, and a sample of ops probed
again now gives the stored answers.
"""

from __future__ import annotations

import json
import sys

from conftest import ROOT, needs_training

from onnx_dc.graph import ops

sys.path.insert(0, str(ROOT / "scripts"))
import audit_ops  # noqa: E402

AUDIT = json.loads((ROOT / "tests" / "data" / "op_audit.json").read_text())
# ops whose stored answer is probed again: each status, the rewrites, the attributes that decide
SAMPLE = {"Relu", "MatMul", "Shape", "Cast", "HardSigmoid", "HardSwish", "PRelu", "DepthToSpace", "LSTM", "GRU",
          "RNN", "Resize", "ConvTranspose", "LayerNormalization", "BatchNormalization", "Transpose", "If", "Loop",
          "Mish", "Einsum"}


def test_docs_table_is_the_audit_json():
    assert (ROOT / "docs" / "OPS.md").read_text() == audit_ops.markdown(AUDIT)


def test_every_equivalent_in_the_audit_is_named_in_the_op_table_and_back():
    equivalents = {r["op"] for r in AUDIT["onnx_ops"] + AUDIT["models"] if r["status"] == "equivalent"} - {"If"}
    assert equivalents
    assert all(ops.spec(op) is not None and ops.spec(op).equivalent for op in equivalents), equivalents
    by_op = {r["op"]: r["status"] for r in AUDIT["onnx_ops"]}
    for spec in ops.specs():
        if spec.equivalent and spec.domain == "":
            assert by_op.get(spec.op_type) in ("gradient", "equivalent"), spec.op_type


def test_every_op_of_the_real_models_trains_or_stops_the_gradient():
    """No op kind of ../shared/data/real is left without a gradient (fine-tuning never skips them)."""
    assert AUDIT["models"], "the audit was written without ../shared/data/real"
    stuck = [(r["op"], r["attrs"], r.get("reason")) for r in AUDIT["models"] if r["status"] == "none"]
    assert not stuck
    models = {m for r in AUDIT["models"] for m in r["models"]}
    assert {"minilm/minilm.onnx", "silero-vad/silero_vad_16k_op15.onnx", "dtln/model_1.onnx"} <= models


@needs_training
def test_a_sample_probed_again_gives_the_stored_answers():
    stored = {r["op"]: r["status"] for r in AUDIT["onnx_ops"] if r["op"] in SAMPLE}
    fresh = {r["op"]: r["status"] for r in audit_ops.audit_onnx_ops(SAMPLE)}
    assert fresh == stored
    assert {"gradient", "equivalent", "none", "stops"} <= set(fresh.values())
