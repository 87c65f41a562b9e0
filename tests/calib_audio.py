"""Calibration inputs of the real speech models (../shared/data/real): the gtcrn recording framed as
each model's README says, with the model's state inputs taken from running the original model
frame by frame, saved as npz files for ``--calib npz:FILE``; and closed-loop fidelity, where each
model is fed back its own states."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from conftest import SHARED_DATA

REAL = SHARED_DATA / "real"


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return raw.astype(np.float32) / 32768.0


def run_stream(session, frames: list[dict], states: dict[str, str]) -> tuple[dict[str, list], dict[str, list]]:
    """Run a model frame by frame, feeding each state output back (zeros first).

    Returns:
        (every feed, per input name; every output that is not a state, per output name).
    """
    inputs = {i.name: i for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    state = {name: np.zeros([d if isinstance(d, int) else 1 for d in inputs[name].shape], np.float32)
             for name in states}
    feeds: dict[str, list] = {name: [] for name in inputs}
    outputs: dict[str, list] = {name: [] for name in names if name not in states.values()}
    for frame in frames:
        feed = {**frame, **state}
        for k, v in feed.items():
            if np.ndim(v) > 0:
                feeds[k].append(v)
        outs = dict(zip(names, session.run(None, feed)))
        for name in outputs:
            outputs[name].append(outs[name])
        state = {name: outs[o] for name, o in states.items()}
    return feeds, outputs


def sequential_npz(model: Path, frames: list[dict], states: dict[str, str], out: Path) -> Path:
    """Run the original model frame by frame, feeding each state output back; save every feed as an npz."""
    import onnxruntime as ort

    feeds, _ = run_stream(ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]), frames, states)
    arrays = {k: np.stack(v) for k, v in feeds.items() if v}
    arrays.update({k: v for k, v in frames[0].items() if np.ndim(v) == 0})
    np.savez(out, **arrays)
    return out


def stream_fidelity(name: str, *compressed) -> list[dict[str, dict[str, float]]]:
    """Closed-loop fidelity of compressed versions of a speech model: every model runs the recording frame
    by frame, each fed back its own states (as in real streaming use, where state errors carry into later
    frames); the original runs once for all of them.

    Returns:
        per compressed model: output name (the non-state outputs) -> {"rel_l2", "cosine"} over all frames.
    """
    import onnxruntime as ort

    from onnx_dc.runtime.fidelity import OutputSums
    from onnx_dc.runtime.session import InferenceSession

    model, frames, states = _BUILDERS[name](read_wav(REAL / "gtcrn" / "test_wavs-mix.wav"))
    _, want = run_stream(ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]), frames, states)
    results = []
    for candidate in compressed:
        _, got = run_stream(InferenceSession(candidate), frames, states)
        result = {}
        for key, ys in want.items():
            sums = OutputSums()
            for y, yq in zip(ys, got[key]):
                sums.add(np.asarray(y), np.asarray(yq))
            fid = sums.result(key)
            result[key] = {"rel_l2": fid.rel_l2, "cosine": fid.cosine}
        results.append(result)
    return results


AUDIO_MODELS = ("dtln-1", "dtln-2", "gtcrn", "silero-vad")


def audio_cases(tmp: Path, only: tuple[str, ...] = AUDIO_MODELS) -> list[tuple[str, Path, Path]]:
    """(name, model, npz) of dtln (both stages), gtcrn and silero-vad, inputs built from the gtcrn recording
    (at most 300 frames each); ``only``: just these names."""
    audio = read_wav(REAL / "gtcrn" / "test_wavs-mix.wav")
    cases = []
    for name in only:
        model, frames, states = _BUILDERS[name](audio)
        cases.append((name, model, sequential_npz(model, frames, states, tmp / f"{name}.npz")))
    return cases


def _blocks(audio: np.ndarray) -> list[np.ndarray]:
    return [audio[i : i + 512] for i in range(0, min(len(audio) - 512, 300 * 128), 128)]


def _dtln1(audio: np.ndarray) -> tuple[Path, list[dict], dict[str, str]]:
    """Stage 1 reads the magnitude spectrum of a 512-sample block (shift 128) and its LSTM states."""
    m = REAL / "dtln" / "model_1.onnx"
    frames = [{"input_2": np.abs(np.fft.rfft(b)).astype(np.float32).reshape(1, 1, 257)} for b in _blocks(audio)]
    return m, frames, {"input_3": "tf_op_layer_stack_2"}


def _dtln2(audio: np.ndarray) -> tuple[Path, list[dict], dict[str, str]]:
    """Stage 2 reads a 512-sample time block and its LSTM states."""
    m = REAL / "dtln" / "model_2.onnx"
    frames = [{"input_4": b.reshape(1, 1, 512).astype(np.float32)} for b in _blocks(audio)]
    return m, frames, {"input_5": "tf_op_layer_stack_5"}


def _gtcrn(audio: np.ndarray) -> tuple[Path, list[dict], dict[str, str]]:
    """STFT frames (n_fft 512, hop 256, sqrt-Hann) and the three caches."""
    m = REAL / "gtcrn" / "gtcrn_simple.onnx"
    win = np.sqrt(np.hanning(513)[:-1]).astype(np.float32)
    padded = np.pad(audio, 256, mode="reflect")
    frames = []
    for i in range(0, min(len(padded) - 512, 300 * 256), 256):
        spec = np.fft.rfft(padded[i : i + 512] * win)
        frames.append({"mix": np.stack([spec.real, spec.imag], -1).astype(np.float32).reshape(1, 257, 1, 2)})
    return m, frames, {"conv_cache": "conv_cache_out", "tra_cache": "tra_cache_out", "inter_cache": "inter_cache_out"}


def _silero(audio: np.ndarray) -> tuple[Path, list[dict], dict[str, str]]:
    """512 new samples after the previous 64, the state, and sr = 16000."""
    m = REAL / "silero-vad" / "silero_vad_16k_op15.onnx"
    frames, ctx = [], np.zeros(64, np.float32)
    for i in range(0, min(len(audio) - 512, 300 * 512), 512):
        chunk = audio[i : i + 512]
        frames.append({"input": np.concatenate([ctx, chunk]).reshape(1, 576), "sr": np.array(16000, np.int64)})
        ctx = chunk[-64:]
    return m, frames, {"state": "stateN"}


_BUILDERS = {"dtln-1": _dtln1, "dtln-2": _dtln2, "gtcrn": _gtcrn, "silero-vad": _silero}
