"""Label-free fine-tuning: fidelity to the original model without and with it, per model.

For LeNet-300-100 (models/, sparse 0.9 / class_num 32, MNIST train images without labels)
and the real models in ../shared/data/real, minilm included (sparse 0.5 / class_num 32), five ways:
data-free (prune by magnitude, plain k-means); data-free + label-free fine-tuning
(onnx_dc.train.distill: masked retraining, k-means, codebook training, all against the
original model's outputs); data-aware (compress(calib=...)); the same with the activation
scores compared over each layer (calib: prune_scope: layer); data-aware + label-free
fine-tuning (compress(calib=..., epochs=N)). Each is measured against the original model
on held-out samples: relative L2 error and cosine similarity per output (and MNIST top-1
accuracy on the 10,000 test images for LeNet). Where onnxruntime-training cannot build a
gradient, the row carries the one-line reason.

Calibration samples: random crops and flips of scikit-learn's two bundled photos and the
shared sample photos (images models), resized as each model's README says; for the
audio models, the feeds the real streaming loop produces on gtcrn's test_wavs-mix.wav
(16 kHz noisy speech; recurrent states carried along), every fifth feed held out.

    python scripts/bench_distill.py [--models lenet_300_100,superres,...] [--epochs 2] [--limit 64]
        [--audio-epochs 16] [--audio-limit 0] [--json out/bench_distill.json] [--update]

Image models take --epochs and --limit (photo crops; more of them did not help FastestDet:
held-out cosine .903 with 128); the audio models take --audio-epochs and --audio-limit (0:
every feed of the recording; a step of these models costs a few milliseconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from calib_audio import read_wav  # noqa: E402
from onnx_dc import progress  # noqa: E402
from onnx_dc.api import prepare  # noqa: E402
from onnx_dc.data.calib import CalibData, as_calib_spec, load_calib, parse_calib_spec, real_tokens, token_mask  # noqa: E402
from onnx_dc.data.datasets import Preprocess  # noqa: E402
from onnx_dc.errors import OnnxDcError  # noqa: E402
from onnx_dc.passes.prune import prune  # noqa: E402
from onnx_dc.passes.share import share  # noqa: E402
from onnx_dc.train.distill import DISTILL_DEFAULTS, distill, run_teacher  # noqa: E402
from onnx_dc.train.settings import resolve_train_settings  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "real"
MNIST = ROOT.parent / "shared" / "data" / "mnist"
WAV = REAL / "gtcrn" / "test_wavs-mix.wav"
N_IMAGES = 160  # 128 candidates for calibration + 32 held out (every fifth)
# ResNet-20's 32x32 crops are cheap: 256 held out (calib.DEFAULT_HOLDOUT_LIMIT), so that its top-1
# agreement moves in steps of .004, not .031
N_SMALL_IMAGES = 1280


def _image_spec(folder: Path, size: tuple[int, int], n: int = N_IMAGES, **options) -> object:
    from calib_images import write_folder

    path = folder / f"photos_{size[0]}x{size[1]}_{n}"
    if not path.is_dir():
        write_folder(path, n, size, seed=0, suffix=".png")
    return parse_calib_spec(f"images:{path}", size=f"{size[0]},{size[1]}", **options)


def _session(path: Path):
    from onnx_dc.runtime.session import InferenceSession

    return InferenceSession(str(path))


def dtln_feeds(audio: np.ndarray, steps: int) -> tuple[dict, dict]:
    """Feeds of DTLN's two stages along its real-time loop (block 512, shift 128)."""
    m1, m2 = _session(REAL / "dtln" / "model_1.onnx"), _session(REAL / "dtln" / "model_2.onnx")
    s1 = np.zeros((1, 2, 128, 2), np.float32)
    s2 = np.zeros((1, 2, 128, 2), np.float32)
    buf = np.zeros(512, np.float32)
    f1: dict[str, list] = {"input_2": [], "input_3": []}
    f2: dict[str, list] = {"input_4": [], "input_5": []}
    for i in range(min(steps, len(audio) // 128)):
        buf = np.roll(buf, -128)
        buf[-128:] = audio[i * 128 : (i + 1) * 128]
        spec = np.fft.rfft(buf)
        mag = np.abs(spec).astype(np.float32)[None, None]
        f1["input_2"].append(mag)
        f1["input_3"].append(s1)
        mask, s1 = m1.run(None, {"input_2": mag, "input_3": s1})
        block = np.fft.irfft(spec * mask[0, 0]).astype(np.float32)[None, None]
        f2["input_4"].append(block)
        f2["input_5"].append(s2)
        _, s2 = m2.run(None, {"input_4": block, "input_5": s2})
    return ({k: np.stack(v) for k, v in f1.items()}, {k: np.stack(v) for k, v in f2.items()})


def gtcrn_feeds(audio: np.ndarray, frames: int) -> dict:
    """Feeds of GTCRN's streaming model: STFT frames (n_fft 512, hop 256, sqrt-Hann) and its caches."""
    sess = _session(REAL / "gtcrn" / "gtcrn_simple.onnx")
    window = np.sqrt(np.hanning(513)[:-1]).astype(np.float32)  # periodic Hann, as torch.hann_window
    padded = np.pad(audio, 256, mode="reflect")
    caches = {"conv_cache": np.zeros((2, 1, 16, 16, 33), np.float32), "tra_cache": np.zeros((2, 3, 1, 1, 16), np.float32),
              "inter_cache": np.zeros((2, 1, 33, 16), np.float32)}
    feeds: dict[str, list] = {"mix": [], **{k: [] for k in caches}}
    for i in range(frames):
        spec = np.fft.rfft(padded[i * 256 : i * 256 + 512] * window)
        mix = np.stack([spec.real, spec.imag], -1).astype(np.float32)[None, :, None, :]
        feed = {"mix": mix, **caches}
        for k, v in feed.items():
            feeds[k].append(v)
        out = sess.run(None, feed)
        caches = dict(zip(caches, out[1:]))
    return {k: np.stack(v) for k, v in feeds.items()}


def silero_feeds(audio: np.ndarray, chunks: int) -> dict:
    """Feeds of Silero VAD: 512 new samples plus the previous 64, its state, and sr = 16000."""
    sess = _session(REAL / "silero-vad" / "silero_vad_16k_op15.onnx")
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(64, np.float32)
    feeds: dict[str, list] = {"input": [], "state": []}
    sr = np.array(16000, np.int64)
    for i in range(chunks):
        chunk = audio[i * 512 : (i + 1) * 512]
        x = np.concatenate([context, chunk])[None]
        context = chunk[-64:]
        feeds["input"].append(x)
        feeds["state"].append(state)
        _, state = sess.run(None, {"input": x, "state": state, "sr": sr})
    return {**{k: np.stack(v) for k, v in feeds.items()}, "sr": sr}


def _npz_spec(folder: Path, name: str, arrays: dict) -> object:
    path = folder / f"{name}.npz"
    np.savez(path, **arrays)
    return as_calib_spec(f"npz:{path}")


def fidelity(model: onnx.ModelProto, data: CalibData, teacher: dict) -> dict:
    """Relative L2 error and cosine similarity of each output against the original's, on held-out samples
    (token outputs at the real tokens, as onnx_dc's own fidelity)."""
    got = run_teacher(model, data.heldout, list(teacher))
    mask = token_mask(data.heldout.arrays) if data.heldout.stackable else None
    if mask is not None:  # [samples, batch, sequence] -> [rows, sequence]: token outputs at the real tokens
        mask = mask.reshape(-1, mask.shape[-1])
    out = {}
    for name, t in teacher.items():
        g, t = (real_tokens(a.reshape(-1, *a.shape[2:]), mask) if a.ndim > 3 else a for a in (got[name], t))
        g, t = g.ravel().astype(np.float64), t.ravel().astype(np.float64)
        out[name] = {"rel_l2": float(np.linalg.norm(g - t) / max(np.linalg.norm(t), 1e-30)),
                     "cosine": float(g @ t / max(np.linalg.norm(g) * np.linalg.norm(t), 1e-30))}
    return out


def mnist_accuracy(model: onnx.ModelProto) -> float:
    from onnx_dc.runtime.evaluate import evaluate

    return evaluate(model, f"mnist:{MNIST}", Preprocess(scale=1 / 255)).accuracy


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 2)


def bench_model(name: str, path: Path, spec, settings: dict, schedule: dict, accuracy=None, note: str = "") -> dict:
    """Data-free, data-free + label-free fine-tuning, data-aware (prune_scope row, the default, and layer),
    data-aware + label-free fine-tuning."""
    import onnx_dc

    row: dict = {"model": name, "file": str(path.relative_to(ROOT.parent)) if path.is_relative_to(ROOT.parent) else str(path),
                 "settings": settings, "calib": str(spec), "limit": spec.limit, "schedule": schedule, "note": note}
    state = prepare(str(path), **settings)
    data = load_calib(spec, state.model)
    row["samples"] = {"calib": len(data.calib), "heldout": len(data.heldout)}
    outputs = [o.name for o in state.model.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    original = state.dense_model()
    teacher = run_teacher(original, data.heldout, outputs)
    if accuracy is not None:
        row["dense_accuracy"] = accuracy(original)

    def measure(key: str, model: onnx.ModelProto, seconds: float, **extra) -> None:
        row[key] = {"fidelity": fidelity(model, data, teacher), "seconds": seconds, **extra}
        if accuracy is not None:
            row[key]["accuracy"] = accuracy(model)
        print(f"    {key}: worst cosine / rel. L2 {_worst(row[key]['fidelity'])}, {seconds:.0f} s", flush=True)

    def data_free():
        free = prepare(str(path), **settings)
        prune(free)
        share(free)
        return free.dense_model()

    measure("data_free", *_timed(data_free))
    echo = lambda line: print(f"      {line}", flush=True)  # noqa: E731
    with progress.echoed(echo):
        result, seconds = _timed(lambda: distill(state, data.calib, resolve_train_settings(DISTILL_DEFAULTS, schedule),
                                                 name=name))
    measure("data_free_ft", state.dense_model(), seconds, skipped=result.skipped,
            stages=[r.to_dict() for r in result.records])
    aware, seconds = _timed(lambda: onnx_dc.compress(str(path), calib=spec, **settings))
    measure("data_aware", aware.model, seconds, passes=aware.calib.to_dict().get("passes"))
    layer, seconds = _timed(lambda: onnx_dc.compress(str(path), config=LAYER_SCOPE, calib=spec, **settings))
    measure("data_aware_layer", layer.model, seconds)
    lines: list[str] = []
    tuned, seconds = _timed(lambda: onnx_dc.compress(str(path), calib=spec, epochs=schedule["epochs"],
                                                     schedule={k: v for k, v in schedule.items() if k != "epochs"},
                                                     echo=lambda line: (lines.append(line), echo(line)), **settings))
    skipped = next((line for line in lines if "fine-tuning skipped" in line), None)
    measure("data_aware_ft", tuned.model, seconds, skipped=skipped)
    return row


def cases(folder: Path, epochs: int, limit: int, audio_epochs: int = 16, audio_limit: int = 0) -> dict:
    """name -> zero-argument function returning bench_model's keyword arguments."""
    real = {"sparse_ratio": 0.5, "class_num": 32}
    sched = {"epochs": epochs}
    audio_sched = {"epochs": audio_epochs}

    def image_spec(size, **options):
        return replace(_image_spec(folder, size, **options), limit=limit)

    def npz_spec(name, arrays):
        n = len(next(iter(v for v in arrays.values() if np.ndim(v) > 0)))
        return replace(_npz_spec(folder, name, arrays), limit=audio_limit or n)
    audio = read_wav(WAV) if WAV.is_file() else None

    def lenet():
        spec = replace(as_calib_spec(f"mnist:{MNIST}"), limit=60000)
        return dict(path=ROOT / "models" / "lenet_300_100.onnx", spec=spec, settings={"sparse_ratio": 0.9, "class_num": 32},
                    schedule={"epochs": 5, "batch_size": 64}, accuracy=mnist_accuracy,
                    note="MNIST train images without labels; accuracy on the 10,000 test images")

    def ultraface(variant):
        def make():
            path = REAL / "ultraface" / f"version-{variant}-320.onnx"  # IR 4: initializers listed as inputs too
            spec = image_spec((240, 320), scale=1.0, mean="127", std="128", channels="rgb")
            return dict(path=path, spec=spec, settings=real, schedule=sched)
        return make

    def dtln(stage):
        def make():
            feeds = dtln_feeds(audio, 1200)[stage - 1]
            return dict(path=REAL / "dtln" / f"model_{stage}.onnx", spec=npz_spec(f"dtln{stage}", feeds),
                        settings=real, schedule=audio_sched)
        return make

    return {
        "lenet_300_100": lenet,
        # batch 4, at most 32 samples, one epoch: a 16-image batch of 224x224 through 64-channel convs
        # took 6 GB to train, and one epoch of 256 images 15 minutes on this (shared) machine
        "superres": lambda: dict(path=REAL / "superres" / "pytorch_super_resolution.onnx",
                                 spec=replace(image_spec((224, 224), channels="gray"), limit=min(limit, 32)),
                                 settings=real, schedule={"epochs": 1, "batch_size": 4}),
        "cifar10-resnet20": lambda: dict(path=REAL / "cifar10-resnet20" / "resnet20_cifar10_pre.onnx",
                                         spec=image_spec((32, 32), n=N_SMALL_IMAGES, mean="0.485,0.456,0.406",
                                                         std="0.229,0.224,0.225"), settings=real, schedule=sched),
        "ultraface-RFB": ultraface("RFB"),
        "ultraface-slim": ultraface("slim"),
        "fastestdet": lambda: dict(path=REAL / "fastestdet" / "FastestDet.onnx",
                                   spec=image_spec((352, 352), channels="bgr"), settings=real, schedule=sched),
        "dtln-1": dtln(1),
        "dtln-2": dtln(2),
        # the whole 9.8 s recording: 610 frames (hop 256)
        "gtcrn": lambda: dict(path=REAL / "gtcrn" / "gtcrn_simple.onnx",
                              spec=npz_spec("gtcrn", gtcrn_feeds(audio, len(audio) // 256)), settings=real,
                              schedule=audio_sched),
        # 487 tokenized sentences (input_ids, attention_mask, token_type_ids); the limit as for the images
        "minilm": lambda: dict(path=REAL / "minilm" / "minilm.onnx",
                               spec=replace(as_calib_spec(f"npz:{REAL / 'minilm' / 'sentences.npz'}"), limit=limit),
                               settings=real, schedule=sched),
        "silero-vad": lambda: dict(path=REAL / "silero-vad" / "silero_vad_16k_op15.onnx",
                                   spec=npz_spec("silero", silero_feeds(audio, 300)), settings=real,
                                   schedule=audio_sched),
    }


def _worst(fid: dict) -> str:
    return f"{min(v['cosine'] for v in fid.values()):.4f} / {max(v['rel_l2'] for v in fid.values()):.3f}"


METHODS = ("data_free", "data_free_ft", "data_aware", "data_aware_layer", "data_aware_ft")
# The data-aware passes with activation scores compared over each layer instead of each row.
LAYER_SCOPE = {"version": 1, "calib": {"prune_scope": "layer"}}


def table(rows: list[dict]) -> str:
    """Worst cosine / worst relative L2 over the outputs per method (MNIST accuracy in brackets), seconds."""
    head = " | ".join(f"{m} cos / relL2 (s)" for m in METHODS)
    lines = [f"| model | settings | outputs | {head} | not fine-tuned because |",
             "| --- | --- | --- | " + " | ".join("---" for _ in METHODS) + " | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | | " + " | ".join("" for _ in METHODS) + f" | {r['error']} |")
            continue
        s = r["settings"]
        cells = []
        for m in METHODS:
            got = r.get(m)
            if got is None:  # a row of an earlier run (--update) without this method
                cells.append("")
                continue
            acc = f" [{got['accuracy']:.4f}]" if "accuracy" in got else ""
            cells.append(f"{_worst(got['fidelity'])}{acc} ({got['seconds']:.0f})")
        reason = r["data_free_ft"].get("skipped") or ""
        lines.append(f"| {r['model']} | {s['sparse_ratio']}/{s['class_num']} | {len(r['data_free']['fidelity'])} | "
                     + " | ".join(cells) + f" | {reason} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated subset (default: all)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per stage for the real models (default 2)")
    parser.add_argument("--limit", type=int, default=64, help="calibration samples of the real image models (default 64)")
    parser.add_argument("--audio-epochs", type=int, default=16, help="epochs per stage for the audio models (default 16)")
    parser.add_argument("--audio-limit", type=int, default=0,
                        help="calibration samples of the audio models (default 0: every feed of the recording)")
    parser.add_argument("--json", default=str(ROOT / "out" / "bench_distill.json"))
    parser.add_argument("--update", action="store_true", help="keep the JSON's rows of models not run now")
    args = parser.parse_args()
    old = json.loads(Path(args.json).read_text())["rows"] if args.update and Path(args.json).is_file() else []
    rows: list[dict] = []

    def write() -> None:  # after every model, so that a long run leaves its results so far
        done = {r["model"] for r in rows}
        out = {"machine": platform.platform(), "python": platform.python_version(), "epochs_real": args.epochs,
               "limit_real": args.limit, "epochs_audio": args.audio_epochs, "limit_audio": args.audio_limit, "rows": [r for r in old if r["model"] not in done] + rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))

    with tempfile.TemporaryDirectory(prefix="bench_distill_") as tmp:
        all_cases = cases(Path(tmp), args.epochs, args.limit, args.audio_epochs, args.audio_limit)
        names = args.models.split(",") if args.models else list(all_cases)
        for name in names:
            print(f"{name} ...", flush=True)
            try:
                rows.append(bench_model(name, **all_cases[name]()))
            except (OnnxDcError, FileNotFoundError) as exc:
                rows.append({"model": name, "error": str(exc).splitlines()[0][:300]})
                print(f"    {rows[-1]['error']}", flush=True)
            write()
    rows = json.loads(Path(args.json).read_text())["rows"]
    print(table(rows))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
