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


def available_memory(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """The kernel's estimate of the memory available to start programs (MemAvailable), or None unknown."""
    try:
        with open(meminfo, encoding="ascii") as stream:
            for line in stream:
                name, _, value = line.partition(":")
                if name == "MemAvailable" and value.split()[1:] == ["kB"]:
                    return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


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
