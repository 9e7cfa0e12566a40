"""A block that a stop (Ctrl-C, SIGTERM, SIGHUP) waits for: a file written whole, then the stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["signals_deferred"]


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A stop (Ctrl-C, SIGTERM, SIGHUP) waits until the block is done: a result handed over, or written.

    Each file is written whole or not at all, but a second Ctrl-C as the results were being
    written cost the run its model (a durability attack: 8 of 8 times); now it comes after them.
    The three signals' handlers are swapped, process-wide, for one that notes them (blocking them
    in this thread would not do: numpy's BLAS threads take them), then put back, and a signal that
    came is acted on once, as its handler would (:func:`_deliver`).  Only the main thread can do
    this; elsewhere the block runs as it is.
    """
    stops = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers: dict[int, Any] = {}
    try:
        # One by one, each put back however the swap ends (a review: a SIGTERM between two swaps, raised
        # there, left the noting handler in place of Ctrl-C's).  A handler installed from C (None: a host
        # program's) cannot be put back: that signal is left alone (a review: a TypeError at the restore).
        for stop in stops:
            if signal.getsignal(stop) is not None:
                handlers[stop] = signal.signal(stop, lambda signum, frame: noted.append(signum))
        yield
    finally:
        raised = _put_back(handlers)
        # Each noted signal once, Ctrl-C's last (it raises); one whose handler raises does not keep the
        # others from theirs (a review); the first exception is raised once all are done.
        for came in sorted(dict.fromkeys(noted), key=lambda signum: signum == signal.SIGINT):
            try:
                _deliver(came, handlers[came])
            except BaseException as exc:
                raised = raised or exc
        if raised is not None:
            raise raised


def _put_back(handlers: dict[int, Any]) -> BaseException | None:
    """Restore every handler; return what a handler raised meanwhile (None: nothing).

    SIGINT's goes back last: until then a Ctrl-C is noted, not raised.  ``signal.signal`` runs a pending
    handler first, and a review found a KeyboardInterrupt raised there, and a user's SIGTERM handler's
    SystemExit, leaving the others' noting handlers in place for good: the restore is retried (it is
    idempotent) until every handler is back.
    """
    raised: BaseException | None = None
    order = sorted(handlers, key=lambda signum: signum == signal.SIGINT)
    while True:
        try:
            for stop in order:
                if signal.getsignal(stop) is not handlers[stop]:
                    signal.signal(stop, handlers[stop])
            return raised
        except BaseException as exc:
            raised = raised or exc


def _deliver(signum: int, handler: Any) -> None:
    """Act on a signal that came during the block, once, as its own handler would.

    A Python handler is called (the loop of ``add_signal_handler`` was already told, through its wakeup
    descriptor: raising the signal again ran its handler twice, a review found); the default action is
    taken by raising the signal again; an ignored one is dropped.
    """
    if callable(handler):
        handler(signum, None)  # (Python's own SIGINT handler raises KeyboardInterrupt: the stop, now)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)
