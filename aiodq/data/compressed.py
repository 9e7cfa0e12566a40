"""Data files' compressed forms (gzip, bzip2, xz), decompressed within the memory there is.

A small compressed file may decompress to far more than the machine holds: the master and every
worker read ``--data``, and the kernel's OOM killer ended them with no word (a data audit). The
bytes are read in chunks and refused once past the memory available.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from pathlib import Path
from typing import Any

__all__ = ["COMPRESSED", "TooLargeError", "available_memory", "decompress"]

#: Compressed forms read, by their magic bytes (LIBSVM's site ships bzip2 and xz files too).
COMPRESSED = ((b"\x1f\x8b", gzip, "gzip"), (b"BZh", bz2, "bzip2"), (b"\xfd7zXZ\x00", lzma, "xz"))
#: Decompressed bytes are read this many at a time.
_CHUNK = 16 << 20


class TooLargeError(ValueError):
    """Decompressed data beyond the memory available."""


def available_memory(
    meminfo: str | Path = "/proc/meminfo",
    cgroup: str | Path = "/proc/self/cgroup",
    root: str | Path = "/sys/fs/cgroup",
) -> int | None:
    """The memory this process may still take, or None if unknown.

    The kernel's MemAvailable, or less where the limit of the process's control group leaves less (a
    container's: a review found MemAvailable the host's, and the OOM killer still came first).
    """
    known = [room for room in (_mem_available(meminfo), _cgroup_room(cgroup, Path(root))) if room is not None]
    return min(known) if known else None


def _mem_available(meminfo: str | Path) -> int | None:
    """The kernel's estimate of the memory available to start programs (MemAvailable), or None."""
    try:
        with open(meminfo, encoding="ascii") as stream:
            for line in stream:
                name, _, value = line.partition(":")
                if name == "MemAvailable" and value.split()[1:] == ["kB"]:
                    return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room(cgroup: str | Path, root: Path) -> int | None:
    """The memory limit of this process's control group less its usage (v2 or v1), or None (no limit)."""
    rooms = []
    try:
        with open(cgroup, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:  # v2: memory.max ("max": none), memory.current
            files = (root / path.lstrip("/") / "memory.max", root / path.lstrip("/") / "memory.current")
        elif "memory" in controllers.split(","):  # v1
            folder = root / "memory" / path.lstrip("/")
            files = (folder / "memory.limit_in_bytes", folder / "memory.usage_in_bytes")
        else:
            continue
        try:
            limit, usage = (file.read_text(encoding="ascii").strip() for file in files)
            if limit != "max" and int(limit) < 1 << 60:  # (v1's "none" is about 2^63)
                rooms.append(max(0, int(limit) - int(usage)))
        except (OSError, ValueError):
            continue
    return min(rooms) if rooms else None


def decompress(raw: bytes, module: Any, *, limit: int | None) -> bytes:
    """``raw`` decompressed by ``module`` (gzip, bz2 or lzma, every member or stream of it).

    Raises:
        TooLargeError: if it decompresses to more than ``limit`` bytes (None: no limit).
        OSError, EOFError, ValueError, zlib.error, lzma.LZMAError: if the data is broken.
    """
    chunks: list[bytes] = []
    total = 0
    with module.open(io.BytesIO(raw), "rb") as stream:
        while chunk := stream.read(_CHUNK):
            total += len(chunk)
            if limit is not None and total > limit:
                raise TooLargeError(f"decompresses to more than the {limit / 1e9:.2f} GB of memory available")
            chunks.append(chunk)
    return b"".join(chunks)
