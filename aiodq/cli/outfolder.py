"""What ``aiodq run`` and ``aiodq master`` leave in ``--out`` around a run: whose log is where.

- The log in ``--out`` ends with that of the results there.  A run started where a finished
  run's results are appends its log to ``aiodq.log.new``: it becomes ``aiodq.log`` only once the
  run's results replace the finished ones (:func:`results_written`).  A run that fails or is
  stopped leaves the finished results and their ``aiodq.log`` as they were
  (``finish.kept_instead``), and its own log at the end of ``aiodq.log.new``, after those of
  the runs that failed there before it: none is lost, and each run's part begins with its
  command line.  A run started where no finished run's results are appends to ``aiodq.log`` (the
  log of the results there, a stopped run's, stays before it), and a resumed run does so from the
  start (:func:`log_for`).  Results replaced are moved aside to NAME.earlier (or .earlier.N), their
  log too (``finish.write_results_line``, :func:`results_written`).
- A start that its checkpoint refuses leaves the folder as it found it: what the command made
  (its log, the folders, the checkpoint's lock file) is removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import ClassVar

from ..errors import CheckpointError, UsageError
from ..launch.common import signals_deferred
from ..launch.results import RESULT_FILES, free_suffix, provenance_of, same_run
from ..net import checkpoint as checkpoint_file
from ..net.checkpoint import lock_path

__all__ = [
    "LOG",
    "NEW_LOG",
    "checkpoint_beside_results",
    "found",
    "hold",
    "holds_finished_run",
    "keep",
    "log_for",
    "release",
    "replaces_log",
    "results_written",
    "signals_deferred",
    "undo_refused_start",
]

#: The log of the results in ``--out``, and a run's log while finished results are there.
LOG, NEW_LOG = "aiodq.log", "aiodq.log.new"


class _Pending:
    """The command's log while it is :data:`NEW_LOG` (one command per process)."""

    path: Path | None = None


class _Held:
    """The ``--out`` folder's descriptor this command holds locked, and its other locks (:func:`keep`)."""

    descriptor: int | None = None
    locks: ClassVar[list[checkpoint_file.Lock]] = []


def hold(out: Path) -> None:
    """Lock the folder ``out`` for this command: an advisory ``flock`` on the folder itself, no file.

    Two runs writing into one folder spliced their logs line by line, and each wrote the other's
    results over its own (a newcomer trial); the second is now refused.  :func:`release` (or the
    process's end, however it ends) lets the folder go.  Where ``fcntl`` is missing it does nothing.

    A folder that cannot be locked otherwise (a file system without ``flock``: NFS) is used unlocked,
    with a warning.

    Raises:
        UsageError: if another command holds it.
    """
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:
        return
    release()
    try:
        descriptor = os.open(out, os.O_RDONLY)
    except OSError as exc:  # (a folder that can be written but not read, say)
        _unlocked(out, exc)
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(descriptor)
        if isinstance(exc, BlockingIOError):
            raise UsageError(f"--out {out} is in use by another run: give another folder") from None
        # (NFS emulates flock with byte-range locks, which a folder opened read-only cannot take)
        _unlocked(out, exc)
        return
    _Held.descriptor = descriptor


def _unlocked(out: Path, exc: OSError) -> None:
    """Say that ``out`` is used without the lock (before any log is set up: on stderr)."""
    print(
        f"aiodq: --out {out} cannot be locked ({exc.strerror or exc}); another run could use it too",
        file=sys.stderr,
    )


def release() -> None:
    """Let go of the folder :func:`hold` locked, if any, and of the locks :func:`keep` holds."""
    if _Held.descriptor is not None:
        os.close(_Held.descriptor)
        _Held.descriptor = None
    while _Held.locks:
        _Held.locks.pop().release()


def keep(held: checkpoint_file.Lock) -> None:
    """Hold ``held`` (``aiodq master --records``'s lock) until the command ends (:func:`release`)."""
    _Held.locks.append(held)


def holds_finished_run(out: Path) -> bool:
    """Whether ``out`` holds the results of a run that finished: result.json with no failure, and its model.

    (A result.json alone, its model.npz never written on a full disk, say, is no finished run's results;
    nor is one beside another run's model.npz, as a process killed between the two renames left.)
    """
    try:
        summary = json.loads(checkpoint_file.read_text(out / RESULT_FILES[0]))
        model = out / RESULT_FILES[1]
        if summary.get("failure", 0) is not None or not model.is_file():
            return False
        # (None: a model.npz of a version that wrote no provenance in it; one that cannot be read is none.)
        theirs = checkpoint_file.load(model, max_bytes=16 << 20, arrays=False, what="model file").meta.get(
            "provenance"
        )
        return theirs is None or same_run(theirs, summary.get("provenance"))
    except (OSError, ValueError, AttributeError, RecursionError, CheckpointError):
        return False


def checkpoint_beside_results(checkpoint: str | None, out: Path, resume: bool) -> str:
    """Keep a finished run's results whatever this start does with its checkpoint; return what was done.

    A durability audit lost them two ways:

    - ``--resume`` of a checkpoint still holding the run part way while ``out`` holds that run's finished
      results (its last checkpoint could not be written: a full disk) trained it again and replaced
      them.  Refused: they are the run's.
    - A start afresh over the checkpoint of a run that finished (all its epochs, no failure) whose
      results ``out`` does not hold (killed between the two) overwrote the only copy.  The checkpoint
      (the file a link names) is moved aside, ``FILE.earlier`` (``.earlier.N``), unless another run
      holds it, and the line returned says so.  One whose results went to another ``--out`` is moved
      aside too: that copy is the user's to remove.

    Raises:
        CheckpointError: for the first, or a checkpoint that cannot be moved aside.
    """
    if checkpoint is None or not os.path.isfile(checkpoint):
        return ""
    run = checkpoint_file.run_of(checkpoint)
    theirs = provenance_of(out / RESULT_FILES[0])
    ours = run is not None and holds_finished_run(out) and same_run({"id": run}, theirs)
    if resume and ours and (stood := checkpoint_file.resumable(checkpoint)) is not None:
        raise CheckpointError(
            f"--out {out} holds this run's finished results, and the checkpoint {checkpoint} the run at "
            f"epoch {stood[0]} (its last write failed): --resume would train it again over them; remove the "
            "checkpoint (or move the results) first"
        )
    if resume or ours or not checkpoint_file.finished_cleanly(checkpoint):
        return ""
    path = Path(os.path.realpath(checkpoint))  # (the file a link names: saves follow links too)
    try:
        held = checkpoint_file.lock(path)  # (one in use is not moved: the master's start refuses it)
    except CheckpointError:
        return ""
    try:
        aside = path.with_name(path.name + free_suffix(path.parent, [path.name]))
        os.replace(path, aside)
    except OSError as exc:
        raise CheckpointError(
            f"the checkpoint {checkpoint} holds a finished run whose results are not in --out {out}, and it "
            f"cannot be moved aside: {exc.strerror or exc}"
        ) from None
    finally:
        held.release()
    return (
        f"moved the checkpoint {checkpoint} of a finished run whose results are not in --out {out} aside to "
        f"{aside} (--checkpoint {aside} --resume gives them)"
    )


def log_for(out: Path, resume: bool = False, checkpoint: str | None = None) -> Path:
    """The log a run started now writes into ``out``: :data:`NEW_LOG` where a finished run's results are.

    Not for a ``resume`` of the run whose results they are: its log goes on from the interrupted
    run's (a crash-recovery trial: a finished run killed as its results were written, resumed to get
    them back, and its log replaced by the resume's three lines).  Another run's (its id is not the
    one the ``checkpoint`` keeps) keep their log, as for a new run (an audit: a resume appended to it).
    """
    finished = holds_finished_run(out)
    if finished and resume:  # (either id unknown, an earlier version's files: the run's own, as before)
        theirs = provenance_of(out / RESULT_FILES[0])
        ours = None if checkpoint is None else _run_id(checkpoint)
        finished = isinstance(theirs, dict) and isinstance(ours, str) and theirs.get("id") not in (None, ours)
    _Pending.path = out / NEW_LOG if finished else None
    return _Pending.path or out / LOG


def _run_id(checkpoint: str) -> object:
    """The run id a checkpoint keeps (``meta["run"]``), None if it keeps none or cannot be read."""
    with contextlib.suppress(CheckpointError):
        return checkpoint_file.load(checkpoint, max_bytes=16 << 20, arrays=False).meta.get("run")
    return None


def replaces_log(out: Path) -> bool:
    """Whether :func:`results_written` will move ``out``'s log aside (the finished results' log)."""
    return _Pending.path is not None and (out / LOG).exists()


def results_written(out: Path, suffix: str | None = None) -> Path:
    """The run's results are now ``out``'s: its log becomes :data:`LOG` if it was :data:`NEW_LOG`.

    Returns where the run's log is (the log handler follows the rename: it keeps the file open).
    """
    pending, _Pending.path = _Pending.path, None
    if pending is not None:
        try:
            if (out / LOG).exists():  # the replaced results' log, beside them (finish.write_results_line)
                free = suffix is not None and not os.path.lexists(out / (LOG + suffix))
                (out / LOG).replace(out / (LOG + (suffix if free and suffix else free_suffix(out, [LOG]))))
            pending.replace(out / LOG)
        except OSError:
            return pending
    return out / LOG


def found(log: Path | None, checkpoint: str | None, *more: str | None) -> list[Path]:
    """What a start may create that is not there yet, deepest first.

    The run's ``log`` in ``--out``, the checkpoint's lock file, ``more``, and their missing folders.
    """
    paths = [log, checkpoint and lock_path(checkpoint), *more]
    missing: set[Path] = set()
    for path in paths:
        place = Path(os.path.abspath(path)) if path is not None else None
        while place is not None and not place.exists() and place != place.parent:
            missing.add(place)
            place = place.parent
    return sorted(missing, key=lambda place: len(place.parts), reverse=True)


def undo_refused_start(missing: list[Path]) -> None:
    """After a start refused before training (its checkpoint): what :func:`found` listed, removed.

    The log handlers of ``aiodq`` writing there are closed first; folders go only if empty.  A log
    that was there before is not listed: it is only appended to, and kept.
    """
    logs = {Path(os.path.realpath(place)) for place in missing}
    logger = logging.getLogger("aiodq")
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler) and Path(os.path.realpath(handler.baseFilename)) in logs:
            logger.removeHandler(handler)
            with contextlib.suppress(OSError):  # (its flush, on a full disk: an operator trial's traceback)
                handler.close()
    for place in missing:
        with contextlib.suppress(OSError):
            place.rmdir() if place.is_dir() else place.unlink()
