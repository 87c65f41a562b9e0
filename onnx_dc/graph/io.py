"""Reading ONNX files and bytes with clear errors, writing models and files atomically, the output checks.

:func:`read_model` and :func:`parse_model` are the building blocks of the one loader,
:func:`onnx_dc.formats.models.load_model` (which also opens ``.dcz`` files); :func:`write_model`
is the one writer; :func:`check_output` / :func:`refuse_overwrite` the one output check.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import onnx
from google.protobuf.message import DecodeError

from onnx_dc.errors import ArgumentError, ModelError, OnnxDcError
from onnx_dc.graph import external, wire
from onnx_dc.graph.walk import sort_graph

MAX_IR_VERSION = 10  # onnxruntime 1.19 loads IR <= 10
MAX_OPSET = 21  # and ai.onnx opsets <= 21



def read_model(path: str | os.PathLike, lazy: bool = False) -> tuple[onnx.ModelProto, int]:
    """Read, sort and check a model file once; returns the model and its size with its external data.

    The checker reads the file by path (it never re-serializes the proto, and a model with
    external data over 2 GB can only be checked that way). External data is checked first
    (:func:`onnx_dc.graph.external.resolve`). An unsorted graph (onnxruntime accepts those)
    is sorted, then checked in memory without its tensor data.

    Args:
        path: the ``.onnx`` file.
        lazy: leave every large tensor in its file, memory-mapped when read (tensors embedded
            in the model file too, see :mod:`onnx_dc.graph.wire`): the proto holds no weight
            bytes. Otherwise external data is loaded into the proto when the model fits in one
            protobuf, and stays mapped only when it does not.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    problem = _check_path(path)
    model = _read_lazy(path) if lazy else _read(path)
    source_bytes = path.stat().st_size + external.check_external(model, path.parent, str(path), path)
    external.pin_locations(model, path.parent, str(path))
    if problem is not None and sort_graph(model.graph):
        problem = _check_skeleton(model)
    if problem is not None:
        raise ModelError(f"{path}: not a valid ONNX model ({problem})")
    if not lazy and external.fits(model):
        external.embed_all(model)
    return model, source_bytes


def _read(path: Path) -> onnx.ModelProto:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_unchecked(data, str(path))


def _read_lazy(path: Path) -> onnx.ModelProto:
    try:
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        return _read(path)
    try:
        data = wire.split_model_bytes(memoryview(mapped), path.name, external.EXTERNAL_MIN_BYTES)
    except (ValueError, IndexError):  # not a protobuf message: let the parser name the problem
        data = path.read_bytes()
    return parse_unchecked(data, str(path))


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_path(path: Path) -> str | None:
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # ValidationError, or parse errors of several types that parse_unchecked names better
        return _first_line(exc)
    return None


def _check_skeleton(model: onnx.ModelProto) -> str | None:
    """Check the graph structure with every initializer's data left out (cheap at any model size)."""
    saved = list(model.graph.initializer)
    del model.graph.initializer[:]
    skeleton = onnx.ModelProto()
    try:
        skeleton.CopyFrom(model)
    finally:
        model.graph.initializer.extend(saved)
    for tensor in saved:
        skeleton.graph.initializer.add(name=tensor.name, data_type=tensor.data_type)
    for tensor in external.initializers(skeleton):
        _empty(tensor)
    try:
        onnx.checker.check_model(skeleton)
    except (onnx.checker.ValidationError, ValueError) as exc:
        return _first_line(exc)
    return None


def _empty(tensor: onnx.TensorProto) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    del tensor.dims[:]
    tensor.dims.append(0)


def parse_unchecked(data: bytes, name: str) -> onnx.ModelProto:
    """A model from ONNX bytes, parsed only (not sorted or checked), for reading its metadata and inputs.

    Raises:
        ModelError: naming ``name`` when the bytes are empty, not ONNX or truncated.
    """
    if not data:
        raise ModelError(f"{name}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError:
        raise ModelError(f"{name}: not an ONNX model, or the file is truncated (protobuf cannot parse it)") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"{name}: not an ONNX model, or the file is truncated (no graph nodes)")
    return model


def parse_model(data: bytes, name: str) -> onnx.ModelProto:
    """A model from ONNX bytes, sorted and checked (a model with external data needs its path instead).

    Raises:
        ModelError: naming ``name`` when the bytes are not ONNX, truncated or invalid.
    """
    model = parse_unchecked(data, name)
    if any(external.is_external(t) for t in external.initializers(model)):
        raise ModelError(f"{name}: the model has external data; give its file path, not its bytes")
    sort_graph(model.graph)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelError(f"{name}: not a valid ONNX model ({_first_line(exc)})") from None
    return model


def serialize(model: onnx.ModelProto) -> bytes:
    """Deterministic bytes of a model (< 2 GB)."""
    return model.SerializeToString(deterministic=True)


def write_bytes_atomic(data: bytes | Callable[[BinaryIO], int], path: str | os.PathLike) -> int:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename; returns its size.

    ``data`` may be a function that writes to the open file and returns the bytes it wrote
    (for files too large to hold in memory at once).

    A reader never sees a half-written file, and a failed write leaves no temporary file.
    An existing file keeps its permissions; a new one gets 0o666 minus the umask
    (``mkstemp`` alone would make it private).
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxDcError(f"{target}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise OnnxDcError(f"cannot write {target}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            size = data(fh) if callable(data) else fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _new_file_mode(target))
        os.replace(tmp, target)
        return size
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OnnxDcError(f"cannot write {target}: {err.strerror or err}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_file_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def write_model(model: onnx.ModelProto, path: str | os.PathLike) -> tuple[int, str | None]:
    """Write a model atomically as one file, or with external data when it does not fit in one protobuf.

    ``model`` may change in place (its tensors embedded or moved to the data file).

    Returns:
        (bytes written, the external data file name or None).
    """
    target = Path(path)
    if external.fits(model):
        external.embed_all(model)
        data = model.SerializeToString(deterministic=True)
        write_bytes_atomic(data, target)
        return len(data), None
    data_name = target.name + ".data"
    written = write_bytes_atomic(lambda fh: external.write_data(model, fh, data_name), target.parent / data_name)
    stub = model.SerializeToString(deterministic=True)
    write_bytes_atomic(stub, target)
    return len(stub) + written, data_name


def check_output(path: str | os.PathLike, flag: str = "-o", inputs=()) -> Path:
    """A file path that can be written: not a folder, in an existing writable folder, not one of ``inputs``.

    Raises:
        ArgumentError: naming ``flag``, the path and what to do.
        ModelError: when the path is one of the inputs (:func:`refuse_overwrite`).
    """
    p = Path(path)
    if p.is_dir():
        raise ArgumentError(f"{flag} {p}: is a folder; give a file name, e.g. {p / 'model.dc.onnx'}")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise ArgumentError(f"{flag} {p}: folder {folder} does not exist; create it first (mkdir -p {folder})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ArgumentError(f"{flag} {p}: folder {folder} is not writable")
    refuse_overwrite(p, inputs, flag)
    return p


def refuse_overwrite(output: str | os.PathLike, inputs, flag: str | None = None) -> None:
    """The one check that an output path names none of the inputs (the same file, also through links).

    Args:
        output: the path to be written.
        inputs: paths (or None, ignored) the command reads.
        flag: the option the output was given to, named in the message (e.g. ``-o``).

    Raises:
        ModelError: naming the output, the input it would overwrite, and what to do.
    """
    for other in inputs:
        if other is not None and same_file(other, output):
            where = f"{flag} " if flag else ""
            raise ModelError(f"{where}{output}: refusing to overwrite the input {other}; choose another output path")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same existing file (so an output would overwrite an input)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
