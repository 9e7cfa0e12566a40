"""Rice coding only where it pays: the choice made from the measured pace of training.

DENSE_RICE (wire-format.md 5.8) sends the same codes as DENSE in fewer bytes and more
CPU time: it pays on a slow link and costs time on a fast one, where the cores are the
bottleneck (docs/results.md, "Adaptive coding": AsyLPG on debdesc, 4 workers on
127.0.0.1, took 0.83 to 1.03 ms per applied update with Rice-coded messages and 0.67 to
0.70 ms with fixed-width ones).  The coding is lossless: the values, and so the
optimisation, are the same either way, and what the choice changes is the wall time per
applied update (and, through it, which gradients arrive how stale).
:class:`CodingChooser` measures that time for each choice and keeps the faster one.

How (with ``TrainConfig.adaptive_coding``, docs/algorithms.md 10):

- Time is cut into windows of ``window`` applied updates.  A window's pace is its
  seconds per applied update; each choice keeps the paces of its last ``history``
  windows and is judged by their median.
- The run starts with Rice coding.  After its first window, one window tries fixed
  width; from then on the choice with the smaller median is used (Rice coding on a tie:
  fewer bytes).  After ``explore_every`` windows of one choice, one window probes the
  other again (the link or the load may have changed), and the probe's window replaces
  the probed choice's older ones: it is judged by what it measures now.  Each probe
  that confirms the choice doubles the wait before the next, up to
  ``max_explore_every`` windows; a change of choice resets it.  So a change that makes
  the other choice the faster is followed at the next probe, at most
  ``max_explore_every`` windows later; one that slows the current choice down past the
  other's median, as soon as its own median passes it (after at most two windows).  A
  probe is judged on its one window.
- A window counts only updates coded as chosen: after a change of choice, the updates
  whose messages were coded the old way (one per worker, in flight when it changed)
  restart the window instead of entering it.  A pause that is not the coding's doing (a
  snapshot phase) restarts it too (:meth:`CodingChooser.interrupt`), and so does a
  clock that goes backwards.  A change in the number of workers changes the pace of
  both choices: everything measured is forgotten (:meth:`CodingChooser.forget`).

The master applies the choice to the MODEL messages it sends; a worker of an adaptive
run answers each model in the coding the model came in (DENSE_RICE, or its gradient's
sparse form where smaller, after a DENSE_RICE model; DENSE after a DENSE one), so one
choice governs both directions.  Sans-I/O: the caller passes the time.
"""

from __future__ import annotations

import statistics
from collections import deque

from ..codec.registry import Encoding

__all__ = ["CodingChooser", "answer_coding"]


def answer_coding(model_encoding: Encoding | None, rice: bool) -> bool:
    """Whether a worker of an adaptive run answers Rice-coded, after a MODEL in ``model_encoding``.

    A MODEL as DENSE_RICE or DENSE sets the answer's coding; any other (or none) leaves ``rice``,
    the coding it answered in before.  The worker applies this rule, and the master applies it
    too, to know how each answer will be coded.
    """
    if model_encoding in (Encoding.DENSE, Encoding.DENSE_RICE):
        return model_encoding is Encoding.DENSE_RICE
    return rice


class CodingChooser:
    """Rice-coded or fixed-width codes, by measured seconds per applied update (module docstring)."""

    def __init__(
        self, *, window: int = 64, explore_every: int = 8, max_explore_every: int = 64, history: int = 3
    ) -> None:
        """Set up the measurement.

        Args:
            window: applied updates per measured window, at least 2.
            explore_every: windows of the current choice after which one window probes the
                other, at least 1.
            max_explore_every: the longest wait between probes, at least ``explore_every``.
            history: windows per choice whose median judges it, at least 1.

        Raises:
            ValueError: for a parameter out of range.
        """
        for name, value, least in (
            ("window", window, 2),
            ("explore_every", explore_every, 1),
            ("max_explore_every", max_explore_every, explore_every),
            ("history", history, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}")
        self.window, self.explore_every, self.max_explore_every = window, explore_every, max_explore_every
        self._history = history
        #: The coding to send with now: True for Rice coding where smaller (DENSE_RICE), False
        #: for fixed width (DENSE).  During a probe, the probed one (see :attr:`preferred`).
        self.rice = True
        #: The last ``history`` window paces (seconds per applied update) of each choice.
        self.paces: dict[bool, deque[float]] = {True: deque(maxlen=history), False: deque(maxlen=history)}
        #: Windows measured with each choice.
        self.windows: dict[bool, int] = {True: 0, False: 0}
        #: Times the coding sent with changed (a probe and its end count two).
        self.switches = 0
        #: Calls of :meth:`interrupt`.
        self.interruptions = 0
        #: Calls of :meth:`forget`.
        self.forgotten = 0
        self._workers: int | None = None  # the number of workers the windows were measured with
        self._start: float | None = None  # when the current window's first update was applied
        self._last: float | None = None  # when the last update was applied
        self._count = 0  # updates applied in the current window after its first
        self._since = 0  # windows of the current choice since it was chosen or confirmed
        self._wait = explore_every  # windows between probes
        self._probing = False  # the current window probes the choice that is not preferred

    @property
    def preferred(self) -> bool:
        """The choice the measurements favour: the one in use, except during a probe.

        Rice coding until both choices have been measured (so also while fixed width is first
        tried).
        """
        return self._best()

    def applied(self, now: float, *, rice: bool | None = None, workers: int | None = None) -> None:
        """An update was applied at ``now`` (seconds, any origin).

        ``rice`` says how the messages of this update were coded (None: as chosen now); an
        update coded otherwise, in flight when the choice changed, restarts the window.
        ``workers``, the number of workers now (None: not known), sets the pace too: when it
        changes, what was measured before no longer holds and is forgotten (:meth:`forget`).
        """
        if workers is not None and workers != self._workers:
            if self._workers is not None:
                self.forget()
            self._workers = workers
        backwards, self._last = self._last is not None and now < self._last, now
        if rice is not None and rice != self.rice:
            self._start = None  # the window starts at the next update coded as chosen
            return
        if self._start is None or backwards:
            self._start, self._count = now, 0
            return
        self._count += 1
        if self._count < self.window:
            return
        elapsed, self._start, self._count = now - self._start, now, 0
        if elapsed <= 0.0:  # a clock too coarse to see the window: nothing measured
            return
        pace = elapsed / self.window
        if self._probing:  # what the probed choice measures now replaces its older windows
            self.paces[self.rice] = deque([pace], maxlen=self._history)
        else:
            self.paces[self.rice].append(pace)
        self.windows[self.rice] += 1
        self._decide()

    def forget(self) -> None:
        """Start measuring afresh (the number of workers changed): both choices' windows are dropped.

        The current choice stays; after its next window, the other is tried again.
        """
        for paces in self.paces.values():
            paces.clear()
        self._start, self._since, self._wait, self._probing = None, 0, self.explore_every, False
        self.forgotten += 1

    def interrupt(self) -> None:
        """A pause that the coding did not cause (a snapshot phase): the current window restarts."""
        self._start = None
        self.interruptions += 1

    def median(self, rice: bool) -> float | None:
        """The median pace (seconds per applied update) of a choice's recent windows, or None."""
        paces = self.paces[rice]
        return statistics.median(paces) if paces else None

    def summary(self) -> dict[str, object]:
        """What was chosen and measured, for a run's summary (JSON-ready)."""
        return {
            "rice": self.preferred,
            "probing": self._probing,
            "switches": self.switches,
            "windows_rice": self.windows[True],
            "windows_fixed": self.windows[False],
            "interruptions": self.interruptions,
            "forgotten": self.forgotten,
            "ms_per_update_rice": _ms(self.median(True)),
            "ms_per_update_fixed": _ms(self.median(False)),
        }

    def _decide(self) -> None:
        """After a window: keep the choice, change it, or probe the other one for a window."""
        other = not self.rice
        if not self.paces[other]:  # the other choice was never measured: try it (not a probe)
            self._set(other)
            return
        best = self._best()
        if self._probing:
            self._probing = False
            # The probed choice won: back to the shortest wait; it lost: wait longer next time.
            won = best == self.rice
            self._wait = self.explore_every if won else min(2 * self._wait, self.max_explore_every)
        elif best != self.rice:  # the measurements changed their mind: so does the choice
            self._wait = self.explore_every
        else:
            self._since += 1
            if self._since >= self._wait:
                self._probing, self._since = True, 0
                self._set(other)
            return
        self._since = 0
        self._set(best)

    def _best(self) -> bool:
        """The choice with the smaller median pace; Rice coding on a tie or before both are measured."""
        rice, fixed = self.median(True), self.median(False)
        if rice is None or fixed is None:
            return fixed is None
        return rice <= fixed

    def _set(self, rice: bool) -> None:
        if rice != self.rice:
            self.rice = rice
            self.switches += 1
            self._start = None  # updates in flight were coded the old way: measure afresh


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 4)
