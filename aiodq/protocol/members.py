"""What the coordinator knows about the run and each of its connections (sans I/O)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from enum import Enum

from ..codec.events import SnapshotGradient
from ..codec.registry import Encoding
from .adaptive import answer_coding
from .connection import MasterConnection

__all__ = ["Member", "Phase", "check_workers"]


def check_workers(workers: object) -> int:
    """``workers`` as M: an integer (a numpy one too), 1 or more, as an ``int``.

    Raises:
        TypeError: if it is not an integer.
        ValueError: if it is below 1.
    """
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral):
        raise TypeError(f"workers must be an integer, 1 or more, got {workers!r}")
    if workers < 1:
        raise ValueError(f"need at least one worker, got workers={workers}")
    return int(workers)


class Phase(Enum):
    """Where the run stands."""

    #: Waiting for the workers to join.
    JOINING = "joining"
    #: Snapshot phase: waiting for SNAPSHOT_GRADIENTs.
    SNAPSHOT = "snapshot"
    #: Inner loop: applying gradients.
    INNER = "inner"
    #: Training finished; CLOSE sent.
    DONE = "done"


@dataclass(slots=True)
class Member:
    """One connection of the master: its protocol state and its part in the run."""

    connection: MasterConnection
    joined: bool = False
    #: True once it has joined (its traffic counts as the run's, even after it left).
    admitted: bool = False
    #: True if the MODEL it must answer equals the snapshot (a ZERO answer is plausible).
    model_equals_snapshot: bool = False
    #: Its SNAPSHOT_GRADIENT of the current phase, until the phase's reports are checked together.
    report: SnapshotGradient | None = None
    #: Its updates refused since the last update applied (any worker's).
    refused: int = 0
    #: ERROR messages it has sent (:func:`~aiodq.protocol.guard.count_error`).
    errors: int = 0
    #: True if this worker takes part in the current snapshot phase / inner loop.
    active: bool = False
    #: True while the current snapshot phase waits for this worker.
    awaiting_snapshot: bool = False
    #: The epoch of a SNAPSHOT sent and not answered yet (the protocol allows one at a time).
    snapshot_sent: int | None = None
    #: When that SNAPSHOT was sent.
    snapshot_sent_at: float = 0.0
    #: The shard index its HELLO claimed (None: it claimed none).
    shard: int | None = None
    #: In an adaptive run, whether its answer to the MODEL it must answer comes Rice-coded: the
    #: coding of the last MODEL it got as DENSE_RICE or DENSE, as the worker keeps it (session.py).
    sent_rice: bool = True
    #: True if it was a member and its stream ended with no CLOSE either way (a crash, a kill, the network).
    lost: bool = False

    def join(self, shard: tuple[int, int] | None) -> None:
        """It joined (WELCOME and CONFIG on their way), claiming ``shard`` (None: no claim)."""
        self.shard = None if shard is None else shard[0]
        self.joined = self.admitted = True

    def model_sent(self, encoding: Encoding | None) -> None:
        """Note the encoding a MODEL went in: a DENSE_RICE or DENSE one sets the coding of the answer."""
        self.sent_rice = answer_coding(encoding, self.sent_rice)
