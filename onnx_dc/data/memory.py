"""Memory this process can still take, so that work which cannot fit is refused before it starts.

    available = min(MemAvailable of /proc/meminfo, cgroup limit - cgroup usage)

MemAvailable counts the page cache the kernel can drop, which the free-page count of
``os.sysconf("SC_AVPHYS_PAGES")`` does not; that count is the fallback where /proc/meminfo is
missing. A container's cgroup limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) is
where the kernel kills the process there, so it bounds the figure too.
"""

from __future__ import annotations

import os
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
CGROUP_FILES = (  # (limit, usage): cgroup v2, then v1
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")),
)


def available_bytes() -> int | None:
    """Bytes of memory this process can still allocate; None when the system does not say."""
    figures = [b for b in (_meminfo_available(), _cgroup_room()) if b is not None]
    return min(figures) if figures else None


def _meminfo_available() -> int | None:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return None


def _cgroup_room() -> int | None:
    for limit_file, usage_file in CGROUP_FILES:
        try:
            limit, usage = limit_file.read_text().strip(), int(usage_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max", or v1's huge number: no limit
            return max(0, int(limit) - usage)
    return None


def describe_bytes(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``3.2 MB``, ``18.4 GB``, ``1.1 TB`` (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
