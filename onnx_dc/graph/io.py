"""Reading models with clear errors, stamping versions ORT 1.19 accepts, writing atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnx_dc.errors import ModelError, OnnxDcError

MAX_IR_VERSION = 10  # onnxruntime 1.19 loads IR <= 10
MAX_OPSET = 21  # and ai.onnx opsets <= 21



def load_model(model: onnx.ModelProto | str | os.PathLike | bytes, what: str | None = None) -> onnx.ModelProto:
    """Load an ONNX model from a path, bytes or a ModelProto (which is copied, never mutated).

    External data next to a model file is loaded. Raises :class:`ModelError` naming the
    file when it is missing, not ONNX, truncated or invalid.
    """
    if isinstance(model, onnx.ModelProto):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _parse(bytes(model), what or "<bytes>", None)
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None
    return _parse(data, str(path), path.parent)


def _parse(data: bytes, name: str, base_dir: Path | None) -> onnx.ModelProto:
    if not data:
        raise ModelError(f"{name}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError:
        raise ModelError(f"{name}: not an ONNX model, or the file is truncated (protobuf cannot parse it)") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"{name}: not an ONNX model, or the file is truncated (no graph nodes)")
    if base_dir is not None and any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    ):
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(base_dir))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{name}: cannot load its external data ({exc})") from None
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{name}: not a valid ONNX model ({first})") from None
    return model


def serialize(model: onnx.ModelProto) -> bytes:
    """Deterministic bytes of a model (< 2 GB)."""
    return model.SerializeToString(deterministic=True)


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

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
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _new_file_mode(target))
        os.replace(tmp, target)
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


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write a model atomically; returns the number of bytes written."""
    data = serialize(model)
    write_bytes_atomic(data, path)
    return len(data)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same existing file (so an output would overwrite an input)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
