"""Dataset specs (``mnist[:DIR]``, ``fashion-mnist[:DIR]``, ``npz:FILE``, ``digits``) and preprocessing.

``mnist`` and ``fashion-mnist`` without a folder are fetched once into a cache (:mod:`onnx_dc.data.fetch`).

Images are held raw (uint8 or the file's dtype) as ``(N, H, W, C)``; :class:`Preprocess`
turns them into a model's input: ``x = (pixel * scale - mean) / std``, laid out NCHW or
NHWC, then reshaped to the model input's per-sample shape. How a model wants its input
is part of the model, so :meth:`Preprocess.to_metadata` / :meth:`Preprocess.from_metadata`
store it in the ONNX metadata for later commands.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx_dc.data import fetch
from onnx_dc.errors import DataError

KINDS = ("mnist", "fashion-mnist", "npz", "digits")
FETCHED_KINDS = ("mnist", "fashion-mnist")  # without a folder: fetched once into the cache (onnx_dc.data.fetch)
FORMS = "mnist[:DIR], fashion-mnist[:DIR], npz:FILE or digits"
# The scale that makes each kind's raw pixels model input when neither a flag nor the model says otherwise.
NATURAL_SCALES = {"mnist": 1.0 / 255.0, "fashion-mnist": 1.0 / 255.0, "npz": 1.0, "digits": 1.0 / 16.0}
METADATA_KEY = "onnx_dc.preprocess"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DataSpec:
    """Where data comes from: ``kind`` is one of KINDS, ``path`` a folder or file.

    ``path`` is None for ``digits`` and for ``mnist`` / ``fashion-mnist`` fetched into the cache.
    """

    kind: str
    path: str | None = None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"

    @property
    def natural_scale(self) -> float:
        """The pixel scale this kind of data is used with by default (1/255 for IDX, 1/16 for digits)."""
        return NATURAL_SCALES[self.kind]


@dataclass(frozen=True)
class Preprocess:
    """How raw pixels become model input: ``(pixel * scale - mean) / std`` in ``layout``."""

    scale: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    layout: str = "nchw"

    def __post_init__(self) -> None:
        if self.layout not in ("nchw", "nhwc"):
            raise DataError(f"--layout must be nchw or nhwc, got {self.layout!r}")
        if not self.std > 0:
            raise DataError(f"--std must be positive, got {self.std}")

    def to_metadata(self) -> str:
        """JSON text for the model's metadata_props."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_metadata(cls, text: str) -> Preprocess:
        """Inverse of :meth:`to_metadata`."""
        try:
            fields = json.loads(text)
            return cls(**{k: fields[k] for k in ("scale", "mean", "std", "layout") if k in fields})
        except (ValueError, TypeError) as exc:
            raise DataError(f"model metadata {METADATA_KEY!r} is not valid: {exc}") from None

    def apply(self, images: np.ndarray, sample_shape: tuple[int, ...] | None) -> np.ndarray:
        """Turn raw ``(N, H, W, C)`` images (or ``(N, F)`` features) into float32 model input.

        Args:
            images: raw samples.
            sample_shape: the model input's shape without the batch dimension; None keeps
                the laid-out shape.
        """
        x = images.astype(np.float32) * np.float32(self.scale)
        if self.mean or self.std != 1.0:
            x = (x - np.float32(self.mean)) / np.float32(self.std)
        if x.ndim == 4 and self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        if sample_shape is None:
            return np.ascontiguousarray(x)
        if not _fits(tuple(x.shape[1:]), tuple(sample_shape)):
            raise DataError(
                f"a sample of shape {tuple(x.shape[1:])} ({self.layout}) does not fit the model input "
                f"{tuple(sample_shape)}; check the dataset, the model and --layout"
            )
        return np.ascontiguousarray(x.reshape((x.shape[0], *sample_shape)))


def stored_preprocess(model) -> Preprocess | None:
    """The preprocessing recorded in a model's metadata (``metadata_props`` of an ONNX ModelProto), if any."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return Preprocess.from_metadata(prop.value)
    return None


def resolve_preprocess(model, dataset: Dataset, given: Preprocess | None, source: str | None = None) -> Preprocess:
    """Given settings win, then the model's metadata, then the dataset's natural scale.

    Args:
        source: the data spec, for messages (default: the dataset's name).

    Raises:
        DataError: the scale is not given, it is 1/255, and every value of the data lies in [0, 1]:
            the data was scaled already, and scaling it again would feed the model values near 0.
    """
    if given is not None:
        return given
    stored = stored_preprocess(model)
    prep = stored or Preprocess(scale=dataset.default_scale)
    origin = f"the model's metadata ({METADATA_KEY})" if stored else f"the default of {dataset.name} data"
    _refuse_scaling_twice(dataset, prep.scale, origin, source or dataset.name)
    return prep


def _refuse_scaling_twice(dataset: Dataset, scale: float, origin: str, source: str) -> None:
    if not np.isclose(scale, 1.0 / 255.0, rtol=1e-4, atol=0.0) or dataset.images.size == 0:
        return
    low, high = dataset.images.min(), dataset.images.max()
    if low >= 0 and 0 < high <= 1:
        raise DataError(f"{source}: every value is in [0, 1] (the largest {float(high):.4g}) but the scale is 1/255, "
                        f"from {origin}: the data looks already scaled; pass --scale 1")


def _fits(laid_out: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    """Whether samples of shape ``laid_out`` are the model's ``wanted`` input, not only as many numbers.

    Same rank: the shapes must be equal (an NCHW image read as NHWC has the right count and
    the wrong shape). A flat side (features, or a model that takes flat input) needs only
    the count; otherwise extra or missing size-1 axes are allowed.
    """
    if int(np.prod(laid_out)) != int(np.prod(wanted)):
        return False
    if len(laid_out) <= 1 or len(wanted) <= 1:
        return True
    if len(laid_out) == len(wanted):
        return laid_out == wanted
    return [d for d in laid_out if d != 1] == [d for d in wanted if d != 1]


@dataclass(frozen=True)
class Dataset:
    """Raw samples and integer labels of one split."""

    images: np.ndarray
    labels: np.ndarray
    name: str
    default_scale: float = 1.0

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def parse_data_spec(text: str) -> DataSpec:
    """Parse ``mnist:DIR``, ``fashion-mnist:DIR``, ``npz:FILE`` or ``digits``.

    ``mnist`` and ``fashion-mnist`` without a folder (``mnist:`` or ``mnist``) are fetched
    once into the cache when first read (:mod:`onnx_dc.data.fetch`).
    """
    kind, sep, path = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise DataError(f"unknown data spec {text!r}: use {FORMS}")
    if kind == "digits":
        if sep and path:
            raise DataError("'digits' takes no path (it is scikit-learn's bundled dataset)")
        return DataSpec("digits")
    if not path and kind in FETCHED_KINDS:
        return DataSpec(kind)
    if not path:
        raise DataError(f"data spec {text!r} needs a path: {kind}:PATH")
    return DataSpec(kind, path)


def check_data_spec(spec: DataSpec | str, split: str = "test") -> DataSpec:
    """Parse a spec and check that its files are there, without reading them (a check before long work).

    ``mnist`` / ``fashion-mnist`` without a folder fetch the split's files into the cache
    here, when they are not there yet, so that a failed download stops a command before it works.

    Raises:
        DataError: naming the spec and the missing folder or file, or the file that cannot be fetched.
    """
    if isinstance(spec, str):
        spec = parse_data_spec(spec)
    if spec.kind in FETCHED_KINDS and spec.path is None:
        fetch.fetched(spec.kind, _IDX_FILES[split])
    elif spec.kind in FETCHED_KINDS:
        folder = Path(spec.path)
        if not folder.is_dir():
            raise DataError(f"{spec}: {folder} is not a folder with the four IDX files")
        for stem in _IDX_FILES[split]:
            _find(folder, stem)
    elif spec.kind == "npz" and not os.path.isfile(spec.path):
        kind = "a folder, not a file" if os.path.isdir(spec.path) else "no such file"
        raise DataError(f"{spec}: {kind}")
    return spec


def load_dataset(spec: DataSpec | str, split: str = "test") -> Dataset:
    """Load one split (``train`` or ``test``) of a dataset.

    ``digits`` has no official split: the last 30% of scikit-learn's 1,797 samples
    (fixed order) is ``test``, the rest ``train``. ``npz`` files hold ``x`` and ``y``
    (or ``x_train`` / ``y_train`` / ``x_test`` / ``y_test``). ``mnist`` / ``fashion-mnist``
    without a folder read the cache, fetching the split's two files the first time.
    """
    if isinstance(spec, str):
        spec = parse_data_spec(spec)
    if split not in ("train", "test"):
        raise DataError(f"split must be train or test, got {split!r}")
    if spec.kind in FETCHED_KINDS:
        return _load_idx(spec, split)
    if spec.kind == "npz":
        return _load_npz(spec, split)
    return _load_digits(split)


def _load_idx(spec: DataSpec, split: str) -> Dataset:
    folder = fetch.fetched(spec.kind, _IDX_FILES[split]) if spec.path is None else Path(spec.path)
    if not folder.is_dir():
        raise DataError(f"{spec}: {folder} is not a folder with the four IDX files")
    img_name, lab_name = _IDX_FILES[split]
    images = _read_idx(_find(folder, img_name), 3)
    labels = _read_idx(_find(folder, lab_name), 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split")
    return Dataset(images[..., None], labels.astype(np.int64), f"{spec.kind}/{split}", spec.natural_scale)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: missing {stem}.gz (MNIST-style IDX file)")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but the file holds {body.size} bytes of data")
    return body.reshape(dims)


def _load_npz(spec: DataSpec, split: str) -> Dataset:
    path = spec.path
    if not os.path.isfile(path):
        raise DataError(f"{spec}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            for xk, yk in ((f"x_{split}", f"y_{split}"), ("x", "y")):
                if xk in keys and yk in keys:
                    x, y = z[xk], z[yk]
                    break
            else:
                raise DataError(f"{path}: needs arrays x and y (or x_{split} and y_{split}); found {sorted(keys)}")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: x has {x.shape[0]} samples but y has {y.shape[0]}")
    if x.ndim == 3:
        x = x[..., None]
    elif x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # channels first (N, C, H, W): held as (N, H, W, C) like every dataset
    return Dataset(x, y.astype(np.int64).ravel(), f"npz/{split}", NATURAL_SCALES["npz"])


def _load_digits(split: str) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16
    y = bunch.target.astype(np.int64)
    cut = int(round(len(y) * 0.7))
    sl = slice(0, cut) if split == "train" else slice(cut, None)
    return Dataset(x[sl], y[sl], f"digits/{split}", NATURAL_SCALES["digits"])
