"""A local HTTP server in a thread serving one folder: the mirror that tests point ``ONNX_DC_MNIST_URL`` at,
and small valid IDX files to serve from it."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

IDX_NAMES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


@dataclass
class Mirror:
    """A running server: its base URL (ending in /) and the paths it was asked for, in order."""

    url: str
    requests: list[str] = field(default_factory=list)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        self.server.mirror.requests.append(self.path)


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[Mirror]:
    """Serve ``folder`` on a free port of 127.0.0.1 while the block runs; the port refuses connections after."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    server.mirror = Mirror(f"http://127.0.0.1:{server.server_address[1]}/")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.mirror
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def dead_url() -> str:
    """The URL of a server that has stopped: connections to it are refused."""
    with serving(Path(".")) as mirror:
        return mirror.url


def write_idx_gz(path: Path, array: np.ndarray) -> str:
    """Write a uint8 array as a gzip-compressed IDX file; returns the sha256 of the uncompressed content."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0))
    return hashlib.sha256(raw).hexdigest()


def synthetic_mnist(folder: Path, train: int = 40, test: int = 20, seed: int = 0) -> dict[str, str]:
    """The four MNIST files with random 28x28 images and labels; returns file name -> content sha256."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pinned = {}
    for split, n in (("train", train), ("test", test)):
        images, labels = IDX_NAMES[split]
        pinned[images] = write_idx_gz(folder / images, rng.integers(0, 256, (n, 28, 28)))
        pinned[labels] = write_idx_gz(folder / labels, rng.integers(0, 10, n))
    return pinned
