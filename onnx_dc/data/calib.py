"""Calibration data: unlabeled samples of a model's inputs, split into a calibration and a held-out part.

Specs (``--calib SPEC``):

* ``images:DIR`` -- every .png / .jpg / .jpeg / .bmp file of a folder (sorted by name), read
  with Pillow, optionally resized to ``size`` (H, W), in ``channels`` order (rgb, bgr, gray),
  then ``x = (pixel * scale - mean[c]) / std[c]`` per channel, laid out NCHW or NHWC.
* ``npz:FILE`` -- one array per model input name (``x`` for a one-input model). An array
  whose rank is the input's rank holds samples along the input's axis 0 (its batch axis);
  rank + 1 holds one complete feed per sample; a 0-d array is fed unchanged with every batch.
  An npz with ``x`` and ``y`` (a labeled dataset) is read as such, labels ignored.
* ``mnist:DIR``, ``fashion-mnist:DIR``, ``digits``: the labeled datasets, labels ignored;
  ``mnist`` / ``fashion-mnist`` without a folder are fetched once into the cache (``data.fetch``).
* ``text:FILE`` with ``tokenizer`` (``--tokenizer tokenizer.json``): one sample per line, tokenized
  into the model's ``input_ids`` / ``attention_mask`` / ``token_type_ids`` (see ``data.text``).

Each sample becomes one feed of the model: ``Samples.arrays[name][i]`` is input ``name`` of
sample ``i`` with the shape the model takes for one sample (batch axis of size 1 included).
Dynamic input dimensions take the sample's shape.

Split: labeled datasets calibrate on their train split and hold out the head of their test
split. A folder or a single array file holds out every fifth sample (``i % 5 == 4``, fixed,
whatever the seed) and calibrates on a seeded choice of ``limit`` of the others. Held-out
samples are used only to measure fidelity.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import onnx

from onnx_dc.data.datasets import FETCHED_KINDS, KINDS, load_dataset
from onnx_dc.errors import DataError
from onnx_dc.sections import Field, Section

CALIB_KINDS = ("images", "text") + KINDS
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DEFAULT_CALIB_LIMIT = 256
MAX_AUTO_LIMIT = 1024
AUTO_INPUT_BYTES = 16 << 20
"""Without ``--calib-limit``: as many samples as 16 MB of float32 model input hold, at least 256 and
at most 1024. Small inputs get more samples at little cost: a fully connected layer's statistics
get one row per sample, and LeNet-300-100's 784-input ip1 at sparse 0.9 / class_num 32 scores
92.6% data-aware from 256 MNIST samples and 94.1% from 1024, the compress taking 4.9 s and 5.2 s."""
DEFAULT_HOLDOUT_LIMIT = 256
HOLDOUT_EVERY = 5


class Channels(str, enum.Enum):
    """Channel order images are fed in (gray: one channel, luminance)."""

    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"


@dataclass(frozen=True)
class CalibSpec:
    """Where calibration samples come from and how they become model input.

    Attributes:
        kind: one of CALIB_KINDS.
        path: folder or file (None for ``digits``).
        size: (H, W) to resize images to; None keeps the image size (it must fit the model).
        channels: image channel order; None picks gray for a 1-channel input, else rgb.
        scale: pixel multiplier; None is the data's natural scale (1/255 for images and IDX,
            1/16 for digits, 1 for npz).
        mean: subtracted after scaling, one value or one per channel.
        std: divided by after the mean, one value or one per channel.
        layout: ``nchw`` or ``nhwc`` (image data only).
        limit: calibration samples at most (seeded choice); None: :func:`auto_limit`.
        holdout_limit: held-out samples at most (the fixed first ones).
        seed: seed of the calibration choice.
        tokenizer: the ``tokenizer.json`` of ``text`` samples.
        max_length: tokens per ``text`` sample at most; None: see ``data.text``.
    """

    kind: str
    path: str | None = None
    size: tuple[int, int] | None = None
    channels: Channels | None = None
    scale: float | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "nchw"
    limit: int | None = None
    holdout_limit: int = DEFAULT_HOLDOUT_LIMIT
    seed: int = 0
    tokenizer: str | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in CALIB_KINDS:
            raise DataError(f"unknown calibration spec kind {self.kind!r}: use {', '.join(CALIB_KINDS)}")
        if self.kind == "text" and self.tokenizer is None:
            raise DataError(f"--calib {self}: needs --tokenizer tokenizer.json (the model's Hugging Face tokenizer)")
        if self.kind != "text" and (self.tokenizer is not None or self.max_length is not None):
            raise DataError("--tokenizer and --max-length apply to --calib text:FILE only")
        if self.max_length is not None and self.max_length < 1:
            raise DataError(f"--max-length must be a positive integer, got {self.max_length}")
        if self.layout not in ("nchw", "nhwc"):
            raise DataError(f"--layout must be nchw or nhwc, got {self.layout!r}")
        if not all(s > 0 for s in self.std):
            raise DataError(f"--std must be positive, got {','.join(map(str, self.std))}")
        if (self.limit is not None and self.limit < 1) or self.holdout_limit < 0:
            raise DataError(f"--calib-limit must be a positive integer, got {self.limit}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise DataError(f"--size must be two positive integers H,W, got {self.size}")

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


LAYOUTS = ("nchw", "nhwc")
FLOATS_WHY = "must be a number or comma-separated numbers like 0.485,0.456,0.406"
SIZE_WHY = "must be the height and width as H,W, e.g. 240,320"


def _floats(value: str | float | tuple | list) -> tuple[float, ...]:
    """``0.485,0.456,0.406`` (or one number, or a sequence) as finite floats; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(FLOATS_WHY)
    try:
        if isinstance(value, (int, float)):
            values = (float(value),)
        elif isinstance(value, (tuple, list)):
            values = tuple(float(v) for v in value)
        else:
            values = tuple(float(v) for v in str(value).split(",") if v.strip())
    except (TypeError, ValueError):
        raise ValueError(FLOATS_WHY) from None
    if not values or not all(np.isfinite(values)):
        raise ValueError(FLOATS_WHY)
    return values


def _positive_floats(value: str | float | tuple | list) -> tuple[float, ...]:
    values = _floats(value)
    if not all(v > 0 for v in values):
        raise ValueError("must be a positive number or comma-separated positive numbers like 0.229,0.224,0.225")
    return values


def _size(value: str | tuple | list) -> tuple[int, int]:
    """``H,W`` (or ``HxW``, or a pair) as two positive integers; ValueError otherwise."""
    try:
        if isinstance(value, (tuple, list)):
            dims = tuple(int(v) for v in value)
        else:
            dims = tuple(int(v) for v in str(value).replace("x", ",").split(",") if v.strip())
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 2 or min(dims) < 1:
        raise ValueError(SIZE_WHY)
    return dims  # type: ignore[return-value]


def parse_floats(text: str | float | tuple | list | None, flag: str) -> tuple[float, ...] | None:
    """``0.485,0.456,0.406`` (or one number) as a tuple of floats; None stays None."""
    if text is None:
        return None
    try:
        return _floats(text)
    except ValueError as exc:
        raise DataError(f"{flag} {text!r} {exc}") from None


def parse_size(text: str | tuple | list | None) -> tuple[int, int] | None:
    """``H,W`` (or ``HxW``) as a pair of positive integers; None stays None."""
    if text is None:
        return None
    try:
        return _size(text)
    except ValueError as exc:
        raise DataError(f"--size {text!r} {exc}") from None


# The options of a spec, named by their command-line flags (the names users see in messages).
CALIB_OPTIONS = Section(
    Field("--size", _size),
    Field("--channels", Channels),
    Field("--scale", float, low=0.0, low_open=True),
    Field("--mean", _floats),
    Field("--std", _positive_floats),
    Field("--layout", LAYOUTS),
    Field("--calib-limit", int, low=1),
    Field("--seed", int, low=0),
    Field("--tokenizer", str),
    Field("--max-length", int, low=1),
)
OPTION_FLAGS = {"size": "--size", "channels": "--channels", "scale": "--scale", "mean": "--mean", "std": "--std",
                "layout": "--layout", "limit": "--calib-limit", "seed": "--seed", "tokenizer": "--tokenizer",
                "max_length": "--max-length"}


def parse_calib_spec(
    text: str,
    *,
    size: str | tuple[int, int] | None = None,
    channels: str | Channels | None = None,
    scale: float | None = None,
    mean: str | float | tuple | None = None,
    std: str | float | tuple | None = None,
    layout: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    tokenizer: str | None = None,
    max_length: int | None = None,
) -> CalibSpec:
    """Parse ``images:DIR``, ``npz:FILE``, ``text:FILE``, ``mnist:DIR``, ``fashion-mnist:DIR`` or ``digits`` plus its
    options.

    Options are the CLI flags (``--size``, ``--channels``, ``--scale``, ``--mean``, ``--std``,
    ``--layout``, ``--calib-limit``, ``--seed``, ``--tokenizer``, ``--max-length``); None leaves the default.

    Raises:
        DataError: a bad spec, or every bad option at once.
    """
    kind, sep, path = text.partition(":")
    kind = kind.strip().lower()
    if kind not in CALIB_KINDS:
        raise DataError(f"unknown calibration spec {text!r}: use images:DIR, npz:FILE, text:FILE, mnist[:DIR], "
                        "fashion-mnist[:DIR] or digits")
    if kind == "digits":
        if sep and path:
            raise DataError("'digits' takes no path (it is scikit-learn's bundled dataset)")
        path = None
    elif not path and kind in FETCHED_KINDS:
        path = None  # fetched into the cache when read
    elif not path:
        raise DataError(f"calibration spec {text!r} needs a path: {kind}:PATH")
    given = {"size": size, "channels": channels, "scale": scale, "mean": mean, "std": std, "layout": layout,
             "limit": limit, "seed": seed, "tokenizer": tokenizer, "max_length": max_length}
    parsed = CALIB_OPTIONS.parse({OPTION_FLAGS[k]: v for k, v in given.items() if v is not None},
                                 f"--calib {text}", DataError)
    return CalibSpec(kind, path, **{k: parsed[flag] for k, flag in OPTION_FLAGS.items() if flag in parsed})


def as_calib_spec(spec: CalibSpec | str) -> CalibSpec:
    """Accept a :class:`CalibSpec` or spec text (with default options)."""
    return spec if isinstance(spec, CalibSpec) else parse_calib_spec(spec)


@dataclass(frozen=True)
class InputInfo:
    """One model input fed at run time: name, numpy dtype and shape (None for a dynamic dim)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        """The shape as text, ``?`` for dynamic dims: ``1x3x240x320``."""
        return "x".join("?" if d is None else str(d) for d in self.shape) or "scalar"


def model_inputs(model: onnx.ModelProto) -> tuple[InputInfo, ...]:
    """The inputs a caller must feed (graph inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype(np.float32)
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        out.append(InputInfo(vi.name, dtype, dims))
    return tuple(out)


@dataclass(frozen=True)
class Samples:
    """Model feeds for a set of samples.

    Attributes:
        arrays: input name -> ``[N, *feed_shape]``: sample ``i``'s complete feed is ``arrays[name][i]``.
        constants: input name -> array fed unchanged with every batch (e.g. a sample rate scalar).
        stackable: whether several samples can run as one batch (concatenated along axis 0):
            every sample's feed has a batch axis of size 1 at axis 0 that the model leaves dynamic.
    """

    arrays: dict[str, np.ndarray]
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    stackable: bool = False

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0]) if self.arrays else 0

    def take(self, index: np.ndarray | slice) -> Samples:
        """The samples at ``index`` (same constants)."""
        return replace(self, arrays={k: v[index] for k, v in self.arrays.items()})

    def feed(self, i: int) -> dict[str, np.ndarray]:
        """The feed of sample ``i`` alone."""
        return {**self.constants, **{k: v[i] for k, v in self.arrays.items()}}

    def batches(self, batch_size: int = 64) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of consecutive samples: ``batch_size`` at a time when stackable, else one at a time."""
        n = len(self)
        step = max(1, batch_size) if self.stackable else 1
        for start in range(0, n, step):
            stop = min(n, start + step)
            feed = {k: v[start:stop].reshape((-1, *v.shape[2:])) for k, v in self.arrays.items()}
            yield {**self.constants, **feed}

    def batch_sizes(self, batch_size: int = 64) -> list[int]:
        """Samples in each batch of :meth:`batches` (for weighting per-batch results)."""
        step = max(1, batch_size) if self.stackable else 1
        n = len(self)
        return [min(step, n - s) for s in range(0, n, step)]


def token_mask(feed: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The attention mask among a feed's arrays (an integer or bool [batch, sequence] array whose name
    says mask, as transformer exports name it), or None."""
    for name, value in feed.items():
        a = np.asarray(value)
        if "mask" in name.lower() and a.ndim == 2 and a.dtype.kind in "iub":
            return a
    return None


def real_tokens(y: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``y`` [batch, sequence, ...] at the positions ``mask`` marks as real tokens ([tokens, ...]): padding's
    values feed nothing a model's user reads. ``y`` as it is without a mask or when the shapes differ."""
    if mask is None or y.ndim < 3 or y.shape[:2] != mask.shape:
        return y
    return y[mask != 0]


@dataclass(frozen=True)
class CalibData:
    """Calibration samples and held-out samples of one model's inputs.

    Attributes:
        calib: samples for the data-aware passes (and label-free fine-tuning).
        heldout: samples used only to measure fidelity (may be empty).
        inputs: the model inputs they feed.
        source: the spec text, for reports.
        spec: the parsed spec.
    """

    calib: Samples
    heldout: Samples
    inputs: tuple[InputInfo, ...]
    source: str
    spec: CalibSpec

    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> one sample's feed shape."""
        return {k: tuple(v.shape[1:]) for k, v in self.calib.arrays.items()}

    def summary(self) -> str:
        """One line: where the samples came from and how many."""
        return f"{self.source}: {len(self.calib)} calibration + {len(self.heldout)} held-out samples"


def load_calib(spec: CalibSpec | str, model: onnx.ModelProto) -> CalibData:
    """Read calibration samples for ``model`` and split them (see the module docstring).

    Raises:
        DataError: one line naming the folder, file, image or input at fault: no samples, an
            unreadable image, samples that do not fit the model input, an input missing from an npz.
    """
    spec = as_calib_spec(spec)
    inputs = model_inputs(model)
    if not inputs:
        raise DataError("the model has no inputs to feed; calibration samples cannot be used")
    if spec.kind == "images":
        return _image_calib(spec, inputs)
    if spec.kind == "text":
        return _split_pool(_text_pool(spec, inputs), inputs, spec)
    if spec.kind == "npz" and not _is_labeled_npz(spec.path):
        pool = _npz_pool(spec, inputs)
        return _split_pool(pool, inputs, spec)
    return _dataset_calib(spec, inputs)


def _one_input(spec: CalibSpec, inputs: tuple[InputInfo, ...]) -> InputInfo:
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise DataError(f"{spec}: feeds one input but the model takes {len(inputs)} ({names}); "
                        "give an npz:FILE with one array per input name")
    return inputs[0]


def _split_pool(pool: Samples, inputs: tuple[InputInfo, ...], spec: CalibSpec) -> CalibData:
    sample_bytes = sum(4 * int(np.prod(a.shape[1:])) for a in pool.arrays.values())
    calib, held = split_indices(len(pool), spec, sample_bytes)
    return CalibData(pool.take(calib), pool.take(held), inputs, str(spec), spec)


def split_indices(n: int, spec: CalibSpec, sample_bytes: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) indices of a pool of ``n`` samples of ``sample_bytes`` each (the split of the
    module docstring; ``sample_bytes`` only sets the calibration count when ``spec.limit`` is None). The pool
    of ``images:DIR`` is :func:`image_files`' order, of ``npz:FILE`` its arrays' first axis."""
    held = np.arange(HOLDOUT_EVERY - 1, n, HOLDOUT_EVERY)
    if held.size == 0 and n >= 2:
        held = np.array([n - 1])
    held = held[: spec.holdout_limit]
    rest = np.setdiff1d(np.arange(n), held)
    return _choose(rest, spec, sample_bytes), held


def auto_limit(sample_bytes: int) -> int:
    """Calibration samples without ``--calib-limit`` for samples of ``sample_bytes`` (float32 model input)."""
    return int(np.clip(AUTO_INPUT_BYTES // max(1, sample_bytes), DEFAULT_CALIB_LIMIT, MAX_AUTO_LIMIT))


def _choose(candidates: np.ndarray, spec: CalibSpec, sample_bytes: int) -> np.ndarray:
    limit = spec.limit if spec.limit is not None else auto_limit(sample_bytes)
    if candidates.size <= limit:
        return candidates
    rng = np.random.default_rng(spec.seed)
    return np.sort(rng.choice(candidates, limit, replace=False))


# --- images -------------------------------------------------------------------------------------


MAX_IMAGE_SIDE = 16384
"""--size may not exceed this many pixels a side: one 16384x16384 RGB sample is 3.2 GB of float32, and a
model that takes it needs many times that for its activations."""
READ_PEAK = 2
"""Reading image samples holds up to this many times their float32 size at once (the normalized samples and
their laid-out copy; measured 2.02 with tracemalloc on 100 RGB images at 352x352), so the samples may take
half of the free memory."""


def image_files(folder: Path) -> list[Path]:
    """The image files of ``images:DIR``, in the order its samples are numbered."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _image_calib(spec: CalibSpec, inputs: tuple[InputInfo, ...]) -> CalibData:
    """Check the folder, the model input, the size and the memory the samples will take, then read the images
    the split uses (calibration ones first, then held-out ones) and nothing else."""
    inp = _one_input(spec, inputs)
    folder = Path(spec.path)
    if not folder.is_dir():
        raise DataError(f"{spec}: {folder} is not a folder")
    files = image_files(folder)
    if not files:
        raise DataError(f"{spec}: no images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)})")
    if len(inp.shape) != 4:
        raise DataError(f"{spec}: model input {inp.name!r} is {inp.describe()}, not an image batch (N,C,H,W or "
                        "N,H,W,C); give an npz:FILE instead")
    want_c, want_h, want_w = _image_dims(inp, spec.layout)
    channels = spec.channels or (Channels.GRAY if want_c == 1 else Channels.RGB)
    got_c = 1 if channels == Channels.GRAY else 3
    if want_c is not None and want_c != got_c:
        raise DataError(f"{spec}: model input {inp.name!r} expects {want_c} channel(s) ({inp.describe()}, "
                        f"{spec.layout}) but --channels {channels.value} gives {got_c}; check --channels and --layout")
    h, w = _sample_size(spec, inp, (want_h, want_w), files[0])
    calib, held = split_indices(len(files), spec, 4 * got_c * h * w)
    _check_memory(spec, len(calib), len(held), (got_c, h, w))
    pool = _image_pool(spec, inp, [files[i] for i in np.concatenate([calib, held])], channels, (want_h, want_w))
    return CalibData(pool.take(slice(0, len(calib))), pool.take(slice(len(calib), None)), inputs, str(spec), spec)


def _sample_size(spec: CalibSpec, inp: InputInfo, want_hw: tuple[int | None, int | None],
                 first: Path) -> tuple[int, int]:
    """(H, W) of every sample, known before any image is decoded: --size (checked against the model input's
    fixed sides and :data:`MAX_IMAGE_SIDE`), else the model's fixed size, else the size of the first image."""
    if spec.size is not None:
        h, w = spec.size
        if any(f is not None and f != g for f, g in zip(want_hw, spec.size)):
            fixed = "x".join("?" if d is None else str(d) for d in want_hw)
            raise DataError(f"{spec}: --size {h},{w} but model input {inp.name!r} expects {fixed} (HxW, fixed: "
                            f"{inp.describe()}, {spec.layout}); pass --size {want_hw[0] or h},{want_hw[1] or w}")
        if max(h, w) > MAX_IMAGE_SIDE:
            raise DataError(f"{spec}: --size {h},{w} is over {MAX_IMAGE_SIDE} pixels a side; pass the height and "
                            "width the model is meant to take")
        return h, w
    if None not in want_hw:
        return want_hw  # type: ignore[return-value]  # every image is checked against it as it is read
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(first) as img:  # reads the header only
            w, h = img.size
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise _unreadable(first, exc) from None
    return want_hw[0] or h, want_hw[1] or w


def _check_memory(spec: CalibSpec, n_calib: int, n_held: int, chw: tuple[int, int, int]) -> None:
    """Refuse samples whose reading (:data:`READ_PEAK` x their float32 size) does not fit the free memory."""
    from onnx_dc.data.memory import available_bytes, describe_bytes

    sample_bytes = 4 * int(np.prod(chw))
    need, free = (n_calib + n_held) * sample_bytes, available_bytes()
    if free is None or READ_PEAK * need <= free:
        return
    fit = free // (READ_PEAK * sample_bytes) - n_held
    limit = f" or --calib-limit {fit}" if 1 <= fit < n_calib else ""
    raise DataError(f"{spec}: {n_calib} calibration + {n_held} held-out samples of {'x'.join(map(str, chw))} take "
                    f"{describe_bytes(need)} as float32 and about {READ_PEAK} times that while being read, but "
                    f"{describe_bytes(free)} of memory is available; pass a smaller --size{limit}")


def _unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(f"{path}: cannot read this image ({str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
                     "; remove it from the folder or replace it")


def _image_pool(spec: CalibSpec, inp: InputInfo, files: list[Path], channels: Channels,
                want_hw: tuple[int | None, int | None]) -> Samples:
    """The images of ``files``, in that order, as samples of ``inp``."""
    x = _normalize(_read_images(files, spec, channels, want_hw, inp), spec, 1.0 / 255.0)  # uint8 pixels freed here
    if spec.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x.astype(inp.dtype, copy=False))
    return Samples({inp.name: x[:, None]}, stackable=inp.shape[0] is None)


def _image_dims(inp: InputInfo, layout: str) -> tuple[int | None, int | None, int | None]:
    _, a, b, c = inp.shape
    return (a, b, c) if layout == "nchw" else (c, a, b)


def _read_images(files: list[Path], spec: CalibSpec, channels: Channels,
                 want_hw: tuple[int | None, int | None], inp: InputInfo) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == Channels.GRAY else "RGB"
    out, first = [], None
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if spec.size is not None:
                    img = img.resize((spec.size[1], spec.size[0]), Image.BILINEAR)
                arr = np.asarray(img)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise _unreadable(path, exc) from None
        hw = arr.shape[:2]
        if any(w is not None and w != g for w, g in zip(want_hw, hw)):
            want = "x".join("?" if d is None else str(d) for d in want_hw)
            raise DataError(f"{path}: image is {hw[0]}x{hw[1]} (HxW) but model input {inp.name!r} expects "
                            f"{want} ({inp.describe()}, {spec.layout}); pass --size {want_hw[0] or hw[0]},"
                            f"{want_hw[1] or hw[1]}")
        if first is None:
            first = hw
        elif hw != first:
            raise DataError(f"{path}: image is {hw[0]}x{hw[1]} but {files[0].name} is {first[0]}x{first[1]}; "
                            "pass --size H,W to resize them all")
        arr = arr[..., None] if arr.ndim == 2 else arr
        out.append(arr[..., ::-1] if channels == Channels.BGR else arr)
    return np.stack(out)


def _normalize(raw: np.ndarray, spec: CalibSpec, natural_scale: float) -> np.ndarray:
    """``(pixel * scale - mean[c]) / std[c]`` over the last (channel) axis of ``(N, H, W, C)`` data."""
    c = raw.shape[-1]
    for name, values in (("--mean", spec.mean), ("--std", spec.std)):
        if len(values) not in (1, c):
            raise DataError(f"{name} has {len(values)} values but the samples have {c} channel(s); "
                            f"give one value or {c}")
    scale = natural_scale if spec.scale is None else spec.scale
    x = raw.astype(np.float32)  # a copy: the arithmetic below is in place, one float32 array at a time
    x *= np.float32(scale)
    x -= np.asarray(spec.mean, np.float32)
    x /= np.asarray(spec.std, np.float32)
    return x


# --- text ---------------------------------------------------------------------------------------


def _text_pool(spec: CalibSpec, inputs: tuple[InputInfo, ...]) -> Samples:
    from onnx_dc.data.text import text_samples

    arrays = text_samples(spec.path, spec.tokenizer, spec.max_length, inputs)
    return Samples(arrays, stackable=all(i.shape[0] is None for i in inputs))


# --- npz ----------------------------------------------------------------------------------------


def _is_labeled_npz(path: str) -> bool:
    keys = _npz_keys(path)
    return ("x" in keys and "y" in keys) or ("x_train" in keys and "y_train" in keys)


def _npz_keys(path: str) -> set[str]:
    if not os.path.isfile(path):
        raise DataError(f"npz:{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            return set(z.files)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None


def _npz_pool(spec: CalibSpec, inputs: tuple[InputInfo, ...]) -> Samples:
    keys = _npz_keys(spec.path)
    arrays, constants = {}, {}
    with np.load(spec.path, allow_pickle=False) as z:
        for inp in inputs:
            key = inp.name if inp.name in keys else ("x" if len(inputs) == 1 and "x" in keys else None)
            if key is None:
                raise DataError(f"{spec.path}: no array for model input {inp.name!r} (found {', '.join(sorted(keys))}); "
                                f"add one named {inp.name!r}" + (" or 'x'" if len(inputs) == 1 else ""))
            arr = z[key]
            if arr.ndim == 0 and len(inp.shape) == 0:
                constants[inp.name] = arr.astype(inp.dtype)
            else:
                arrays[inp.name] = _per_sample(arr, inp, spec)
    if not arrays:
        raise DataError(f"{spec.path}: every array is a scalar; give at least one input with samples along axis 0")
    counts = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"{spec.path}: inputs hold different numbers of samples ({counts}); give the same count")
    if next(iter(counts.values())) == 0:
        raise DataError(f"{spec.path}: the arrays hold no samples")
    stackable = all(inp.shape and inp.shape[0] is None and inp.name in arrays for inp in inputs if inp.shape) \
        and all(v.shape[1] == 1 for v in arrays.values())
    return Samples(arrays, constants, stackable)


def _per_sample(arr: np.ndarray, inp: InputInfo, spec: CalibSpec) -> np.ndarray:
    """``[N, *feed_shape]`` from an npz array (rank == input rank: rows; rank + 1: whole feeds)."""
    rank = len(inp.shape)
    if arr.ndim == rank and rank > 0:
        arr = arr[:, None]
    elif arr.ndim != rank + 1:
        raise DataError(f"{spec.path}: array for {inp.name!r} has shape {arr.shape} but the model input is "
                        f"{inp.describe()}; give samples along axis 0 ({rank} or {rank + 1} dimensions)")
    _check_fits(arr.shape[1:], inp, f"{spec.path}: array for {inp.name!r}")
    return np.ascontiguousarray(arr.astype(inp.dtype, copy=False))


def _check_fits(feed_shape: tuple[int, ...], inp: InputInfo, what: str) -> None:
    if len(feed_shape) != len(inp.shape) or any(w is not None and w != g for w, g in zip(inp.shape, feed_shape)):
        got = "x".join(map(str, feed_shape))
        raise DataError(f"{what}: a sample is {got} but model input {inp.name!r} expects {inp.describe()}; "
                        "check the samples (and --size / --layout)")


# --- labeled datasets, labels ignored -------------------------------------------------------------


def _dataset_calib(spec: CalibSpec, inputs: tuple[InputInfo, ...]) -> CalibData:
    from onnx_dc.data.datasets import DataSpec

    inp = _one_input(spec, inputs)
    dspec = DataSpec(spec.kind, spec.path)
    train, test = load_dataset(dspec, "train"), load_dataset(dspec, "test")
    pick = _choose(np.arange(len(train)), spec, 4 * int(np.prod(train.images.shape[1:])))
    calib = _dataset_samples(train.images[pick], spec, train.default_scale, inp)
    held = _dataset_samples(test.images[: spec.holdout_limit], spec, train.default_scale, inp)
    return CalibData(calib, held, inputs, str(spec), spec)


def _dataset_samples(images: np.ndarray, spec: CalibSpec, natural_scale: float, inp: InputInfo) -> Samples:
    x = _normalize(images, spec, natural_scale)
    if x.ndim == 4 and spec.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    feed = _dataset_feed_shape(x.shape[1:], inp, spec)
    x = np.ascontiguousarray(x.reshape((x.shape[0], *feed)).astype(inp.dtype, copy=False))
    return Samples({inp.name: x}, stackable=bool(inp.shape) and inp.shape[0] is None and feed[0] == 1)


def _dataset_feed_shape(sample: tuple[int, ...], inp: InputInfo, spec: CalibSpec) -> tuple[int, ...]:
    """The model's one-sample feed shape for dataset samples of shape ``sample`` (batch axis 1)."""
    want = list(inp.shape)
    if want and want[0] in (None, 1):
        want[0] = 1
    free = [i for i, d in enumerate(want) if d is None]
    known, numel = int(np.prod([d for d in want if d is not None])), int(np.prod(sample))
    if len(free) == 1 and numel % known == 0:
        want[free[0]] = numel // known
    elif len(free) > 1 and len(want) == len(sample) + 1:
        want = [1, *sample]
    elif free or numel != known:
        got = "x".join(map(str, sample))
        raise DataError(f"{spec}: a sample is {got} but model input {inp.name!r} expects {inp.describe()}; "
                        "check the dataset and the model")
    _check_fits(tuple(want), inp, str(spec))
    return tuple(want)
