"""Master checkpoints: the whole training state in one file, written atomically.

A checkpoint holds the model, the snapshot, g_snap, y and theta, the epoch and
version counters, the quantizer's random-generator state, the trace, the
staleness and drop counters and the traffic counters (see
:mod:`aiodq.protocol.recovery`).  It is one ``.npz`` file:
the arrays, plus a JSON document under the key ``meta``.  :func:`save` writes a
temporary file in the same folder, flushes it to disk and renames it over the
old checkpoint, so a crash at any moment leaves either the old checkpoint or
the new one, never a torn file; the temporary files a crash leaves behind are
removed by the next :func:`save` or :func:`remove_stale`.  :func:`load` refuses,
before reading any array, an archive whose members would take more memory than
the caller allows (a zip bomb), and reports every failure as one
:class:`~aiodq.errors.CheckpointError`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import re
import stat
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from tokenize import TokenError
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from ..errors import CheckpointError
from ..protocol.dataset import other_data
from ..protocol.recovery import Checkpoint
from .signals import signals_deferred

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_KIND",
    "RECORDS_CONTENT",
    "Lock",
    "check_data",
    "check_fresh_start",
    "finished_cleanly",
    "finished_run",
    "kind_of",
    "load",
    "lock",
    "holds_records",
    "MAX_MEMBERS",
    "open_regular",
    "read_text",
    "RECORDS_READ_LIMIT",
    "read_limit",
    "records_in",
    "remove_stale",
    "resumable",
    "run_of",
    "save",
    "sync_folder",
]

#: Version of the checkpoint layout, stored in ``meta["format"]``.
CHECKPOINT_FORMAT = 1
#: The ``kind`` in a run's model.npz metadata (aiodq.launch.results writes it in this format).
MODEL_KIND = "aiodq model"
#: The ``content`` in a model records file's metadata (likewise).
RECORDS_CONTENT = "model records"


#: numpy's stubs type ``**arrays`` as if it could hold ``allow_pickle``.
_savez: Any = np.savez


class Lock:
    """An exclusive lock on a checkpoint, held by the master that writes it (see :func:`lock`)."""

    def __init__(self, descriptor: int | None) -> None:
        self._descriptor = descriptor

    def release(self) -> None:
        """Let another master use the checkpoint (closing the lock file releases the lock)."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def _real(path: str | Path) -> Path:
    """``path`` with its symbolic links followed: the file a lock, a save or a clean-up is about.

    A checkpoint given through a link is then locked, written and cleaned up where the link points
    (two runs given the same file by two names share one lock; the link stays a link).  At a loop of
    links it stops: :func:`lock` refuses that.
    """
    return Path(os.path.realpath(path))


def lock_path(path: str | Path) -> Path:
    """The lock file of the checkpoint ``path``: ``.NAME.lock`` beside the file it names (:func:`lock`)."""
    target = _real(path)
    return target.parent / f".{target.name}.lock"


def lock(path: str | Path, what: str = "checkpoint") -> Lock:
    """Lock the checkpoint ``path`` for this process: an advisory ``flock`` on ``.NAME.lock`` beside it.

    The kernel drops the lock when the process ends, however it ends, so a crashed master
    never leaves its checkpoint locked.  Where ``fcntl`` is missing the lock does nothing.

    ``what``: the file's kind in messages (``aiodq master --records`` locks its records file so).

    Raises:
        CheckpointError: if another process (or another master of this one) holds it, or the
            lock file cannot be created.
    """
    target, where = _real(path), lock_path(path)
    if target.is_symlink():  # (realpath stops at a loop of links)
        raise CheckpointError(f"cannot write the {what} {path}: a loop of symbolic links")
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:
        return Lock(None)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(where, os.O_RDWR | os.O_CREAT, 0o600)
    except (FileExistsError, NotADirectoryError):  # (mkdir's words for a file in the way: "File exists")
        raise CheckpointError(f"cannot write the {what} {path}: a file is where a folder must be") from None
    except OSError as exc:
        raise CheckpointError(f"cannot write the {what} {path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(descriptor)
        if isinstance(exc, BlockingIOError):
            raise CheckpointError(
                f"the {what} {path} is in use by another run (it holds the lock {where}): give another "
                "file, or wait for that run to end"
            ) from None
        raise CheckpointError(f"cannot write the {what} {path}: {exc.strerror or exc}") from exc
    return Lock(descriptor)


def remove_stale(path: str | Path) -> int:
    """Remove the temporary files that writes of ``path`` interrupted by a crash left behind.

    Returns:
        How many were removed.
    """
    target = _real(path)
    removed = 0
    # Exactly the names tempfile.mkstemp gives them (8 of its letters): a checkpoint "ck.seed1"'s were
    # ".ck.*.tmp" too, and a run of "ck" removed another run's file as it wrote it (an audit).
    shape = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        if not shape.fullmatch(stale.name):
            continue
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed


def save(path: str | Path, checkpoint: Checkpoint, *, what: str = "checkpoint", private: bool = True) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, fsync, rename, fsync of the folder).

    Args:
        path: the file.
        checkpoint: what to write.
        what: the file's kind in error messages ("checkpoint", "model file"...).
        private: readable by the owner only (a checkpoint); else as the umask allows, like any
            file the process creates (a model file for others to use).

    Raises:
        CheckpointError: if the file cannot be written (its text says why).
    """
    # A stop waits for the write (a review: a second Ctrl-C during a stopped master's closing checkpoint
    # raised KeyboardInterrupt in it, and the run since the last interval's was lost).
    with signals_deferred():
        _save(path, checkpoint, what, private)


def _save(path: str | Path, checkpoint: Checkpoint, what: str, private: bool) -> None:
    target = _real(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise CheckpointError(f"cannot write the {what} {path}: {exc.strerror or exc}") from exc
    meta = dict(checkpoint.meta, format=CHECKPOINT_FORMAT)
    try:
        if not private:
            os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as stream:
            contents = {"meta": _stored_meta(meta), **checkpoint.arrays}
            _savez(stream, **contents)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise CheckpointError(f"cannot write the {what} {path}: {exc.strerror or exc}") from exc
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_folder(target.parent)


def sync_folder(folder: Path) -> None:
    """Sync a folder to disk, so that a rename in it survives a power cut (where the platform allows it)."""
    with contextlib.suppress(OSError, AttributeError):
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _umask() -> int:
    """The process's umask: from /proc where Linux gives it, else set and set back.

    (os.umask reads it only by changing it, which another thread could see.)
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def kind_of(meta: dict[str, Any]) -> str | None:
    """What an aiodq file is, by its metadata: ``"checkpoint"``, ``"model"``, ``"records"``, or None."""
    if meta.get("phase") is not None:
        return "checkpoint"
    if meta.get("kind") == MODEL_KIND:
        return "model"
    return "records" if meta.get("content") == RECORDS_CONTENT else None


def check_fresh_start(path: str | Path, *, max_bytes: int = 1 << 30) -> None:
    """Refuse to start a new run over a checkpoint that holds training still to finish, or another file.

    Absent, a finished run's checkpoint and one of a run that trained nothing are fine.

    A new run writes its first checkpoint at once: over a run that has not finished (a master
    restarted without ``--resume``) that would throw the run's progress away, and over a file
    that is not a checkpoint it would destroy that file.

    Raises:
        CheckpointError: saying which, and what to do.
    """
    if not Path(path).exists():
        return
    if Path(path).is_dir():  # (a newcomer trial: a results folder, and the advice to remove it)
        raise CheckpointError(
            f"the checkpoint {path} is a folder: give a file's path (such as {path}/run.ckpt)"
        )
    try:
        meta = load(path, max_bytes=max_bytes, arrays=False).meta
    except CheckpointError as exc:
        # Another program's file, or a damaged one: no advice to remove what may be the user's data.
        raise CheckpointError(f"{exc}; it is not overwritten: choose another checkpoint file") from None
    if (kind := kind_of(meta)) != "checkpoint":
        # A run's model or model records: advice to remove it would cost the user a trained model.
        what = {"model": "a run's model file", "records": "a records file"}.get(kind or "")
        remove = "" if what else "remove it or "
        raise CheckpointError(
            f"{path} is not the checkpoint of a run ({what or 'a model or records file?'}); it is not "
            f"overwritten: {remove}choose another checkpoint file"
        )
    stood = _stood(meta)
    untrained = stood is not None and stood[1] == 0 and not meta.get("trace")
    if meta.get("phase") != "done" and not untrained:  # (a start that failed, or no worker came)
        where = "" if stood is None else f" (epoch {stood[0]}, version {stood[1]})"
        raise CheckpointError(
            f"the checkpoint {path} holds a run that has not finished{where}: resume it (--resume), "
            "or remove the file to start afresh"
        )


def read_limit(dim: int, epochs: int, records: int = 0) -> int:
    """The most a checkpoint of a run of ``dim`` parameters and ``epochs`` epochs takes once read.

    Its arrays (at most eight float64 vectors, and ``records`` model records: :func:`records_in`)
    and its metadata (the latest errors, at most 100 texts of 1,024 characters, each at most 6
    bytes in its JSON as UTF-8, whatever ``max_reason_bytes``; the counts by code, of which only
    assigned codes have their own key; a trace line per epoch), with room.
    """
    return (64 + 8 * records) * dim + (4 << 20) + 1024 * (epochs + records)


#: The most bytes a checkpoint's model records may take once read (beyond, the checkpoint is refused).
RECORDS_READ_LIMIT = 4 << 30


def records_in(path: str | Path, dim: int) -> int:
    """How many model records the checkpoint ``path`` says it holds, for its read limit (0 if unreadable).

    From its metadata, read alone first; at most as many as :data:`RECORDS_READ_LIMIT` bytes of
    ``dim``-vectors (a review: a limit from this run's ``record_every`` refused a checkpoint resumed
    without it, and one from 2^20 records let a crafted file take terabytes).
    """
    count = _meta(path).get("records", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return 0
    return min(count, RECORDS_READ_LIMIT // (8 * max(dim, 1) + 1024))


def holds_records(path: str | Path) -> bool:
    """Whether the checkpoint ``path`` keeps its run's model records (earlier versions' kept none)."""
    return "records" in _meta(path)


def _meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata alone, read within 16 MiB; empty if it cannot be read."""
    try:
        return load(path, max_bytes=16 << 20, arrays=False).meta
    except CheckpointError:
        return {}


def check_data(
    path: str | Path, meta: dict[str, Any], fingerprint: str | None, fixed: str | None = None
) -> None:
    """Refuse to resume the checkpoint ``path`` of a run on other data, or of another model.

    ``meta`` is the checkpoint's metadata: its ``data`` is the data's fingerprint, ``fingerprint``
    this run's data's; a checkpoint that names none, or names it by another version's recipe, is not
    checked (a warning).  Its ``fixed``, where it has one, is the objective's fixed-state digest
    (:func:`~aiodq.protocol.objectives.fixed_fingerprint`: a torch module's structure, frozen
    parameters and buffers), ``fixed`` this run's: they must be equal (a newcomer trial resumed a run
    whose module had changed from Tanh to ReLU, of the same size, and trained on without a word).

    Raises:
        CheckpointError: if the two name different data, or different models.
    """
    saved_fixed = meta.get("fixed")
    if isinstance(saved_fixed, str) and fixed is not None and saved_fixed != fixed:
        raise CheckpointError(
            f"the checkpoint {path} was written by a run of another model (its fixed state {saved_fixed}, "
            f"this run's {fixed}: the module's layers, frozen parameters or buffers differ): resume it with "
            "the model it trained"
        )
    saved = meta.get("data")
    if fingerprint is None or saved == fingerprint:
        return
    if not (isinstance(saved, str) and other_data(saved, fingerprint)):
        what = "does not say what data it trained on"  # or names it by another version's recipe:
        what = f"names its data by another recipe ({saved})" if isinstance(saved, str) else what
        logging.getLogger("aiodq.master").warning("the checkpoint %s %s: not checked", path, what)
        return
    raise CheckpointError(
        f"the checkpoint {path} was written by a run on other data (fingerprint {saved}; "
        f"this run's data: {fingerprint}): resume it with the data it trained on"
    )


def resumable(path: str | Path) -> tuple[int, int] | None:
    """``(epoch, version)`` of the unfinished run the checkpoint ``path`` holds, else None (or unreadable)."""
    meta = _meta(path)
    return None if meta.get("phase") in (None, "done") else _stood(meta)


def run_of(path: str | Path) -> str | None:
    """The run id (provenance ``id``) the checkpoint ``path`` names, or None (none, or unreadable)."""
    run = _meta(path).get("run")
    return run if isinstance(run, str) else None


def finished_cleanly(path: str | Path) -> bool:
    """Whether the checkpoint ``path`` holds a run that finished all its epochs (no failure)."""
    meta = _meta(path)
    return meta.get("phase") == "done" and "failure" in meta and meta["failure"] is None


def finished_run(path: str | Path) -> bool:
    """Whether the checkpoint ``path`` holds a finished run, which ``--resume`` gives again."""
    meta = _meta(path)
    return meta.get("phase") == "done" and "failure" in meta


#: Metadata up to this many characters of JSON is stored as earlier versions stored it (they read no other).
COMPATIBLE_META_CHARS = 65_536


def _stored_meta(meta: dict[str, Any]) -> npt.NDArray[Any]:
    """The metadata as the archive's ``meta`` array.

    JSON text as a str array, which every version reads, or beyond :data:`COMPATIBLE_META_CHARS`
    as UTF-8 bytes (a str array takes four bytes a character: an audit's checkpoint grew past its
    read limit on the errors' escaped control characters).
    """
    text = json.dumps(meta)
    if len(text) <= COMPATIBLE_META_CHARS:
        return np.array(text)
    return np.array(json.dumps(meta, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _text(stored: object) -> str:
    """The metadata's JSON text: UTF-8 bytes, or (as earlier versions wrote it) a str array.

    Raises:
        ValueError: if it is neither (another program's .npz, or a damaged one: np.load gives a
            member that is no .npy as its bytes).
    """
    if not isinstance(stored, np.ndarray):
        raise ValueError("its metadata is not an .npy array")
    if stored.shape != () or stored.dtype.kind not in "SU":
        raise ValueError(f"its metadata is a {stored.dtype} array of shape {stored.shape}, not JSON text")
    value = stored.item()
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else str(value)


def _stood(meta: dict[str, Any]) -> tuple[int, int] | None:
    """``(epoch, version)`` from a checkpoint's metadata, None where it does not hold them."""
    state = meta.get("state")
    epoch, version = (state.get("epoch"), state.get("version")) if isinstance(state, dict) else (None, None)
    return (epoch, version) if isinstance(epoch, int) and isinstance(version, int) else None


def _read_error(path: str | Path) -> str:
    """Why ``path``'s bytes cannot be read (its start and its last 64 KiB, as zipfile reads), or ""."""
    try:
        with open_regular(path) as stream:
            stream.read(4)
            stream.seek(max(0, os.fstat(stream.fileno()).st_size - (1 << 16)))
            stream.read()
    except OSError as exc:
        return str(exc.strerror or exc)
    return ""


def _listed(names: list[str]) -> str:
    """An archive's member names, for a message (the first few)."""
    shown = ", ".join(repr(name) for name in names[:5])
    return (shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")) or "nothing"


#: The most members an archive may list (an aiodq file holds a few dozen).
MAX_MEMBERS = 4096


def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file (a link to one is), without blocking.

    Raises:
        OSError: if it cannot be opened, or is a folder, a device, a FIFO or a socket (a review: a
            checkpoint linked to /dev/zero read 9 GB and went on; a FIFO waited for ever).
    """
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
            raise OSError(errno.EINVAL, kind)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_text(path: str | Path, limit: int = 16 << 20) -> str:
    """A regular file's text (UTF-8), at most ``limit`` bytes of it.

    Raises:
        OSError: as :func:`open_regular` says.
        ValueError: if it is longer, or not UTF-8.
    """
    with open_regular(path) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is longer than {limit} bytes")
    return data.decode("utf-8")


def load(
    path: str | Path, *, max_bytes: int = 1 << 30, what: str = "checkpoint", arrays: bool = True
) -> Checkpoint:
    """Read a checkpoint written by :func:`save`.

    Args:
        path: the file.
        max_bytes: the most memory its members may take once read (their uncompressed sizes,
            from the archive's directory, checked before any is read).
        what: the file's kind in error messages ("checkpoint", "model file"...).
        arrays: False to read the metadata alone (``max_bytes`` then bounds it alone).

    Raises:
        CheckpointError: if the file is missing, damaged, too large, or of another format.
    """
    try:
        # Open the file here: np.load leaves its own handle open when the archive is broken.
        with open_regular(path) as stream:
            with zipfile.ZipFile(stream) as directory:
                listed = directory.infolist()
                if len(listed) > MAX_MEMBERS:  # (600,000 empty members took 685 MB to list: a review)
                    raise ValueError(f"an archive of {len(listed)} members, more than any aiodq file's")
                # (np.load's archive reads "meta" from a member named so, or "meta.npy".)
                members = [m for m in listed if arrays or m.filename in ("meta", "meta.npy")]
                size = sum(member.file_size for member in members)
            if size > max_bytes:
                raise ValueError(f"its members take {size} bytes once read, more than {max_bytes}")
            stream.seek(0)
            if (
                stream.read(4) != b"PK\x03\x04"
            ):  # (np.load then read it as a pickle's, and advised allow_pickle)
                raise ValueError("damaged: its first bytes are not an .npz archive's, whose end is")
            stream.seek(0)
            archive = np.load(stream, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with archive:
                if "meta" not in archive.files:  # another program's .npz
                    raise ValueError(
                        f"an .npz archive without aiodq's metadata (its arrays: {_listed(archive.files)})"
                    )
                meta = json.loads(_text(archive["meta"]))
                read = {name: archive[name] for name in archive.files if name != "meta"} if arrays else {}
    except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError, zipfile.BadZipFile) as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        if isinstance(exc, zipfile.BadZipFile) and (failed := _read_error(path)):
            text = failed  # (zipfile says "not a zip file" for a read that failed: an audit's EIO)
        if isinstance(exc, FileNotFoundError) and what == "checkpoint":
            # (A trial resumed a path no run had used, and read only that the file was missing.)
            text += (
                ": a run writes its checkpoint as it starts, so none has started with this path (check "
                "it), or the file was removed; to train afresh, start without resuming"
            )
        raise CheckpointError(f"cannot read the {what} {path}: {text}") from exc
    except MemoryError as exc:  # an .npy header declaring a shape far beyond its bytes
        raise CheckpointError(f"cannot read the {what} {path}: an array header declares too much") from exc
    except RecursionError as exc:  # metadata nested deeper than any checkpoint's
        raise CheckpointError(f"cannot read the {what} {path}: its metadata is nested too deeply") from exc
    except (
        NotImplementedError,
        RuntimeError,
        SyntaxError,
        ArithmeticError,
        TokenError,
        struct.error,
        zlib.error,
    ) as exc:
        # (zipfile and the .npy header parser on damaged bytes: an unknown compression or zip version, an
        # "encrypted" flag, a header that does not parse; a review's byte flips reached each)
        damaged = f"damaged ({type(exc).__name__}: {exc})"
        raise CheckpointError(f"cannot read the {what} {path}: {damaged}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"cannot read the {what} {path}: its metadata is not a JSON object")
    if meta.get("format") != CHECKPOINT_FORMAT:
        given = meta.get("format")
        newer = " (written by a newer aiodq)" if isinstance(given, int) and given > CHECKPOINT_FORMAT else ""
        raise CheckpointError(f"{path}: checkpoint format {given!r}, expected {CHECKPOINT_FORMAT}{newer}")
    return Checkpoint(read, meta)
