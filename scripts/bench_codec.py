"""Benchmark the entropy codecs of ``.dcz`` files on code and gap streams.

For each stream and codec: encode and decode speed (symbols per second, counted as
bytes: MB/s), coded bits per symbol, and its excess over the stream's empirical entropy.
Codecs: onnx_dc's canonical Huffman (NumPy), onnx_dc's range coder (constriction), and
the pure-Python ``dahuffman`` package for comparison (on a smaller prefix of each
stream, whose size is recorded, as it runs at well under 1 MB/s).

Synthetic streams mimic real ones: k-means codes (linear centroid init, as the paper's
best) of normally distributed weights with 32 and 256 clusters (code 0 reserved for
zero), and relative-index gaps of a 90%-pruned layer with 5- and 8-bit index width
(fillers for longer zero runs, as in the paper). ``--model`` adds the streams of real
``*.dc.onnx`` files.

Usage:
    python scripts/bench_codec.py [--sizes 1e6 1e7] [--model m.dc.onnx ...] [--json out/bench_codec.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from onnx_dc.formats.dcz import find_streams
from onnx_dc.numerics import huffman, rangecoder
from onnx_dc.numerics.bitpack import unpack_bits

DAHUFFMAN_SYMBOLS = 100_000


# ----------------------------------------------------------------------------- streams
def kmeans_codes(n: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Codes 1..clusters of N(0, 1) weights after 1-D Lloyd iterations from linear init."""
    weights = rng.normal(size=n).astype(np.float32)
    sample = np.sort(weights[: min(n, 200_000)])
    centroids = np.linspace(sample[0], sample[-1], clusters)
    for _ in range(30):
        edges = (centroids[1:] + centroids[:-1]) / 2
        labels = np.searchsorted(edges, sample)
        sums = np.bincount(labels, weights=sample, minlength=clusters)
        sizes = np.bincount(labels, minlength=clusters)
        centroids = np.where(sizes > 0, sums / np.maximum(sizes, 1), centroids)
    edges = (centroids[1:] + centroids[:-1]) / 2
    return (np.searchsorted(edges, weights) + 1).astype(np.uint16)


def pruned_gaps(n: int, index_bits: int, keep: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` relative indices of a layer with ``keep`` density, long runs bridged by fillers."""
    step = 1 << index_bits
    runs = rng.geometric(keep, size=n) - 1  # zeros before each kept weight
    fillers = runs >> index_bits  # each filler advances by 2**index_bits positions
    out = np.full(int(fillers.sum()) + n, step - 1, dtype=np.uint16)
    out[np.cumsum(fillers + 1) - 1] = runs & (step - 1)
    return out[:n]


def synthetic_streams(sizes: list[int], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    makers: list[tuple[str, Callable[[int], np.ndarray]]] = [
        ("codes k=32 (6 bit)", lambda n: kmeans_codes(n, 32, rng)),
        ("codes k=256 (9 bit)", lambda n: kmeans_codes(n, 256, rng)),
        ("gaps 90% pruned (5 bit)", lambda n: pruned_gaps(n, 5, 0.1, rng)),
        ("gaps 90% pruned (8 bit)", lambda n: pruned_gaps(n, 8, 0.1, rng)),
    ]
    return [
        {"stream": name, "source": "synthetic", "symbols": make(n)} for n in sizes for name, make in makers
    ]


def model_streams(paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        data = Path(path).read_bytes()
        for s in find_streams(data):
            raw = np.frombuffer(data, dtype=np.uint8, count=s.length, offset=s.offset)
            role = "codes" if s.role == 1 else "gaps"
            out.append(
                {
                    "stream": f"{s.weight} {role} ({s.width} bit)",
                    "source": path,
                    "symbols": unpack_bits(raw, s.width, s.count),
                }
            )
    return out


# ----------------------------------------------------------------------------- measuring
def entropy_bits(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / max(symbols.size, 1)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def best_time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Fastest of ``repeat`` runs after one warm-up run (first-touch page faults excluded)."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_ours(module, symbols: np.ndarray, repeat: int) -> dict:
    t_enc, blob = best_time(lambda: module.encode(symbols), repeat)
    t_dec, out = best_time(lambda: module.decode(blob, symbols.size), repeat)
    if not np.array_equal(out, symbols):
        raise SystemExit(f"{module.__name__}: round trip failed")
    return {"symbols": int(symbols.size), "bytes": len(blob), "encode_s": t_enc, "decode_s": t_dec}


def bench_dahuffman(symbols: np.ndarray, repeat: int) -> dict:
    from dahuffman import HuffmanCodec

    part = symbols[:DAHUFFMAN_SYMBOLS].tolist()
    codec = HuffmanCodec.from_data(part)
    t_enc, blob = best_time(lambda: codec.encode(part), repeat)
    t_dec, out = best_time(lambda: codec.decode(blob), repeat)
    if list(out) != part:
        raise SystemExit("dahuffman: round trip failed")
    # dahuffman keeps its code table in memory: only the payload is counted.
    return {"symbols": len(part), "bytes": len(blob), "encode_s": t_enc, "decode_s": t_dec}


def run(streams: list[dict], repeat: int, with_dahuffman: bool) -> list[dict]:
    rows = []
    for item in streams:
        symbols = item["symbols"]
        entropy = entropy_bits(symbols)
        results = {
            "huffman": bench_ours(huffman, symbols, repeat),
            "range": bench_ours(rangecoder, symbols, repeat),
        }
        if with_dahuffman:
            results["dahuffman"] = bench_dahuffman(symbols, 1)
        for codec, r in results.items():
            bits = 8 * r["bytes"] / max(r["symbols"], 1)
            part_entropy = entropy if r["symbols"] == symbols.size else entropy_bits(symbols[: r["symbols"]])
            rows.append(
                {
                    "stream": item["stream"],
                    "source": item["source"],
                    "codec": codec,
                    **r,
                    "encode_MBps": r["symbols"] / r["encode_s"] / 1e6,
                    "decode_MBps": r["symbols"] / r["decode_s"] / 1e6,
                    "bits_per_symbol": bits,
                    "entropy_bits": part_entropy,
                    "excess_pct": 100 * (bits / part_entropy - 1) if part_entropy > 0 else None,
                }
            )
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'stream':<34} {'symbols':>9} {'codec':<10} {'enc MB/s':>9} {'dec MB/s':>9} "
        f"{'bits/sym':>9} {'entropy':>8} {'excess':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        excess = "" if r["excess_pct"] is None else f"{r['excess_pct']:7.2f}%"
        print(
            f"{r['stream'][:34]:<34} {r['symbols']:>9} {r['codec']:<10} {r['encode_MBps']:9.2f} "
            f"{r['decode_MBps']:9.2f} {r['bits_per_symbol']:9.4f} {r['entropy_bits']:8.4f} {excess:>8}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7], help="synthetic stream lengths")
    parser.add_argument("--model", action="append", default=[], help="a *.dc.onnx whose streams to measure")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-dahuffman", action="store_true", help="skip the pure-Python reference")
    parser.add_argument("--json", default="out/bench_codec.json", help="where to write the results")
    args = parser.parse_args(argv)
    streams = synthetic_streams([int(s) for s in args.sizes], args.seed) + model_streams(args.model)
    rows = run(streams, args.repeat, not args.no_dahuffman)
    print_table(rows)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
        "dahuffman_symbols": DAHUFFMAN_SYMBOLS,
        "repeat": args.repeat,
        "seed": args.seed,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
