"""Master checkpoints: the whole training state in one file, written atomically.

A checkpoint holds the model, the snapshot, g_snap, y and theta, the epoch and
version counters, the quantizer's random-generator state, the trace, the
staleness and drop counters and the traffic counters (see
:mod:`aiodq.protocol.recovery`).  It is one ``.npz`` file:
the arrays, plus a JSON document under the key ``meta``.  :func:`save` writes a
temporary file in the same folder, flushes it to disk and renames it over the
old checkpoint, so a crash at any moment leaves either the old checkpoint or
the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..protocol.recovery import Checkpoint

__all__ = ["CHECKPOINT_FORMAT", "load", "save"]

#: Version of the checkpoint layout, stored in ``meta["format"]``.
CHECKPOINT_FORMAT = 1


#: numpy's stubs type ``**arrays`` as if it could hold ``allow_pickle``.
_savez: Any = np.savez


def save(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(checkpoint.meta, format=CHECKPOINT_FORMAT)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            contents = {"meta": np.array(json.dumps(meta)), **checkpoint.arrays}
            _savez(stream, **contents)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save`.

    Raises:
        CheckpointError: if the file is missing, damaged, or of another format.
    """
    try:
        # Open the file here: np.load leaves its own handle open when the archive is broken.
        with Path(path).open("rb") as stream:
            archive = np.load(stream, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with archive:
                meta = json.loads(str(archive["meta"]))
                arrays = {name: archive[name] for name in archive.files if name != "meta"}
    except (OSError, ValueError, KeyError, json.JSONDecodeError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc}") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}"
        )
    return Checkpoint(arrays, meta)
