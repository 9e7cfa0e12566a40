"""``python -m aiodq`` and the ``aiodq`` command (its entry point is :func:`main`)."""

from __future__ import annotations

import signal
import sys
import threading


def main() -> int:
    """Run the command line (:func:`aiodq.cli.main`), taking Ctrl-C from the start.

    The command line's imports (numpy, the master, the data loaders) take a few tenths of a
    second, before :func:`aiodq.cli.main` runs: a Ctrl-C then printed a traceback, and one sent to a
    command started with SIGINT ignored (a background job of a shell without job control) was
    lost, and the run went on to its end (a newcomer trial).  Here, before them, SIGINT gets
    Python's handler, and an interrupt during them ends the command with status 130.
    """
    main_thread = threading.current_thread() is threading.main_thread()  # (only it may set handlers)
    ignored = main_thread and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        try:
            from .cli import main as command_line  # noqa: PLC0415 - after the handler
        except KeyboardInterrupt:
            print("aiodq: interrupted", file=sys.stderr)
            return 130
        return command_line()
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
