"""What ``aiodq run`` and ``aiodq master`` leave in ``--out`` around a start: its log, kept or undone.

- A new run in a folder that holds a finished run's results first moves that run's ``aiodq.log``
  to ``aiodq.log.1`` (replacing an older one): if the new run does not finish, the finished
  results are kept (``commands._kept_instead``) and so is their log.
- A start that its checkpoint refuses leaves the folder as it found it: what the command made
  (the log, the folders, the checkpoint's lock file) is removed, and a log set aside goes back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from ..errors import UsageError
from ..launch.results import RESULT_FILES
from ..net.checkpoint import lock_path

__all__ = [
    "EARLIER_LOG",
    "LOG",
    "found",
    "holds_finished_run",
    "set_aside_finished_log",
    "undo_refused_start",
]

#: The run's log in ``--out``, and where a finished run's log goes when another run starts there.
LOG, EARLIER_LOG = "aiodq.log", "aiodq.log.1"


def holds_finished_run(out: Path) -> bool:
    """Whether ``out`` holds the results of a run that finished (result.json with no failure)."""
    try:
        return json.loads((out / RESULT_FILES[0]).read_text(encoding="utf-8")).get("failure", 0) is None
    except (OSError, ValueError, AttributeError):
        return False


def set_aside_finished_log(out: Path) -> bool:
    """Move a finished run's aiodq.log to aiodq.log.1 before a new run opens its own; True if moved.

    Raises:
        UsageError: if it cannot be moved (the new run would overwrite it).
    """
    log = out / LOG
    if not (log.exists() and holds_finished_run(out)):
        return False
    try:
        log.replace(out / EARLIER_LOG)
    except OSError as exc:
        raise UsageError(
            f"cannot keep the finished run's log as {out / EARLIER_LOG}: {exc.strerror or exc}"
        ) from exc
    return True


def found(out: str | None, checkpoint: str | None, *more: str | None) -> list[Path]:
    """What a start may create that is not there yet, deepest first.

    ``out``'s aiodq.log, the checkpoint's lock file, ``more``, and their missing folders.
    """
    paths = [None if out is None else Path(out) / LOG, checkpoint and lock_path(checkpoint), *more]
    missing: set[Path] = set()
    for path in paths:
        place = Path(os.path.abspath(path)) if path is not None else None
        while place is not None and not place.exists() and place != place.parent:
            missing.add(place)
            place = place.parent
    return sorted(missing, key=lambda place: len(place.parts), reverse=True)


def undo_refused_start(missing: list[Path], set_aside: Path | None = None) -> None:
    """After a start refused before training (its checkpoint): what :func:`found` listed, removed.

    The log handlers of ``aiodq`` writing there are closed first; folders go only if empty.  A log
    that was there before is not listed: it is only appended to, and kept.  ``set_aside``: the
    ``--out`` whose finished run's log :func:`set_aside_finished_log` moved, moved back.
    """
    logs = {Path(os.path.realpath(place)) for place in missing}
    if set_aside is not None:
        logs.add(Path(os.path.realpath(set_aside / LOG)))
    logger = logging.getLogger("aiodq")
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler) and Path(os.path.realpath(handler.baseFilename)) in logs:
            logger.removeHandler(handler)
            handler.close()
    if set_aside is not None:
        with contextlib.suppress(OSError):
            (set_aside / EARLIER_LOG).replace(set_aside / LOG)
    for place in missing:
        with contextlib.suppress(OSError):
            place.rmdir() if place.is_dir() else place.unlink()
