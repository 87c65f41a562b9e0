"""MNIST and Fashion-MNIST fetched once into a local cache: the data of ``mnist:`` and ``fashion-mnist:`` without a folder.

The cache folder is ``$ONNX_DC_CACHE``, else ``$XDG_CACHE_HOME/onnx_dc``, else ``~/.cache/onnx_dc``;
a dataset's files go to ``<cache>/<dataset>/`` under their standard names
(``t10k-images-idx3-ubyte.gz``, ...). A file that is not there yet is downloaded from the
dataset's mirror (``$ONNX_DC_MNIST_URL`` / ``$ONNX_DC_FASHION_MNIST_URL`` replace the default
base URL; a ``file://`` folder works too) into a temporary file beside it, and renamed into
place only when the sha256 of its uncompressed content is the pinned one (:data:`SHA256`).
The content is pinned, not the ``.gz``: mirrors wrap the same IDX bytes in different gzip
headers.

A verified file gets a marker ``<name>.sha256`` beside it holding the hash, the file's size
and its modification time, so later runs neither touch the network nor hash anything; a
file whose size or time no longer match is hashed again, and downloaded again when its
content is not the pinned one.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable

from onnx_dc import progress
from onnx_dc.errors import DataError

log = logging.getLogger(__name__)

# sha256 of each file's uncompressed IDX content (the original LeCun / Zalando files).
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
URL_VARIABLES = {"mnist": "ONNX_DC_MNIST_URL", "fashion-mnist": "ONNX_DC_FASHION_MNIST_URL"}
CACHE_VARIABLE = "ONNX_DC_CACHE"
TIMEOUT = 30.0  # seconds without an answer before a download counts as failed
CHUNK = 1 << 20


def cache_root() -> Path:
    """``$ONNX_DC_CACHE``, else ``$XDG_CACHE_HOME/onnx_dc``, else ``~/.cache/onnx_dc``."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "onnx_dc"


def base_url(kind: str) -> str:
    """The URL the files of ``kind`` are fetched from (its environment variable, else the public mirror), ending in /."""
    url = os.environ.get(URL_VARIABLES[kind]) or MIRRORS[kind]
    return url if url.endswith("/") else url + "/"


def fetched(kind: str, names: Iterable[str] | None = None) -> Path:
    """The cache folder of ``kind`` holding ``names`` (all four files by default), downloading the missing ones.

    Args:
        kind: ``mnist`` or ``fashion-mnist``.
        names: file names (``t10k-images-idx3-ubyte.gz``, ...); a name without ``.gz`` means its ``.gz``.

    Raises:
        DataError: one line naming the file, the URL and what to do: the download failed
            (offline, an HTTP error), its content is not the pinned one, or the cache
            folder cannot be written.
    """
    pinned = SHA256[kind]
    wanted = [n if n.endswith(".gz") else n + ".gz" for n in (pinned if names is None else names)]
    folder = cache_root() / kind
    for name in wanted:
        target = folder / name
        if _verified(target, pinned[name]):
            continue
        if target.is_file():
            log.info("%s in the cache is not the pinned %s file; fetching it again", target, kind)
        _make_folder(folder)
        _download(kind, name, pinned[name], target)
    return folder


def _verified(target: Path, expected: str) -> bool:
    """Whether ``target`` holds the pinned content: by its marker when size and time match, else by hashing it."""
    try:
        stamp = _stamp(target, expected)
    except OSError:
        return False
    marker = _marker(target)
    try:
        if marker.read_text().strip() == stamp:
            return True
    except OSError:
        pass
    if content_sha256(target) != expected:
        return False
    _write_marker(marker, stamp)
    return True


def _stamp(target: Path, expected: str) -> str:
    """What the marker of a verified ``target`` holds: the pinned hash, the file's size and modification time."""
    stat = target.stat()
    return f"{expected} {stat.st_size} {stat.st_mtime_ns}"


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _write_marker(marker: Path, stamp: str) -> None:
    """Write the marker through a rename; a cache that cannot take it only costs a hash next time."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{marker.name}.", suffix=".tmp", dir=marker.parent)
    except OSError as err:
        log.debug("cannot write %s (%s)", marker, err)
        return
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(stamp + "\n")
        _publish(Path(tmp), marker)
    except OSError as err:
        log.debug("cannot write %s (%s)", marker, err)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _publish(tmp: Path, target: Path) -> None:
    """Rename a finished temporary file into place, readable as a new file would be (mkstemp makes it private)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, target)


def content_sha256(path: Path) -> str | None:
    """sha256 of a gzip file's uncompressed content; None when it is not a complete gzip file."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError
        return None
    return digest.hexdigest()


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the cache folder {folder} ({err.strerror or err}); "
                        f"set {CACHE_VARIABLE} to a writable folder") from None


def _download(kind: str, name: str, expected: str, target: Path) -> None:
    """Download ``name`` into a temporary file beside ``target``, check its content, rename it into place."""
    url = base_url(kind) + name
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=target.parent)
    except OSError as err:
        raise DataError(f"cannot write to the cache folder {target.parent} ({err.strerror or err}); "
                        f"set {CACHE_VARIABLE} to a writable folder") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                _copy(url, out, f"{kind} {name}")
            except (OSError, http.client.HTTPException, ValueError) as err:
                raise DataError(f"cannot download {kind} {name} from {url} ({_reason(err)}); pass {kind}:DIR with "
                                f"the four files, or set {URL_VARIABLES[kind]}") from None
        got = content_sha256(tmp)
        if got != expected:
            what = "is not a complete gzip file" if got is None else f"has content sha256 {got}"
            raise DataError(f"{url}: {name} {what}, expected {expected}; nothing was kept. Check "
                            f"{URL_VARIABLES[kind]}, or pass {kind}:DIR with the four files")
        _publish(tmp, target)
    except OSError as err:
        raise DataError(f"cannot write {target} ({err.strerror or err}); set {CACHE_VARIABLE} to a writable "
                        "folder") from None
    finally:
        tmp.unlink(missing_ok=True)
    _write_marker(_marker(target), _stamp(target, expected))
    log.info("fetched %s %s (%d B) from %s into %s", kind, name, target.stat().st_size, url, target.parent)


def _copy(url: str, out: BinaryIO, desc: str) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with progress.bar(total=total, desc=desc, unit="B", unit_scale=True) as shown:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                shown.update(len(chunk))


def _reason(err: Exception) -> str:
    """The cause of a failed download in a few words (an HTTP status, the network error)."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        reason = err.reason
        text = getattr(reason, "strerror", None) or str(reason)
    else:
        text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())
