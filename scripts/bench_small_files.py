"""Fixed costs of small ``*.dc.onnx`` files (issue 12, lever 4): bytes part by part, bias precision, folding.

    .venv/bin/python scripts/bench_small_files.py [--json out/bench_small_files.json] [--base REV]
                                                  [--mnist ../shared/data/mnist] [--fold-sizes 16,20,22]

1. Bytes of models/lenet_300_100.onnx and models/lenet5.onnx compressed with their
   models/*.32x.dc.yaml (no training: byte counts only), split into decoder functions,
   decoder nodes, biases, ``onnx_dc.skipped`` metadata, codebooks and codes + gaps:
   ``before`` is the code at git revision ``--base`` (run from ``git archive`` of it), then
   the parts switched on one after another (the earlier parts switched off in-process):
   +1 generic functions, +2 settings attributes only when not the default, +3 compact
   bodies, +4 no bias entries in ``onnx_dc.skipped``, +5 ``bias: float16`` in every layer;
   and each file packed (``.dcz``) by this revision's packer.
2. Top-1 error on the MNIST test set (10,000 images) with float32 and float16 biases: the
   dense models, the 32x-config files of step 1 (untrained) and the shipped fine-tuned
   models/*-32x.dc.onnx (their compressed layers' biases halved, onnx_dc/graph/biases.py).
3. Folding cost of one sparse decoder (10% kept, 5-bit codes, 4-bit gaps) in onnxruntime
   1.19, generic against width-specialised, at 2**k elements: session seconds and peak RSS
   in a fresh process each (noisy on a shared machine), to place layout.GENERIC_MAX_NUMEL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"lenet_300_100": 1066440, "lenet5": 1724320}  # dense float32 weight bytes (issue 12)
GOALS = {"lenet_300_100": 40, "lenet5": 50}  # runnable .dc.onnx ratio goals
STEPS = ("before", "+1 generic", "+2 attributes", "+3 compact", "+4 skipped", "+5 bias f16")

BASE_RUNNER = """
import os, sys
# The editable install's finder would import this worktree's onnx_dc: the exported tree must win.
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path.insert(0, os.environ["BASE_SRC"])
import onnx_dc
assert onnx_dc.__file__.startswith(os.environ["BASE_SRC"]), onnx_dc.__file__
onnx_dc.compress(sys.argv[1], sys.argv[2], sys.argv[3])
"""

FOLD_RUNNER = """
import json, resource, sys, time, onnxruntime as ort
t = time.perf_counter()
so = ort.SessionOptions()
sess = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def breakdown(model: onnx.ModelProto) -> dict:
    """Bytes of the file by part (protobuf payloads; the rest is graph structure and headers)."""
    from onnx_dc.formats.dcz import pack_bytes
    from onnx_dc.graph import biases, layout

    graph = model.graph
    decs = layout.decoder_nodes(graph)
    roles = {}
    for d in map(layout.read_decoder, decs):
        roles.update({name: role for role, name in d.inputs.items()})
    found = biases.layer_biases(graph, [n.output[0] for n in decs])
    bias_names = {b for entries in found.values() for _, _, b in entries}
    bias_names |= {b + biases.HALF_SUFFIX for b in bias_names}
    inits = {t.name: len(t.SerializeToString()) for t in graph.initializer}
    meta = layout.metadata(model)
    return {
        "file": len(model.SerializeToString()),
        "dcz": len(pack_bytes(model.SerializeToString())),  # every step packed by this revision's packer
        "functions": sum(len(f.SerializeToString()) for f in model.functions),
        "decoder_nodes": sum(len(n.SerializeToString()) for n in decs),
        "biases": sum(v for k, v in inits.items() if k in bias_names)
        + sum(len(n.SerializeToString()) for n in biases.half_casts(graph).values()),
        "skipped_meta": len(meta.get(layout.META_SKIPPED, "")),
        "codebooks": sum(v for k, v in inits.items() if roles.get(k) == "codebook"),
        "codes_gaps": sum(v for k, v in inits.items() if roles.get(k) in ("codes", "gaps", "values")),
        "functions_count": len(model.functions),
    }


@contextlib.contextmanager
def parts(on: int):
    """Switch the parts numbered > ``on`` off (1: generic functions, 2: attributes, 3: compact bodies)."""
    from onnx_dc.graph import decoders, layout

    saved = (layout.GENERIC_MAX_NUMEL, dict(layout.ABSENT), decoders.compact)
    try:
        if on < 1:
            layout.GENERIC_MAX_NUMEL = -1
        if on < 2:  # a value no attribute equals: every settings attribute is written
            layout.ABSENT.update({k: object() for k in layout.ABSENT})
        if on < 3:
            decoders.compact = lambda fn: fn
        yield
    finally:
        layout.GENERIC_MAX_NUMEL, decoders.compact = saved[0], saved[2]
        layout.ABSENT.clear()
        layout.ABSENT.update(saved[1])


def with_bias_records(model: onnx.ModelProto) -> onnx.ModelProto:
    """The file as it was before part 4: every bias entry recorded in ``onnx_dc.skipped``."""
    from onnx_dc.graph import layout
    from onnx_dc.passes.lower import set_metadata

    out = onnx.ModelProto()
    out.CopyFrom(model)
    entries = layout.skipped_entries(layout.metadata(model), model.graph)
    set_metadata(out, {layout.META_SKIPPED: json.dumps(entries)})
    return out


def compress(name: str, config: dict) -> onnx.ModelProto:
    import onnx_dc

    return onnx_dc.compress(str(ROOT / "models" / f"{name}.onnx"), None, config).model


def base_bytes(rev: str, name: str, scratch: Path) -> dict:
    """Compress with the code at ``rev`` (an exported tree on PYTHONPATH) and break the file down."""
    src = scratch / "base"
    if not src.exists():
        archive = subprocess.run(["git", "archive", rev, "onnx_dc"], cwd=ROOT, capture_output=True, check=True).stdout
        src.mkdir()
        (scratch / "base.tar").write_bytes(archive)
        with tarfile.open(scratch / "base.tar") as tar:
            tar.extractall(src, filter="data")
    out = scratch / f"{name}.base.dc.onnx"
    env = {**os.environ, "BASE_SRC": str(src)}
    subprocess.run([sys.executable, "-c", BASE_RUNNER, str(ROOT / "models" / f"{name}.onnx"), str(out),
                    str(ROOT / "models" / f"{name}.32x.dc.yaml")], env=env, check=True, capture_output=True)
    return breakdown(onnx.load(str(out)))


def measure_bytes(rev: str, scratch: Path) -> dict:
    import yaml

    out = {}
    for name in MODELS:
        config = yaml.safe_load((ROOT / "models" / f"{name}.32x.dc.yaml").read_text())
        steps = {"before": base_bytes(rev, name, scratch)}
        for on in (1, 2, 3):
            with parts(on):
                steps[STEPS[on]] = breakdown(with_bias_records(compress(name, config)))
        steps[STEPS[4]] = breakdown(compress(name, config))
        half = {**config, "defaults": {**(config.get("defaults") or {}), "bias": "float16"}}
        steps[STEPS[5]] = breakdown(compress(name, half))
        for row in steps.values():
            row["ratio"] = round(MODELS[name] / row["file"], 2)
        out[name] = steps
    return out


def halved(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its compressed layers' biases (or, dense, every Conv / Gemm bias) in float16."""
    from onnx_dc.graph import biases, layout

    out = onnx.ModelProto()
    out.CopyFrom(model)
    decs = [n.output[0] for n in layout.decoder_nodes(out.graph)]
    if decs:
        found = biases.layer_biases(out.graph, decs)
        names = [b for entries in found.values() for _, _, b in entries]
    else:
        names = [n.input[2] for n in out.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2]
    biases.halve(out, names)
    return out


def measure_accuracy(mnist: Path) -> dict:
    import yaml

    import onnx_dc

    spec = f"mnist:{mnist}"
    out = {}
    for name in MODELS:
        config = yaml.safe_load((ROOT / "models" / f"{name}.32x.dc.yaml").read_text())
        trained = ROOT / "models" / f"{name}-32x.dc.onnx"
        variants = {"dense": onnx.load(str(ROOT / "models" / f"{name}.onnx")),
                    "32x untrained": compress(name, config),
                    "32x fine-tuned (shipped)": onnx.load(str(trained))}
        rows = {}
        for label, model in variants.items():
            err32 = 100 * (1 - onnx_dc.evaluate(model, spec).accuracy)
            err16 = 100 * (1 - onnx_dc.evaluate(halved(model), spec).accuracy)
            rows[label] = {"error_pct_f32": round(err32, 2), "error_pct_f16": round(err16, 2),
                           "delta_pct": round(err16 - err32, 2)}
        out[name] = rows
    return out


def fold_model(numel: int, generic: bool) -> onnx.ModelProto:
    """One sparse decoder (10% kept, 5-bit codes, 4-bit gaps) rebuilding a [numel / 256, 256] weight, and a Gemm."""
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    from onnx_dc.config import Settings
    from onnx_dc.graph import decoders, layout
    from onnx_dc.numerics.bitpack import pack_bits
    from onnx_dc.numerics.sparse import encode_positions

    rng = np.random.default_rng(0)
    shape = (numel // 256, 256)
    entries = encode_positions(np.sort(rng.choice(numel, numel // 10, replace=False)), 4)
    codes = np.where(entries.real, rng.integers(1, 32, entries.positions.size), 0)
    codebook = np.concatenate([[0.0], rng.normal(size=31)]).astype(np.float32)
    node = layout.make_decoder_node("W", layout.SPARSE, 5, 4, entries.positions.size, shape, Settings(),
                                    shared=True, reserves_zero=True, generic=generic)
    inits = [nh.from_array(codebook, "W/dc/codebook"), nh.from_array(pack_bits(codes, 5), "W/dc/codes"),
             nh.from_array(pack_bits(entries.gaps, 4), "W/dc/gaps")]
    graph = oh.make_graph([node, oh.make_node("Gemm", ["x", "W"], ["y"], transB=1)], "fold",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, shape[0]])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(layout.DOMAIN, 1)],
                          functions=decoders.make_functions(17, {node.op_type}))
    model.ir_version = 10
    return model


def measure_folding(exponents: list[int], scratch: Path) -> dict:
    out = {}
    for k in exponents:
        row = {}
        for generic in (False, True):
            path = scratch / f"fold{k}{'g' if generic else 's'}.onnx"
            onnx.save(fold_model(1 << k, generic), str(path))
            proc = subprocess.run([sys.executable, "-c", FOLD_RUNNER, str(path)], capture_output=True, text=True,
                                  check=True)
            row["generic" if generic else "specialised"] = json.loads(proc.stdout)
        row["dense_weight_mb"] = round(4 * (1 << k) / 2**20, 1)
        out[f"2^{k}"] = row
    return out


def print_tables(result: dict) -> None:
    cols = ("file", "ratio", "dcz", "functions", "decoder_nodes", "biases", "skipped_meta", "codebooks", "codes_gaps")
    for name, steps in result["bytes"].items():
        print(f"\n{name} (dense float32 weights {MODELS[name]} B, goal {GOALS[name]}x for the runnable file)")
        print(f"{'step':16}" + "".join(f"{c:>14}" for c in cols))
        for step, row in steps.items():
            print(f"{step:16}" + "".join(f"{row[c]:>14}" for c in cols))
    print("\nMNIST test error (%), float32 vs float16 biases")
    for name, rows in result["accuracy"].items():
        for label, r in rows.items():
            print(f"{name:14} {label:26} f32 {r['error_pct_f32']:6.2f}  f16 {r['error_pct_f16']:6.2f}  "
                  f"delta {r['delta_pct']:+.2f}")
    print("\nFolding one sparse decoder in onnxruntime (session seconds / peak MB)")
    for size, row in result["folding"].items():
        s, g = row["specialised"], row["generic"]
        print(f"{size:6} weight {row['dense_weight_mb']:7.1f} MB  specialised {s['seconds']:6.2f} s {s['peak_mb']:8.1f} MB"
              f"   generic {g['seconds']:6.2f} s {g['peak_mb']:8.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(ROOT / "out" / "bench_small_files.json"))
    parser.add_argument("--base", help="git revision measured as 'before' (default: where this branch left main)")
    parser.add_argument("--mnist", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--fold-sizes", default="16,20,22", help="comma list of k: weights of 2**k elements")
    args = parser.parse_args()
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        rev = ["rev-parse", args.base] if args.base else ["merge-base", "HEAD", "main"]
        base = subprocess.run(["git", *rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        result = {
            "machine": {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                        "base": base},
            "bytes": measure_bytes(base, scratch),
            "accuracy": measure_accuracy(Path(args.mnist)),
            "folding": measure_folding([int(k) for k in args.fold_sizes.split(",")], scratch),
        }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print_tables(result)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
