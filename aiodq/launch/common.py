"""What both launchers share: the live display, a finished run's result handed over, the checkpoint note.

The live display of a run's progress; the hand-over of a finished run's result to the launcher's
``finished`` hook (with the stop signals deferred); and the note that says where a stopped run's
checkpoint holds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DataError, RunError, UsageError
from ..net.master import Master
from ..net.signals import signals_deferred
from ..protocol.dataset import Dataset
from ..protocol.result import RunResult

__all__ = [
    "Handover",
    "as_it_stood",
    "check_run_arguments",
    "check_shares",
    "checkpoint_note",
    "live_display",
    "load_data_or_fail",
    "print_out",
    "progress_state",
    "progress_table",
    "signals_deferred",
    "stdout_gone",
]


def print_out(text: str, command: str) -> None:
    """Print ``text`` on stdout, flushed; if stdout cannot be written, go on without it (stdout_gone)."""
    try:
        print(text, flush=True)
    except OSError as exc:
        stdout_gone(exc, command)


def stdout_gone(exc: OSError, command: str) -> None:
    """Go on without stdout: the run does not end, nor fail, because nobody reads what it prints.

    An operator's audit: ``aiodq master ... | head -1`` (the address, as usage.md suggests) ended a run
    that trained with status 1 and no word at its end, and ``> /dev/full`` failed it as "cannot listen".
    stdout then points at devnull, as Python's docs advise for SIGPIPE; an error other than a reader
    gone (a full disk) is said once on stderr.
    """
    if not isinstance(exc, BrokenPipeError):
        said = f"cannot write stdout ({exc.strerror or exc}); going on without it"
        with contextlib.suppress(OSError):  # (a review: > /dev/full 2>&1 failed the start again)
            print(f"aiodq {command}: {said}", file=sys.stderr)
    with contextlib.suppress(OSError, ValueError, AttributeError):  # (a stdout with no descriptor: captured)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class Handover:
    """A master's result, handed to a launcher's ``finished`` hook once, as training ends."""

    def __init__(
        self,
        master: Master,
        figures: Callable[[RunResult], None],
        finished: Callable[[RunResult], None] | None,
    ) -> None:
        self._master, self._figures, self._finished = master, figures, finished
        self._result: RunResult | None = None

    def current(self) -> RunResult:
        """The master's result now, with the launcher's ``figures`` added to its summary."""
        result = self._master.result()
        self._figures(result)
        return result

    def __call__(self, result: RunResult | None = None) -> RunResult:
        """The result as training ended, handed to ``finished`` the first time (call once it has).

        ``result``: the master's result, if at hand (else it is asked for it).
        """
        if self._result is None:
            # A stop waits for the hand-over: the hook writes the results (aiodq run), and a second
            # Ctrl-C that came before it had written them lost them (a durability attack).
            with signals_deferred():
                if result is None:
                    self._result = self.current()
                else:
                    self._figures(result)
                    self._result = result
                if self._finished is not None:
                    self._finished(self._result)
        return self._result

    def if_trained(self) -> None:
        """On the way out (a stop, say): hand the result over if training had ended meanwhile."""
        coordinator = self._master.coordinator
        if self._result is None and coordinator is not None and coordinator.done:
            with contextlib.suppress(Exception):
                self()


def as_it_stood(result: RunResult, failure: str) -> RunResult | None:
    """A run stopped before training ended, as it stood: ``result`` with ``failure`` (in its summary too).

    None if no snapshot phase had ended: no model had been evaluated yet.
    """
    if not result.trace:
        return None
    result.summary["failure"] = failure
    return dataclasses.replace(result, failure=failure)


def checkpoint_note(checkpoint: str | Path | None, stood: tuple[int, int] | None) -> str:
    """What to add to a stopped run's error: where its checkpoint holds it (empty if it holds nothing)."""
    if checkpoint is None or stood is None:
        return ""
    epoch, version = stood
    return (
        f"; the checkpoint {checkpoint} holds the run as it stood (epoch {epoch}, version {version}): "
        "resume it to continue (the same options with --resume; resume=True from Python)"
    )


def progress_state(master: Master | None) -> dict[str, Any]:
    """What the live display shows of a master (None: not started yet).

    Whether training is over and the last 8 epochs' records and, once the master has started,
    ``version``, ``bits`` (both directions so far) and ``elapsed`` seconds.
    """
    state: dict[str, Any] = {"done": False, "trace": []}
    if master is not None and master.coordinator is not None:
        coordinator = master.coordinator
        state.update(
            done=coordinator.done,
            trace=list(coordinator.trace[-8:]),
            version=coordinator.state.version,
            bits=8 * coordinator.traffic().total(),
            elapsed=master.elapsed,
        )
    return state


def progress_table(title: str, state: dict[str, Any]) -> Any:
    """The live display of a :func:`progress_state`: the last epochs and the run's figures so far."""
    from rich.table import Table  # noqa: PLC0415 - only the live display needs rich

    view = Table(title=title, expand=False)
    for column in ("epoch", "loss", "accuracy", "Mbit so far", "updates/s"):
        view.add_column(column, justify="right")
    for record in state["trace"]:
        view.add_row(
            str(record.epoch),
            f"{record.loss:.6f}",
            f"{record.accuracy:.4f}",
            f"{8 * record.bytes_total / 1e6:.3f}",
            f"{record.version / max(record.time, 1e-9):.0f}",
        )
    if "version" in state:
        elapsed = max(state["elapsed"], 1e-9)
        view.caption = (
            f"version {state['version']}, {state['bits'] / 1e6:.3f} Mbit, "
            f"{state['version'] / elapsed:.0f} updates/s, {elapsed:.1f} s"
        )
    else:
        view.caption = "starting"
    return view


def check_run_arguments(workers: object, timeout: object, max_restarts: object) -> None:
    """Refuse, before anything starts, what ``aiodq run`` refuses of the same options.

    (A docs review: ``workers='2'`` raised a TypeError from a comparison, ``timeout=0`` started the
    workers and then timed out.)

    Raises:
        ValueError: for ``workers`` or ``max_restarts`` not an integer (1 or more, 0 or more), or a
            ``timeout`` not a positive number of seconds.
    """
    for name, value, least in (("workers", workers, 1), ("max_restarts", max_restarts, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < least:
            raise ValueError(f"{name} must be an integer, {least} or more, got {value!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not float(timeout) > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")


def check_shares(samples: int, workers: int) -> None:
    """Raise UsageError, before any worker starts, if ``samples`` cannot give each of ``workers`` one."""
    if samples < workers:
        raise UsageError(f"{samples} samples cannot be shared by {workers} workers")


@contextlib.contextmanager
def live_display(table: Callable[[], Any], show: bool) -> Any:
    """Rich's live display of ``table()`` on stderr, or nothing."""
    if not show:
        yield None
        return
    from rich.console import Console  # noqa: PLC0415 - only the live display needs rich
    from rich.live import Live  # noqa: PLC0415

    console = Console(stderr=True, markup=False, emoji=False, highlight=False)  # (text as it is)
    with Live(table(), console=console, refresh_per_second=4, transient=False) as live:
        yield live
    if not console.is_terminal:  # rich leaves the last line open there: what follows would join it
        console.line()


def load_data_or_fail(path: str | None) -> Dataset:
    """Load a dataset, turning a bad file into :class:`RunError`."""
    from ..data import load_dataset  # noqa: PLC0415 - scipy, not for the commands that read no data (demo)

    try:
        return load_dataset(path)
    except DataError as exc:
        raise RunError(str(exc)) from exc
