"""``python -m aiodq`` and the ``aiodq`` command (its entry point is :func:`main`)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from .errors import SignalStop, stop_said


def main() -> int:
    """Run the command line (:func:`aiodq.cli.main`), taking Ctrl-C, SIGTERM and SIGHUP from the start.

    The command line's imports (numpy, the master, the data loaders) take a few tenths of a
    second, before :func:`aiodq.cli.main` runs: a Ctrl-C then printed a traceback, and one sent to a
    command started with SIGINT ignored (a background job of a shell without job control) was
    lost, and the run went on to its end (a newcomer trial); SIGTERM and SIGHUP ended it with no
    word (a review).  Here, before them, SIGINT gets Python's handler and the other two raise
    :class:`~aiodq.errors.SignalStop`, but one ignored at the start (nohup's SIGHUP), or one that
    the launcher of this worker process ignores (``AIODQ_PARENT``'s ``:nohup``), which is ignored.
    """
    main_thread = threading.current_thread() is threading.main_thread()  # (only it may set handlers)
    kept: dict[signal.Signals, Any] = {}
    if main_thread:
        if os.environ.get("AIODQ_PARENT", "").endswith(":nohup"):  # (launch/processes.parent_mark)
            kept[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(signum)
            if signum == signal.SIGINT or previous is not signal.SIG_IGN:
                handler = signal.default_int_handler if signum == signal.SIGINT else SignalStop.handler
                kept.setdefault(signum, signal.signal(signum, handler))
    try:
        try:
            from .cli import main as command_line  # noqa: PLC0415 - after the handlers
        except KeyboardInterrupt as exc:
            said, status = stop_said(exc)
            print(f"aiodq: {said}", file=sys.stderr)
            return status
        return command_line()
    finally:
        for signum, previous_handler in kept.items():
            signal.signal(signum, signal.SIG_DFL if previous_handler is None else previous_handler)


if __name__ == "__main__":
    sys.exit(main())
