"""The commands' logging: what they say on stderr, into aiodq.log, and the records held until it opens."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError
from ..version import __version__

__all__ = ["SAID", "add_logfile", "held_logs", "log_start", "say", "setup_logging", "tell"]

_FORMAT = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")


#: What a command prints on stderr is logged here too, so that aiodq.log says how the run ended
#: (the console handler leaves these records out: they are printed already).
SAID = logging.getLogger("aiodq.cli")
SAID.addHandler(logging.NullHandler())  # no log set up (yet): not Python's last-resort stderr handler


def say(command: str, message: str, *, level: int = logging.ERROR) -> None:
    """Print ``aiodq COMMAND: MESSAGE`` on stderr; the log file gets it too, at ``level``.

    Logged first, and a stderr that cannot be written is passed over (a review: ``2>&1 | head -1`` lost
    a failed run's verdict from its log, and the status became 141).
    """
    SAID.log(level, "aiodq %s: %s", command, message)
    tell(f"aiodq {command}: {message}")


def tell(text: str) -> None:
    """Print ``text`` on stderr, if stderr can be written (a reader gone, a full disk: passed over)."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr)


def log_start(argv: list[str]) -> None:
    """Open the log file's record of a run: the command line and the version."""
    SAID.info("aiodq %s (version %s)", shlex.join(argv), __version__)


def _not_said(record: logging.LogRecord) -> bool:
    return record.name != SAID.name


def setup_logging(stderr_level: int, logfile: Path | None = None, *, append: bool = False) -> None:
    """Log aiodq's records to stderr at ``stderr_level`` and, if given, everything to ``logfile``."""
    logger = logging.getLogger("aiodq")
    logger.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(stderr_level)
    console.setFormatter(_FORMAT)
    console.addFilter(_not_said)
    logger.addHandler(console)
    if logfile is not None:
        add_logfile(logfile, append=append)


class _Holding(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held_logs() -> Iterator[list[logging.LogRecord]]:
    """Keep aiodq's INFO records of the block, for the log configured after it.

    (Bad options must not truncate a previous run's aiodq.log: it is opened once they are checked.)
    """
    handler = _Holding()
    held = handler.records
    logger = logging.getLogger("aiodq")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield held
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _LogFile(logging.FileHandler):
    """aiodq.log: records it cannot write (a full disk) are said once on stderr, not as a traceback each."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # (a log call's own mistake: logging's report, as usual)
            super().handleError(record)
        elif not self.failed:
            self.failed = True
            why = getattr(error, "strerror", None) or error
            tell(f"aiodq: cannot write the log {self.baseFilename}: {why}; it may lack what follows")


def add_logfile(logfile: Path, *, append: bool = False) -> None:
    """Also log everything to ``logfile`` (its folder exists and is writable: :func:`_output_folder`).

    ``append``: after what it holds (a run with a checkpoint: its log goes on from an interrupted
    session's, and a start that its checkpoint refuses leaves that log whole); else from empty.
    """
    try:
        handler = _LogFile(logfile, mode="a" if append else "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the log {logfile}: {exc.strerror or exc}") from exc
    handler.setFormatter(_FORMAT)
    logging.getLogger("aiodq").addHandler(handler)
