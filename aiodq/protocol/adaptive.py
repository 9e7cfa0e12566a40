"""Rice coding only where it pays: the choice made from the measured pace of training.

DENSE_RICE (wire-format.md 5.8) sends the same codes as DENSE in fewer bytes and more
CPU time: it pays on a slow link and costs time on a fast one, where the cores are the
bottleneck (docs/results.md measured AsyLPG on debdesc at 0.91 ms per applied update
on 127.0.0.1 with Rice-coded messages and 0.68 ms with fixed-width ones).  The coding
is lossless, so the optimisation takes the same path either way and the only thing
the choice changes is the wall time per applied update.  :class:`CodingChooser`
measures exactly that, for each choice, and keeps the faster one.

How (with ``TrainConfig.adaptive_coding``, docs/algorithms.md 10):

- Time is cut into windows of ``window`` applied updates.  A window's pace is its
  seconds per applied update; each choice keeps the paces of its last ``history``
  windows and is judged by their median.  A probe (below) forgets the probed choice's
  older windows: it is judged by what it measures now.
- The run starts with Rice coding.  After its first window, one window tries fixed
  width; from then on the choice with the smaller median is used.  After ``explore_every``
  windows of one choice, one window tries the other again (the link or the load may have
  changed); each probe that confirms the choice doubles the wait before the next, up to
  ``max_explore_every`` windows, and a change of choice resets it.  On a tie, Rice
  coding (fewer bytes) is kept.  So a change that makes the current choice the slower
  one is followed at the next probe, at most ``max_explore_every`` windows later; one
  that slows the current choice down below the other's last measurement, at once.
- A pause that is not the coding's doing (a snapshot phase) restarts the current
  window: :meth:`CodingChooser.interrupt`.

The master applies the choice to the MODEL messages it sends; a worker of an adaptive
run answers each model in the coding the model came in (DENSE_RICE or DENSE), so one
choice governs both directions.  Sans-I/O: the caller passes the time.
"""

from __future__ import annotations

import statistics
from collections import deque

__all__ = ["CodingChooser"]


class CodingChooser:
    """Rice-coded or fixed-width codes, by measured seconds per applied update (module docstring)."""

    def __init__(
        self, *, window: int = 64, explore_every: int = 8, max_explore_every: int = 64, history: int = 3
    ) -> None:
        """Set up the measurement.

        Args:
            window: applied updates per measured window, at least 2.
            explore_every: windows of the current choice after which one window tries the
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
        #: True: Rice-code where smaller (DENSE_RICE); False: fixed width (DENSE).
        self.rice = True
        #: The last ``history`` window paces (seconds per applied update) of each choice.
        self.paces: dict[bool, deque[float]] = {True: deque(maxlen=history), False: deque(maxlen=history)}
        #: Windows measured with each choice.
        self.windows: dict[bool, int] = {True: 0, False: 0}
        #: Times the choice changed.
        self.switches = 0
        self._start: float | None = None  # when the current window's first update was applied
        self._count = 0  # updates applied in the current window after its first
        self._since = 0  # windows of the current choice since it was chosen or confirmed
        self._wait = explore_every  # windows between probes
        self._probing = False  # the current window tries the choice that is not the best

    def applied(self, now: float) -> None:
        """An update was applied at ``now`` (seconds, any origin, never decreasing)."""
        if self._start is None:
            self._start, self._count = now, 0
            return
        self._count += 1
        if self._count < self.window:
            return
        pace = max(now - self._start, 0.0) / self._count
        self.paces[self.rice].append(pace)
        self.windows[self.rice] += 1
        self._start, self._count = now, 0
        self._decide()

    def interrupt(self) -> None:
        """A pause that the coding did not cause (a snapshot phase): the current window restarts."""
        self._start = None

    def median(self, rice: bool) -> float | None:
        """The median pace (seconds per applied update) of a choice's recent windows, or None."""
        paces = self.paces[rice]
        return statistics.median(paces) if paces else None

    def summary(self) -> dict[str, object]:
        """What was chosen and measured, for a run's summary (JSON-ready)."""
        return {
            "rice": self.rice,
            "switches": self.switches,
            "windows_rice": self.windows[True],
            "windows_fixed": self.windows[False],
            "ms_per_update_rice": _ms(self.median(True)),
            "ms_per_update_fixed": _ms(self.median(False)),
        }

    def _decide(self) -> None:
        """After a window: keep the choice, change it, or try the other one for a window."""
        other = not self.rice
        if not self.paces[other]:  # the other choice was never measured: try it
            self._probing = True
            self._set(other)
            return
        best = self._best()
        if self._probing:
            self._probing = False
            # The probe confirmed the choice it interrupted: wait longer before the next one.
            self._wait = (
                self.explore_every if best == self.rice else min(2 * self._wait, self.max_explore_every)
            )
        elif best != self.rice:  # the measurements changed their mind: so does the choice
            self._wait = self.explore_every
        else:
            self._since += 1
            if self._since >= self._wait:
                # The other choice's old windows may no longer hold: the probe measures it afresh.
                self.paces[other].clear()
                self._probing, self._since = True, 0
                self._set(other)
            return
        self._since = 0
        self._set(best)

    def _best(self) -> bool:
        """The choice with the smaller median pace; Rice coding on a tie."""
        rice, fixed = self.median(True), self.median(False)
        if rice is None or fixed is None:
            return fixed is None
        return rice <= fixed

    def _set(self, rice: bool) -> None:
        if rice != self.rice:
            self.rice = rice
            self.switches += 1
            self._start = None  # messages in flight were coded the old way: measure afresh


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 4)
