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
    came is raised again.  Only the main thread can do this; elsewhere the block runs as it is.
    """
    stops = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers: dict[int, Any] = {}
    try:
        # One by one, each put back however the swap ends (a review: a SIGTERM between two swaps, raised
        # there, left the noting handler in place of Ctrl-C's).
        for stop in stops:
            handlers[stop] = signal.signal(stop, lambda signum, frame: noted.append(signum))
        yield
    finally:
        for stop, handler in handlers.items():
            signal.signal(stop, handler)
        for came in dict.fromkeys(noted):  # each once; Ctrl-C's last, since it raises
            if came != signal.SIGINT:
                signal.raise_signal(came)  # (the handler put back acts on it: the loop's, or the default)
        if signal.SIGINT in noted and callable(interrupt := handlers[signal.SIGINT]):
            interrupt(signal.SIGINT, None)  # (Python's own raises KeyboardInterrupt: the stop, now)
