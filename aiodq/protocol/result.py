"""What a training run gives back: :class:`RunResult`, the trained model with the run's figures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .accounting import EpochRecord
from .algorithms import TrainConfig
from .coordinator import Coordinator

__all__ = ["STOPPED", "RunResult"]

#: The ``failure`` of a run whose master stopped training before it ended (``Master.stop_training``,
#: ``Master.close``); the command line writes why instead (``interrupted``, ``stopped by SIGTERM``).
STOPPED = "stopped before training ended"


@dataclass(frozen=True, slots=True, eq=False)
class RunResult:
    """A finished (or failed) run: the model, the trace, the traffic, staleness and errors.

    :meth:`to_json` is ``result.json``; :attr:`model` is what ``model.npz`` holds.
    """

    #: The run's hyperparameters.
    config: TrainConfig
    #: The trained model: the last snapshot x_snap, the point whose objective is the trace's
    #: last loss (after the last epoch, one more snapshot phase evaluates it; a run stopped
    #: part way gives the last one evaluated).
    model: npt.NDArray[np.float64]
    #: The master's iterate x when training stopped (for SVRG-type methods the snapshot above is
    #: the model to use; the accelerated variants' x differs from it).
    iterate: npt.NDArray[np.float64]
    #: One record per snapshot phase: F(x_snap), accuracy, bytes, time and version.
    trace: list[EpochRecord]
    #: Why the run ended without finishing its epochs (it diverged; or, for the result a
    #: stopped run's RunError carries, why it stopped), or None.
    failure: str | None
    #: Everything ``result.json`` holds (traffic, staleness, errors, provenance...).
    summary: dict[str, Any] = field(repr=False)
    #: n, the samples of the whole dataset, where the master knew it (``Master(samples=)``, an
    #: objective's ``samples``); None otherwise.
    samples: int | None = None

    @property
    def ok(self) -> bool:
        """True if every epoch ran: no failure, and the trace reaches the last epoch.

        A result taken while the run goes on (``Master.result()`` before training ended) is not
        ok, though its ``failure`` is None; one taken after the master stopped training before
        it ended has the failure :data:`STOPPED`.
        """
        return self.failure is None and bool(self.trace) and self.trace[-1].epoch >= self.config.epochs

    @property
    def missing_samples(self) -> int:
        """Samples of the whole dataset the final loss leaves out: 0 if it is over all n, or n is unknown.

        A worker that left (or was refused) before the last snapshot phase takes its shard out of
        that phase, and F is over the others' samples only (docs/security.md); :attr:`ok` does not
        say so (an API audit: a run that trained on half the data read ``ok=True``).
        """
        if self.samples is None or not self.trace:
            return 0
        return max(0, self.samples - self.trace[-1].samples)

    @property
    def final_loss(self) -> float:
        """F at the trained model (NaN if no snapshot phase finished)."""
        return self.trace[-1].loss if self.trace else math.nan

    @property
    def dim(self) -> int:
        """The number of parameters d."""
        return int(self.model.shape[0])

    @property
    def traffic(self) -> dict[str, Any]:
        """Wire bytes, messages and payload bits by direction and message type."""
        traffic: dict[str, Any] = self.summary["traffic"]
        return traffic

    @property
    def staleness(self) -> dict[str, Any]:
        """The staleness histogram of applied updates, and the gradients dropped, by reason."""
        staleness: dict[str, Any] = self.summary["staleness"]
        return staleness

    @classmethod
    def of(cls, coordinator: Coordinator, **extra: Any) -> RunResult:
        """The run as ``coordinator`` has it now.

        ``extra`` entries join the summary (the shell's wall time, say); a ``failure`` there
        is the result's too (the shell's: the run was stopped).
        """
        state = coordinator.state
        summary = {**coordinator.summary(), **extra}
        return cls(
            config=coordinator.config,
            model=np.array(state.snapshot if state.evaluated is None else state.evaluated, dtype=np.float64),
            iterate=np.array(state.x, dtype=np.float64),
            trace=list(coordinator.ledger.trace),
            failure=summary["failure"],
            summary=summary,
            samples=coordinator.guard.samples,
        )

    def to_json(self) -> dict[str, Any]:
        """The run as ``result.json`` holds it (a new dict each call)."""
        return dict(self.summary)
