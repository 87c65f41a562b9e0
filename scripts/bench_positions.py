"""Benchmark the position models of ``.dcz`` version 2 against order-0 coding of each stream.

Per sparse layer and in total: ``.dcz`` bytes before (every codes / gaps stream coded
order-0 on its own, as version 1 did: ``pack_bytes(positions=False)``) and after (the
position models: ``pack_bytes()``), the model chosen, and the entropy of the codes and
positions under that model. Inputs: the shipped ``models/*.dc.onnx`` (masks from pruning
with retraining) and LeNet-5 / LeNet-300-100 compressed at the paper's settings
(``models/*.dc.yaml``, magnitude pruning without retraining).

Codes conditioned on structure: per mask-coded layer, the kept entries' codes coded in one
order-0 model against one model per row-density or column-density bucket (2, 4, 8 buckets
of equal size by the line's kept count), each coded with the smaller of Huffman and range
coding, so that every model's table is costed in.

``--vgg`` also times pack and unpack of the VGG-16-sized model of scripts/bench_scale.py
(compressed at the paper's settings), before and after, in this process.

Usage:
    python scripts/bench_positions.py [--vgg] [--json out/bench_positions.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import onnx_dc
from onnx_dc.formats import dcz, dczmask
from onnx_dc.numerics import huffman, maskcode, rangecoder

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
BUCKETS = (2, 4, 8)


def inputs() -> list[tuple[str, bytes]]:
    """(label, .dc.onnx bytes): the shipped files, then the LeNets at the paper's settings."""
    out = [(p.name, p.read_bytes()) for p in sorted(MODELS.glob("*.dc.onnx"))]
    for name in ("lenet5", "lenet_300_100"):
        result = onnx_dc.compress(str(MODELS / f"{name}.onnx"), config=str(MODELS / f"{name}.dc.yaml"))
        out.append((f"{name} paper config, magnitude pruned", result.model.SerializeToString()))
    return out


def _best_bytes(symbols: np.ndarray) -> int:
    return min(len(huffman.encode(symbols)), len(rangecoder.encode(symbols)))


def conditioned_codes(packed: bytes) -> dict[str, dict]:
    """Per mask-coded layer: bytes of its kept codes under order-0 and under per-bucket models."""
    buf = memoryview(packed)
    entries = dcz._read_sections(buf)[1]
    masks = {e.weight: e for e in entries if e.codec == dcz.MASK}
    out = {}
    for e in entries:
        if e.codec != dcz.REAL_CODES:
            continue
        m = masks[e.weight]
        decoded = dczmask.decode_mask_section(buf[m.at : m.at + m.stored_length], m.count, m.width)
        codes = dczmask.decode_real_codes(buf[e.at : e.at + e.stored_length], decoded.real, e.width)[decoded.real]
        positions = (np.cumsum(decoded.gaps.astype(np.int64) + 1) - 1)[decoded.real]
        out[e.weight] = _bucket_costs(codes, positions, e.weight, packed)
    return out


def _bucket_costs(codes: np.ndarray, positions: np.ndarray, weight: str, packed: bytes) -> dict:
    shape = _shape(packed, weight)
    g = maskcode.grid(positions, shape)
    rows, cols = positions // g.cols, positions % g.cols
    row = {"order0": _best_bytes(codes)}
    for n in BUCKETS:
        for axis, line, counts in (("row", rows, g.row_counts), ("col", cols, g.col_counts)):
            density = counts[line]
            edges = np.quantile(density, np.linspace(0, 1, n + 1)[1:-1])
            bucket = np.searchsorted(edges, density)
            row[f"{axis}_buckets_{n}"] = sum(_best_bytes(codes[bucket == b]) for b in np.unique(bucket))
    return row


def _shape(packed: bytes, weight: str) -> tuple[int, ...]:
    import onnx

    from onnx_dc.graph import layout

    model = onnx.load_from_string(dcz.unpack_bytes(packed))
    return next(layout.read_decoder(n).shape for n in layout.decoder_nodes(model.graph) if n.output[0] == weight)


def measure(label: str, data: bytes) -> dict:
    """Before / after bytes per layer and in total, with models and entropies."""
    before = dcz.pack_bytes(data, positions=False)
    after = dcz.pack_bytes(data)
    assert dcz.unpack_bytes(after) == data
    old = {r["name"]: r for r in dcz.stream_report(before)}
    layers = []
    for r in dcz.stream_report(after):
        o = old[r["name"]]
        layers.append({
            "name": r["name"], "count": r["count"], "kept": r["kept"],
            "code_bits": r["code_bits"], "index_bits": r["index_bits"],
            "before_codes_bytes": o["codes_coded_bytes"], "before_gaps_bytes": o["gaps_coded_bytes"],
            "after_codes_bytes": r["codes_coded_bytes"], "after_gaps_bytes": r["gaps_coded_bytes"],
            "codes_model": r["codes_model"], "positions_model": r["positions_model"],
            "codes_entropy_bytes": r["codes_entropy_bytes"], "positions_entropy_bytes": r["positions_entropy_bytes"],
            "code_bits_after": round(8 * r["codes_coded_bytes"] / max(r["kept"], 1), 3),
            "index_bits_after": round(8 * r["gaps_coded_bytes"] / max(r["kept"], 1), 3),
        })
    return {"input": label, "dc_onnx_bytes": len(data), "dcz_before": len(before), "dcz_after": len(after),
            "saved_pct": round(100 * (1 - len(after) / len(before)), 2), "layers": layers,
            "conditioned_codes": conditioned_codes(after)}


def time_vgg() -> dict:
    """Pack / unpack seconds of the VGG-16-sized model of scripts/bench_scale.py, before and after."""
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "scripts" / "bench_scale.py")
    bench_scale = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = bench_scale  # its dataclasses look their module up there
    spec.loader.exec_module(bench_scale)
    with tempfile.TemporaryDirectory(prefix="bench_positions_") as tmp:
        dense, dc = Path(tmp) / "vgg16.onnx", Path(tmp) / "vgg16.dc.onnx"
        config = bench_scale.MODELS["vgg16"].build(dense)
        onnx_dc.compress(str(dense), str(dc), config=config)
        dense.unlink()
        data = dc.read_bytes()
        row = {"dc_onnx_bytes": len(data)}
        for label, positions in (("before", False), ("after", True)):
            start = time.perf_counter()
            packed = dcz.pack_bytes(data, positions=positions)
            row[f"{label}_pack_seconds"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            same = dcz.unpack_bytes(packed) == data
            row[f"{label}_unpack_seconds"] = round(time.perf_counter() - start, 2)
            row[f"{label}_dcz_bytes"] = len(packed)
            row[f"{label}_identical"] = same
        row["models"] = sorted({r["positions_model"] for r in dcz.stream_report(packed)})
    return row


def print_table(rows: list[dict], vgg: dict | None) -> None:
    print(f"{'input / layer':44} {'kept':>7} {'codes B':>15} {'gaps B':>15} {'position model':>28} "
          f"{'H codes':>8} {'H pos':>8}")
    for row in rows:
        print(f"{row['input'][:44]:44} {'':>7} {'.dcz ' + str(row['dcz_before']) + ' -> ' + str(row['dcz_after']):>31}"
              f"  ({row['saved_pct']:+.1f}% saved)")
        for r in row["layers"]:
            codes = f"{r['before_codes_bytes']}->{r['after_codes_bytes']}"
            gaps = f"{r['before_gaps_bytes']}->{r['after_gaps_bytes']}"
            print(f"  {r['name'][:42]:42} {r['kept']:>7} {codes:>15} {gaps:>15} {r['positions_model'][:28]:>28} "
                  f"{r['codes_entropy_bytes'] or 0:8.0f} {r['positions_entropy_bytes'] or 0:8.0f}")
        for name, c in row["conditioned_codes"].items():
            best = min((k for k in c if k != "order0"), key=c.get)
            print(f"    codes of {name}: order-0 {c['order0']} B, best conditioned {best} {c[best]} B")
    if vgg:
        print(f"\nVGG-16-sized: pack {vgg['before_pack_seconds']} s -> {vgg['after_pack_seconds']} s, unpack "
              f"{vgg['before_unpack_seconds']} s -> {vgg['after_unpack_seconds']} s, .dcz {vgg['before_dcz_bytes']} "
              f"-> {vgg['after_dcz_bytes']} B, models {vgg['models']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vgg", action="store_true", help="also time the VGG-16-sized model")
    parser.add_argument("--json", default=str(ROOT / "out" / "bench_positions.json"))
    args = parser.parse_args()
    rows = [measure(label, data) for label, data in inputs()]
    vgg = time_vgg() if args.vgg else None
    result = {"machine": {"python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")},
              "inputs": rows, "vgg16": vgg}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print_table(rows, vgg)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
