"""Benchmark at the paper's scale: AlexNet- and VGG-16-shaped models, one 4096x4096 layer.

    .venv/bin/python scripts/bench_scale.py [--models alexnet,vgg16,fc4096] [--ort 1.19,latest]
                                            [--scratch DIR] [--json out/bench_scale.json] [--infer-runs 3]
                                            [--calib N]  (also: data-aware compress from N random samples,
                                                          one pass, sequential, and sequential with
                                                          prune_scope: layer)

Each model is built with the real layer shapes and seeded trained-like weights (Laplacian
per layer, scaled like He init: std = sqrt(2 / fan_in)) in a scratch folder (never
committed), compressed at the paper's per-layer settings (Han et al. 2016, AlexNet
Table 4, VGG-16 Table 5: percent of weights kept, code bits, index bits; the sparse form
throughout), packed and unpacked. Code 0 is reserved for the pruned zeros, so the paper's
8 / 5 code bits become class_num 255 / 31. The 4096x4096 Gemm is compressed in the
dense form (quantize only, class_num 256) and the sparse form (90% pruned, class_num 32).

Every stage runs in its own subprocess, which reports its own seconds and peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``), so stages do not inflate each other's memory.
Session stages run under each onnxruntime asked for (``1.19``: .venv, ``latest``:
.venv-ort-latest) on the dense model and on the ``.dc.onnx`` side by side: creation
seconds, peak RSS right after creation, and the median time of one inference.

Size ratios are dense file bytes over ``.dcz`` (P+Q+H) and ``.dc.onnx`` (P+Q) bytes,
against the paper's 35x / 49x (P+Q+H) and 27x / 31x (P+Q). The weights are random, so
the ratios say something about sizes only; accuracy is meaningless on these models.

To add a model, add a builder to ``MODELS`` (it writes the dense model and returns its
config); to add a stage, add a function to ``STAGES`` and a call in ``run_model``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PYTHONS = {"1.19": ROOT / ".venv" / "bin" / "python", "latest": ROOT / ".venv-ort-latest" / "bin" / "python"}
VIAS = ("ort", "onnx_dc")

# Han et al. 2016, Table 4 (AlexNet) and Table 5 (VGG-16): (layer, percent kept, code bits, index bits).
ALEXNET_PAPER = [
    ("conv1", 84, 8, 4), ("conv2", 38, 8, 4), ("conv3", 35, 8, 4), ("conv4", 37, 8, 4), ("conv5", 37, 8, 4),
    ("fc6", 9, 5, 4), ("fc7", 9, 5, 4), ("fc8", 25, 5, 4),
]
VGG16_PAPER = [
    ("conv1_1", 58, 8, 5), ("conv1_2", 22, 8, 5), ("conv2_1", 34, 8, 5), ("conv2_2", 36, 8, 5),
    ("conv3_1", 53, 8, 5), ("conv3_2", 24, 8, 5), ("conv3_3", 42, 8, 5), ("conv4_1", 32, 8, 5),
    ("conv4_2", 27, 8, 5), ("conv4_3", 34, 8, 5), ("conv5_1", 35, 8, 5), ("conv5_2", 29, 8, 5),
    ("conv5_3", 36, 8, 5), ("fc6", 4, 5, 5), ("fc7", 4, 5, 5), ("fc8", 23, 5, 5),
]
PAPER_RATIO = {"alexnet": {"pq": 27, "pqh": 35}, "vgg16": {"pq": 31, "pqh": 49}}


# ============================================================================ model builders
class _Net:
    """A tiny builder of plain Conv / Relu / MaxPool / Gemm graphs with seeded Laplacian weights."""

    def __init__(self, name: str, input_shape: list[int], seed: int):
        self.name, self.input_shape = name, input_shape
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.x = [], [], "input"

    def _weight(self, name: str, shape: tuple[int, ...], fan_in: int):
        from onnx import numpy_helper

        std = np.sqrt(2.0 / fan_in)  # He init; a Laplacian of scale b has std b * sqrt(2)
        w = self.rng.laplace(0.0, std / np.sqrt(2.0), size=shape).astype(np.float32)
        self.inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        self.inits.append(numpy_helper.from_array(np.zeros(shape[0], np.float32), f"{name}.bias"))

    def conv(self, name: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, group: int = 1):
        from onnx import helper as oh

        self._weight(name, (cout, cin // group, k, k), cin // group * k * k)
        self.nodes.append(oh.make_node("Conv", [self.x, f"{name}.weight", f"{name}.bias"], [name], name=name,
                                       kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group))
        self.nodes.append(oh.make_node("Relu", [name], [f"{name}.relu"], name=f"{name}.relu"))
        self.x = f"{name}.relu"

    def pool(self, name: str, k: int, stride: int):
        from onnx import helper as oh

        self.nodes.append(oh.make_node("MaxPool", [self.x], [name], name=name, kernel_shape=[k, k],
                                       strides=[stride, stride]))
        self.x = name

    def flatten(self):
        from onnx import helper as oh

        self.nodes.append(oh.make_node("Flatten", [self.x], ["flat"], name="flatten", axis=1))
        self.x = "flat"

    def fc(self, name: str, cin: int, cout: int, relu: bool = True):
        from onnx import helper as oh

        self._weight(name, (cout, cin), cin)
        self.nodes.append(oh.make_node("Gemm", [self.x, f"{name}.weight", f"{name}.bias"], [name], name=name, transB=1))
        self.x = name
        if relu:
            self.nodes.append(oh.make_node("Relu", [name], [f"{name}.relu"], name=f"{name}.relu"))
            self.x = f"{name}.relu"

    def classifier(self, fan_in: int, path: Path) -> None:
        """fc6 / fc7 / fc8 of AlexNet and VGG-16 (4096, 4096, 1000 outputs), then save."""
        self.flatten()
        self.fc("fc6", fan_in, 4096)
        self.fc("fc7", 4096, 4096)
        self.fc("fc8", 4096, 1000, relu=False)
        self.save(path, 1000)

    def save(self, path: Path, outputs: int) -> None:
        import onnx
        from onnx import helper as oh

        graph = oh.make_graph(self.nodes, self.name, [oh.make_tensor_value_info("input", 1, self.input_shape)],
                              [oh.make_tensor_value_info(self.x, 1, [self.input_shape[0], outputs])], self.inits)
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
        model.ir_version = 10
        onnx.save(model, str(path))


def _paper_config(table: list[tuple[str, int, int, int]]) -> dict:
    nodes = [{"match": name, "sparse_ratio": round(1 - kept / 100, 4), "class_num": 2**bits - 1,
              "index_bits": index_bits, "form": "sparse"} for name, kept, bits, index_bits in table]
    return {"version": 1, "nodes": nodes}


def build_alexnet(path: Path) -> dict:
    """Caffe's bvlc_alexnet shapes (grouped conv2, conv4, conv5): 61M weights."""
    n = _Net("alexnet", [1, 3, 227, 227], seed=1)
    n.conv("conv1", 3, 96, 11, stride=4)
    n.pool("pool1", 3, 2)
    n.conv("conv2", 96, 256, 5, pad=2, group=2)
    n.pool("pool2", 3, 2)
    n.conv("conv3", 256, 384, 3, pad=1)
    n.conv("conv4", 384, 384, 3, pad=1, group=2)
    n.conv("conv5", 384, 256, 3, pad=1, group=2)
    n.pool("pool5", 3, 2)
    n.classifier(9216, path)
    return _paper_config(ALEXNET_PAPER)


def build_vgg16(path: Path) -> dict:
    """VGG-16 (configuration D): 138M weights."""
    n = _Net("vgg16", [1, 3, 224, 224], seed=2)
    cin = 3
    for block, (width, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        for i in range(1, convs + 1):
            n.conv(f"conv{block}_{i}", cin, width, 3, pad=1)
            cin = width
        n.pool(f"pool{block}", 2, 2)
    n.classifier(25088, path)
    return _paper_config(VGG16_PAPER)


def _build_fc4096(path: Path, settings: dict) -> dict:
    n = _Net("fc4096", [1, 4096], seed=3)
    n.fc("fc", 4096, 4096, relu=False)
    n.save(path, 4096)
    return {"version": 1, "defaults": settings}


def build_over_2gb(path: Path) -> dict:
    """Eight 8192x8192 Gemm layers (537M weights, 2.15 GB): the weights must live in external data.

    Written layer by layer straight into ``<name>.data`` beside the model, so building it never
    holds more than one layer; compressed at fc-layer settings (90% pruned, 32 shared values).
    """
    import onnx
    from onnx import helper as oh

    width, layers = 8192, 8
    rng = np.random.default_rng(4)
    data = path.with_name(path.name + ".data")
    nodes, inits, x, offset = [], [], "input", 0
    with open(data, "wb") as fh:
        for i in range(layers):
            w = rng.laplace(0.0, np.sqrt(2.0 / width) / np.sqrt(2.0), size=(width, width)).astype(np.float32)
            fh.write(w.tobytes())
            tensor = onnx.TensorProto(name=f"fc{i}.weight", data_type=onnx.TensorProto.FLOAT, dims=[width, width],
                                      data_location=onnx.TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(w.nbytes))):
                tensor.external_data.add(key=key, value=value)
            offset += w.nbytes
            del w
            inits += [tensor, onnx.numpy_helper.from_array(np.zeros(width, np.float32), f"fc{i}.bias")]
            nodes.append(oh.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [f"fc{i}"], name=f"fc{i}", transB=1))
            x = f"fc{i}"
    graph = oh.make_graph(nodes, "over2gb", [oh.make_tensor_value_info("input", 1, [1, width])],
                          [oh.make_tensor_value_info(x, 1, [1, width])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())
    return {"version": 1, "defaults": {"sparse_ratio": 0.9, "class_num": 32}}


def _file_bytes(path: Path) -> int:
    """A model file's size plus its external data file's, when it has one beside it."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: how to build it (dense file + config) and the paper's ratios, if any."""

    build: Callable[[Path], dict]
    paper: dict | None = None


MODELS: dict[str, ModelSpec] = {
    "alexnet": ModelSpec(build_alexnet, PAPER_RATIO["alexnet"]),
    "vgg16": ModelSpec(build_vgg16, PAPER_RATIO["vgg16"]),
    "fc4096-dense": ModelSpec(lambda p: _build_fc4096(p, {"class_num": 256, "form": "dense"})),
    "fc4096-sparse": ModelSpec(lambda p: _build_fc4096(p, {"sparse_ratio": 0.9, "class_num": 32, "form": "sparse"})),
    "over2gb": ModelSpec(build_over_2gb),
}
ALIASES = {"fc4096": ["fc4096-dense", "fc4096-sparse"]}


# ============================================================================ stages (run in a child process)
def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def stage_build(name: str, dense: str, config: str, codebook: str = "layer") -> dict:
    """Write the dense model and its compression config (``codebook``: the setting of every layer)."""
    cfg = MODELS[name].build(Path(dense))
    if codebook != "layer":
        cfg["defaults"] = {**cfg.get("defaults", {}), "codebook": codebook}
    Path(config).write_text(json.dumps(cfg))
    return {"bytes": _file_bytes(Path(dense))}


def stage_compress(dense: str, config: str, out: str) -> dict:
    """onnx_dc.compress at the config (YAML is a superset of JSON)."""
    import onnx_dc

    start = time.perf_counter()
    result = onnx_dc.compress(dense, out, config=json.loads(Path(config).read_text()))
    return {"seconds": time.perf_counter() - start, "bytes": _file_bytes(Path(out)),
            "external_data": result.external_data, "source_bytes": result.report.source_file_bytes}


def stage_calib(dense: str, config: str, samples: int, sequential: bool, prune_scope: str = "row") -> dict:
    """onnx_dc.compress with ``samples`` random inputs as calibration samples (data-aware passes), sequential or not,
    activation scores compared per row or over each layer (``prune_scope``)."""
    import tempfile

    import onnx

    import onnx_dc

    model = onnx.load(dense, load_external_data=False)
    inp = model.graph.input[0]
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "calib.npz"
        np.savez(npz, **{inp.name: np.random.default_rng(0).random([samples, *shape[1:]]).astype(np.float32)})
        cfg = {**json.loads(Path(config).read_text()), "calib": {"sequential": sequential, "prune_scope": prune_scope}}
        start = time.perf_counter()
        result = onnx_dc.compress(dense, None, config=cfg, calib=f"npz:{npz}")
    return {"seconds": time.perf_counter() - start, "collect_seconds": result.calib.collected.seconds,
            "waves": result.calib.result.waves, "calib_samples": len(result.calib.data.calib)}


def stage_pack(src: str, out: str) -> dict:
    """onnx_dc.pack (entropy coding)."""
    import onnx_dc

    start = time.perf_counter()
    onnx_dc.pack(src, out)
    return {"seconds": time.perf_counter() - start, "bytes": Path(out).stat().st_size}


def stage_unpack(src: str, out: str, original: str) -> dict:
    """onnx_dc.unpack, and whether it restored the packed file byte for byte."""
    import onnx_dc

    start = time.perf_counter()
    onnx_dc.unpack(src, out)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": Path(out).stat().st_size,
            "identical": Path(out).read_bytes() == Path(original).read_bytes()}


def stage_session(path: str, runs: int, via: str) -> dict:
    """Session creation, then inference: ``via`` "ort" is stock onnxruntime (default optimizations, so the
    decoder functions are folded), "onnx_dc" is onnx_dc.InferenceSession (weights rebuilt in NumPy)."""
    import onnxruntime as ort

    if via == "onnx_dc":
        import onnx_dc  # imported before the base is read: both models pay for it alike
    base = _peak_mb()
    start = time.perf_counter()
    if via == "onnx_dc":
        sess = onnx_dc.InferenceSession(path)
    else:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    seconds = time.perf_counter() - start
    peak = _peak_mb()
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in inp.shape]).astype(np.float32)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(time.perf_counter() - t)
    return {"ort": ort.__version__, "seconds": seconds, "peak_mb": peak, "base_mb": base,
            "infer_seconds": float(np.median(times)) if times else None}


STAGES: dict[str, Callable[..., dict]] = {
    "build": stage_build, "compress": stage_compress, "calib": stage_calib, "pack": stage_pack, "unpack": stage_unpack,
    "session": stage_session,
}


def child_main(stage: str, args_json: str) -> None:
    """Run one stage in this process and print its JSON (with this process's peak RSS) as the last line."""
    out = STAGES[stage](**json.loads(args_json))
    out.setdefault("peak_mb", _peak_mb())
    print(json.dumps(out))


def run_stage(stage: str, python: Path | str = sys.executable, **kwargs) -> dict:
    """Run a stage in a fresh interpreter; returns its JSON, or an ``error`` entry when it failed."""
    cmd = [str(python), str(Path(__file__).resolve()), "--child", stage, json.dumps(kwargs)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the latest-ORT venv has no onnx_dc installed
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}", "wall_seconds": wall}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = wall
    return out


# ============================================================================ orchestration
def run_model(name: str, scratch: Path, pythons: dict[str, dict[str, Path]], runs: int,
              echo: Callable[[str], None], calib: int = 0, codebook: str = "layer") -> dict:
    """All stages of one model; files stay in ``scratch``."""
    dense, config = scratch / f"{name}.onnx", scratch / f"{name}.config.json"
    dc, dcz, back = scratch / f"{name}.dc.onnx", scratch / f"{name}.dcz", scratch / f"{name}.unpacked.dc.onnx"
    row: dict = {"model": name, "codebook": codebook}
    steps = [
        ("build", {"name": name, "dense": str(dense), "config": str(config), "codebook": codebook}),
        ("compress", {"dense": str(dense), "config": str(config), "out": str(dc)}),
        ("pack", {"src": str(dc), "out": str(dcz)}),
        ("unpack", {"src": str(dcz), "out": str(back), "original": str(dc)}),
    ]
    for stage, kwargs in steps:
        row[stage] = run_stage(stage, **kwargs)
        if stage == "compress" and "peak_mb" in row[stage]:  # the goal: peak <= 2.5x the weight bytes
            row[stage]["peak_vs_model_bytes"] = round(row[stage]["peak_mb"] * 2**20 / row["build"]["bytes"], 2)
        echo(f"{name} {stage}: {row[stage]}")
        if "error" in row[stage]:
            return row
    if calib:  # data-aware compress from random inputs: the cost of statistics, sequential against one pass
        row["calib"] = {}
        for key, sequential, scope in (("one_pass", False, "row"), ("sequential", True, "row"),
                                       ("seq_layer", True, "layer")):  # prune_scope: layer's whole-layer scores
            row["calib"][key] = run_stage("calib", dense=str(dense), config=str(config), samples=calib,
                                          sequential=sequential, prune_scope=scope)
            echo(f"{name} calib {key}: {row['calib'][key]}")
    row["sessions"] = {}
    for via, by_ort in pythons.items():
        for ort_key, python in by_ort.items():
            key = f"{ort_key}/{via}"
            if not python.is_file():
                row["sessions"][key] = {"error": f"{python} missing"}
                continue
            pair = {kind: run_stage("session", python, path=str(path), runs=runs, via=via) for kind, path in
                    (("dense", dense), ("dc", dc))}
            if "error" not in pair["dense"] and "error" not in pair["dc"]:
                pair["time_ratio"] = round(pair["dc"]["seconds"] / pair["dense"]["seconds"], 2)
                pair["memory_ratio"] = round(pair["dc"]["peak_mb"] / pair["dense"]["peak_mb"], 2)
            row["sessions"][key] = pair
            echo(f"{name} session {key}: {pair}")
    row["ratios"] = _ratios(row, MODELS[name].paper)
    return row


def _ratios(row: dict, paper: dict | None) -> dict:
    dense = row["build"]["bytes"]
    out = {"pq": round(dense / row["compress"]["bytes"], 2), "pqh": round(dense / row["pack"]["bytes"], 2)}
    if paper:
        out.update(paper_pq=paper["pq"], paper_pqh=paper["pqh"])
    return out


def print_table(rows: list[dict]) -> None:
    """Stages, sessions and ratios, one line each."""
    print(f"\n{'model':14} {'stage':10} {'seconds':>8} {'peak MB':>8} {'MB':>9}")
    for r in rows:
        for stage in ("build", "compress", "pack", "unpack"):
            s = r.get(stage)
            if s:
                print(f"{r['model']:14} {stage:10} {s.get('seconds', s.get('wall_seconds', 0)):>8.2f} "
                      f"{s.get('peak_mb', 0):>8.0f} {s.get('bytes', 0) / 1e6:>9.2f}" + (f"  {s['error']}" if "error" in s else "")
                      + (f"  peak {s['peak_vs_model_bytes']}x the model's bytes" if "peak_vs_model_bytes" in s else ""))
    calibrated = [r for r in rows if r.get("calib")]
    if calibrated:
        print(f"\n{'model':14} {'data-aware':11} {'samples':>7} {'waves':>5} {'seconds':>8} {'collect s':>9} {'peak MB':>8}")
        for r in calibrated:
            for key, c in r["calib"].items():
                if "error" in c:
                    print(f"{r['model']:14} {key:11} error: {c['error']}")
                    continue
                print(f"{r['model']:14} {key:11} {c['calib_samples']:>7} {c['waves'] or '-':>5} {c['seconds']:>8.1f} "
                      f"{c['collect_seconds']:>9.1f} {c.get('peak_mb', 0):>8.0f}")
    print(f"\n{'model':14} {'ort/via':15} {'dense s':>8} {'dc s':>8} {'x':>6} {'dense MB':>9} {'dc MB':>8} {'x':>6}"
          f" {'dense inf s':>11} {'dc inf s':>9}")
    for r in rows:
        for key, p in r.get("sessions", {}).items():
            if "time_ratio" not in p:
                err = p.get("error") or p.get("dense", {}).get("error") or p["dc"].get("error")
                print(f"{r['model']:14} {key:15} error: {err}")
                continue
            d, c = p["dense"], p["dc"]
            label = f"{d['ort']}/{key.split('/')[1]}"
            print(f"{r['model']:14} {label:15} {d['seconds']:>8.2f} {c['seconds']:>8.2f} {p['time_ratio']:>6.2f} "
                  f"{d['peak_mb']:>9.0f} {c['peak_mb']:>8.0f} {p['memory_ratio']:>6.2f} "
                  f"{d['infer_seconds'] or 0:>11.3f} {c['infer_seconds'] or 0:>9.3f}")
    print(f"\n{'model':14} {'P+Q x':>7} {'paper':>6} {'P+Q+H x':>8} {'paper':>6}")
    for r in rows:
        q = r.get("ratios")
        if q:
            print(f"{r['model']:14} {q['pq']:>7.1f} {q.get('paper_pq', '-'):>6} {q['pqh']:>8.1f} "
                  f"{q.get('paper_pqh', '-'):>6}")
    print("(random weights: the ratios are about sizes only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="alexnet,vgg16,fc4096,over2gb",
                        help=f"comma list of {', '.join([*MODELS, *ALIASES])}")
    parser.add_argument("--ort", default="1.19,latest", help="comma list of 1.19, latest")
    parser.add_argument("--via", default="ort,onnx_dc",
                        help="sessions by stock onnxruntime (ort) and/or onnx_dc.InferenceSession (onnx_dc)")
    parser.add_argument("--latest-dc-python",
                        help="another interpreter with the newest onnxruntime, onnx, tqdm and constriction for "
                             "--via onnx_dc (default: .venv-ort-latest, which scripts/setup_env.sh --test provides)")
    parser.add_argument("--scratch", help="folder for the models (default: a temporary folder, removed after)")
    parser.add_argument("--json", default=str(ROOT / "out" / "bench_scale.json"))
    parser.add_argument("--infer-runs", type=int, default=3, help="inferences per session (median reported)")
    parser.add_argument("--calib", type=int, default=0, metavar="N",
                        help="also compress with N random calibration samples, one pass and sequential (default: skip)")
    parser.add_argument("--codebook", default="layer",
                        help="the codebook setting of every layer: layer, channel (a float16 scale per output "
                             "channel) or group:G (one codebook per G output channels)")
    parser.add_argument("--child", nargs=2, metavar=("STAGE", "ARGS_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        from onnx_dc.config import parse_codebook

        parse_codebook(args.codebook)
    except ValueError as exc:
        parser.error(f"--codebook {args.codebook!r} {exc}")
    if args.child:
        child_main(*args.child)
        return
    names = [m for item in args.models.split(",") for m in ALIASES.get(item, [item])]
    unknown = [m for m in names if m not in MODELS] + [o for o in args.ort.split(",") if o not in PYTHONS]
    unknown += [v for v in args.via.split(",") if v not in VIAS]
    if unknown:
        parser.error(f"unknown model / ort: {', '.join(unknown)}")
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="bench_scale_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        pythons = {via: {o: PYTHONS[o] for o in args.ort.split(",")} for via in args.via.split(",")}
        if "onnx_dc" in pythons and "latest" in pythons["onnx_dc"] and args.latest_dc_python:
            pythons["onnx_dc"]["latest"] = Path(args.latest_dc_python)
        rows = [run_model(m, scratch, pythons, args.infer_runs, lambda s: print(s, flush=True), args.calib,
                          args.codebook) for m in names]
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    result = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "date": time.strftime("%Y-%m-%d %H:%M")}, "models": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print_table(rows)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
