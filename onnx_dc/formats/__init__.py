"""File formats of onnx_dc: the packed, entropy-coded ``*.dcz`` (see docs/FORMAT.md).

What kind of file a path holds is told here, below the codecs, so that argument checks and
loaders can ask without importing them.
"""

from __future__ import annotations

import os

MAGIC = b"\x89DCZ\r\n\x1a\n"  # first bytes of every .dcz file (docs/FORMAT.md)


def is_dcz(data_or_path: bytes | bytearray | memoryview | str | os.PathLike) -> bool:
    """Whether bytes, or the file at a path, start with the ``.dcz`` magic (False if unreadable)."""
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return bytes(data_or_path[: len(MAGIC)]) == MAGIC
    try:
        with open(data_or_path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
