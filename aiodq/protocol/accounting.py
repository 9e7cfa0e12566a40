"""What a training run counts: the trace, model records, traffic, staleness, drops and errors.

The :class:`Ledger` is the coordinator's book-keeping, apart from its control
logic (:mod:`aiodq.protocol.coordinator`) and from checkpointing
(:mod:`aiodq.protocol.recovery`).  Traffic comes from the connections, which
count wire bytes and analytic payload bits where each message is encoded or
decoded (docs/algorithms.md 10); the ledger only adds them up when asked.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .connection import Connection

__all__ = [
    "MAX_ERRORS",
    "MAX_REASON_CHARS",
    "MAX_UNJOINED_ERRORS",
    "UNASSIGNED",
    "EpochRecord",
    "Ledger",
    "ModelRecord",
    "Traffic",
    "records_as_arrays",
    "records_from_arrays",
]

#: Protocol errors kept with their text in the ledger (the latest); all are counted by code,
#: so that no peer can grow the master's memory, its result file or its checkpoint without bound.
MAX_ERRORS = 100
#: Of those, at most this many are of connections that never joined (HELLOs refused before WELCOME,
#: failed handshakes): a flood of refused HELLOs cannot push out the errors of workers that took part,
#: the removal that the refusals follow among them.
MAX_UNJOINED_ERRORS = MAX_ERRORS // 2
#: The most characters of an error's text kept (the default ``max_reason_bytes``): the texts kept
#: are bounded whatever limit a master accepts, and so is the checkpoint that holds them.
MAX_REASON_CHARS = 1024
#: The one key under which :class:`Ledger` counts codes that no version of the protocol assigns
#: (an audit: one CLOSE from a stranger per code, 65,512 of them, made as many keys, 1.36 MB of
#: result.json and a checkpoint too large to resume).
UNASSIGNED = "unassigned"


@dataclass(slots=True)
class EpochRecord:
    """One line of the trace: the state at the start of an epoch's snapshot phase."""

    #: Epoch number s (the last record is the final model, after S epochs).
    epoch: int
    #: F(x_snap), the training objective at the snapshot.
    loss: float
    #: Fraction of training samples classified correctly at the snapshot.
    accuracy: float
    #: Bytes on the wire, both directions, before this snapshot phase began.
    bytes_total: int
    #: Seconds since the run started (the shell's clock).
    time: float
    #: Model version t.
    version: int
    #: Samples behind this snapshot phase (less than n if a worker was missing).
    samples: int


@dataclass(slots=True)
class ModelRecord:
    """A copy of the model the master held at one moment, for evaluation after the run.

    Recorded only when the coordinator is given ``record_every``; evaluating
    these models (the experiments do it on the full training set) sends nothing
    and so is not counted as communication.
    """

    #: Model version t (applied updates so far).
    version: int
    #: Epoch s.
    epoch: int
    #: Bytes on the wire, both directions, when the copy was taken.
    bytes_total: int
    #: Seconds since the run started (the shell's clock).
    time: float
    #: The model: x_snap at the start of a snapshot phase, else the served model x.
    model: npt.NDArray[np.float64]
    #: ``bytes_total`` by direction and message kind, ``"down/MODEL"``, ``"up/header"`` ... (where
    #: the record was made with it): where the bytes went up to this copy.
    wire_bytes: dict[str, int] = field(default_factory=dict)


#: The arrays that hold model records (:func:`records_as_arrays`), besides ``wire_bytes``.
RECORD_COLUMNS = ("version", "epoch", "bytes_total", "time", "models")
#: More message kinds than records can name (two directions, 15 message types, headers).
_MAX_WIRE_KINDS = 64


def records_as_arrays(records: list[ModelRecord]) -> tuple[dict[str, npt.NDArray[Any]], list[str]]:
    """Model records as arrays, one row each, and the message kinds that name ``wire_bytes``' columns.

    The arrays are :data:`RECORD_COLUMNS` and ``wire_bytes``; :func:`records_from_arrays` reads them back.
    """
    arrays = {
        "version": np.array([r.version for r in records], dtype=np.int64),
        "epoch": np.array([r.epoch for r in records], dtype=np.int64),
        "bytes_total": np.array([r.bytes_total for r in records], dtype=np.int64),
        "time": np.array([r.time for r in records], dtype=np.float64),
        "models": (
            np.array([r.model for r in records], dtype=np.float64)
            if records
            else np.zeros((0, 0), dtype=np.float64)
        ),
    }
    # Bytes by direction and kind: one column per kind.
    kinds = sorted({kind for record in records for kind in record.wire_bytes})
    arrays["wire_bytes"] = np.array(
        [[record.wire_bytes.get(kind, 0) for kind in kinds] for record in records], dtype=np.int64
    ).reshape(len(records), len(kinds))
    return arrays, kinds


def records_from_arrays(arrays: dict[str, npt.NDArray[Any]], kinds: object) -> list[ModelRecord]:
    """The model records that :func:`records_as_arrays` gave ``arrays`` and ``kinds`` for.

    Arrays without ``wire_bytes`` (as files from before the records kept their bytes by kind)
    give records without them.

    Raises:
        ValueError: if the arrays are not such records (missing, of the wrong shape or type, of
            different lengths, or bytes by kind that do not fit): the text says which.
    """
    if any(name not in arrays for name in RECORD_COLUMNS):
        raise ValueError(f"no {', '.join(name for name in RECORD_COLUMNS if name not in arrays)} column")
    version, epoch, bytes_total, times, models = (arrays[name] for name in RECORD_COLUMNS)
    columns = (version, epoch, bytes_total, times)
    if any(column.ndim != 1 or column.dtype.kind not in "iuf" for column in columns) or (
        models.ndim != 2 or models.dtype.kind not in "iuf"
    ):
        raise ValueError("a column of the wrong shape or type")
    if not (len(version) == len(epoch) == len(bytes_total) == len(times) == models.shape[0]):
        raise ValueError("columns of different lengths")
    by_kind = arrays.get("wire_bytes")
    if by_kind is None:  # written before the records kept their bytes by kind
        kinds, by_kind = [], np.zeros((len(version), 0), dtype=np.int64)
    if (
        not isinstance(kinds, list)
        or len(kinds) > _MAX_WIRE_KINDS
        or not all(isinstance(kind, str) for kind in kinds)
        or len(set(kinds)) != len(kinds)
        or by_kind.shape != (len(version), len(kinds))
        or by_kind.dtype.kind not in "iu"
        or (by_kind.size and (by_kind.min() < 0 or not np.array_equal(by_kind.sum(axis=1), bytes_total)))
    ):
        raise ValueError("bytes by kind do not fit")
    # (A kind another record has, not this one, reads back as 0 in its row.)
    wire = [dict(zip(kinds, map(int, row), strict=True)) for row in by_kind]
    return [
        ModelRecord(int(v), int(e), int(b), float(t), models[i], wire[i])
        for i, (v, e, b, t) in enumerate(zip(version, epoch, bytes_total, times, strict=True))
    ]


_DIRECTIONS = ("down", "up")


@dataclass(slots=True)
class Traffic:
    """Bytes and analytic payload bits, by direction and message kind (docs/algorithms.md 10)."""

    #: Wire bytes per ``(direction, kind)``; ``kind == "header"`` counts frame headers.
    wire_bytes: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Messages per ``(direction, kind)``.
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Analytic vector payload bits per ``(direction, kind)``.
    payload_bits: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add_connection(self, connection: Connection) -> None:
        """Add one master-side connection's counters (down = master to worker, up = worker to master)."""
        for direction, tables in (
            ("down", (connection.bytes_sent, connection.messages_sent, connection.payload_bits_sent)),
            (
                "up",
                (connection.bytes_received, connection.messages_received, connection.payload_bits_received),
            ),
        ):
            for counter, table in zip(
                (self.wire_bytes, self.messages, self.payload_bits), tables, strict=True
            ):
                for kind, value in table.items():
                    counter[direction, kind] += value

    def add(self, other: Traffic) -> None:
        """Add another tally."""
        self.wire_bytes.update(other.wire_bytes)
        self.messages.update(other.messages)
        self.payload_bits.update(other.payload_bits)

    def by_kind(self) -> dict[str, int]:
        """Wire bytes as ``{"direction/kind": bytes}`` (``"header"`` is the frame headers)."""
        return {f"{direction}/{kind}": int(value) for (direction, kind), value in self.wire_bytes.items()}

    def total(self, direction: str | None = None) -> int:
        """Wire bytes in one direction, or both."""
        return sum(v for (d, _), v in self.wire_bytes.items() if direction in (None, d))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        out: dict[str, Any] = {}
        for name, table in self.tables().items():
            nested: dict[str, dict[str, int]] = {}
            for (direction, kind), value in sorted(table.items()):
                nested.setdefault(direction, {})[kind] = int(value)
            out[name] = nested
        out["total_bytes"] = {"down": self.total("down"), "up": self.total("up"), "both": self.total()}
        return out

    def tables(self) -> dict[str, Counter[tuple[str, str]]]:
        """The three counters by name."""
        return {"wire_bytes": self.wire_bytes, "messages": self.messages, "payload_bits": self.payload_bits}


@dataclass(slots=True)
class Ledger:
    """The run's book: everything the summary, the log and a checkpoint report."""

    #: The per-epoch trace.
    trace: list[EpochRecord] = field(default_factory=list)
    #: Model copies for evaluation after the run (see ``record_every``); checkpointed (``records.*``).
    records: list[ModelRecord] = field(default_factory=list)
    #: Staleness t - D of every applied update, as a histogram.
    applied_staleness: Counter[int] = field(default_factory=Counter)
    #: Gradients not applied, by reason: ``stale``, ``late`` (previous epoch), ``outlier`` (the
    #: guard), ``overflow`` (out of a MODEL's range), ``refused`` (not this run's encoding or width).
    dropped: Counter[str] = field(default_factory=Counter)
    #: The latest :data:`MAX_ERRORS` protocol errors, as ``(worker_id, code name, text, raised_by,
    #: joined)``: ``raised_by`` is ``"master"`` (it refused or closed the worker, or timed it out) or
    #: ``"worker"`` (the worker sent the code, in ERROR or CLOSE); ``joined`` is False for a connection
    #: that never joined, of which at most :data:`MAX_UNJOINED_ERRORS` are kept.
    errors: deque[tuple[int, str, str, str, bool]] = field(default_factory=lambda: deque(maxlen=MAX_ERRORS))
    #: Every code the master raised, by name (also those no longer in :attr:`errors`).
    error_counts: Counter[str] = field(default_factory=Counter)
    #: Every code the workers sent, by name.
    peer_error_counts: Counter[str] = field(default_factory=Counter)
    #: Traffic of connections already closed and forgotten (workers that joined).
    retired: Traffic = field(default_factory=Traffic)
    #: Traffic of connections that never joined (refused, failed handshakes): not the run's.
    unadmitted: Traffic = field(default_factory=Traffic)
    #: How many such connections there were.
    unadmitted_connections: int = 0

    def __post_init__(self) -> None:
        self.errors = deque(self.errors, maxlen=MAX_ERRORS)

    def retire(self, connection: Connection, *, admitted: bool) -> None:
        """Keep a closed connection's traffic: the run's if it joined, apart if it never did."""
        if admitted:
            self.retired.add_connection(connection)
        else:
            self.unadmitted.add_connection(connection)
            self.unadmitted_connections += 1

    def add_error(
        self, worker_id: int, code: str, reason: str, *, sent: bool = False, joined: bool = True
    ) -> None:
        """Record a protocol error (``sent``: the worker's) by code; its text replaces the oldest one kept.

        An error of a connection that never ``joined`` replaces the oldest such one once
        :data:`MAX_UNJOINED_ERRORS` are kept.  A code no version assigns (``code`` a number, as
        :func:`~aiodq.errors.code_name` gives it) is counted as :data:`UNASSIGNED` (its text, kept,
        names the number), and a text is kept to :data:`MAX_REASON_CHARS` characters.
        """
        (self.peer_error_counts if sent else self.error_counts)[UNASSIGNED if code.isdigit() else code] += 1
        if len(reason) > MAX_REASON_CHARS:
            reason = f"{reason[:MAX_REASON_CHARS]}... ({len(reason) - MAX_REASON_CHARS} more characters)"
        if not joined:
            unjoined = [i for i, entry in enumerate(self.errors) if not entry[4]]
            if len(unjoined) >= MAX_UNJOINED_ERRORS:
                del self.errors[unjoined[0]]
        self.errors.append((worker_id, code, reason, "worker" if sent else "master", joined))

    @property
    def errors_seen(self) -> int:
        """Protocol errors recorded since the run began, either side's (kept with their text or not)."""
        return sum(self.error_counts.values()) + sum(self.peer_error_counts.values())

    def traffic(self, live: list[Connection]) -> Traffic:
        """Bytes and payload bits so far: retired connections plus ``live`` ones."""
        total = Traffic()
        total.add(self.retired)
        for connection in live:
            total.add_connection(connection)
        return total

    def report(self, tau: int) -> dict[str, Any]:
        """The ledger's part of a run's summary, JSON-ready: trace, staleness, drops and errors."""
        histogram = self.applied_staleness
        applied = sum(histogram.values())
        return {
            "trace": [
                {
                    "epoch": r.epoch,
                    "loss": r.loss,
                    "accuracy": r.accuracy,
                    "bytes": r.bytes_total,
                    "bits": 8 * r.bytes_total,
                    "time": r.time,
                    "version": r.version,
                    "samples": r.samples,
                }
                for r in self.trace
            ],
            "staleness": {
                "tau": tau,
                "applied": applied,
                "histogram": {str(k): v for k, v in sorted(histogram.items())},
                "mean": (sum(k * v for k, v in histogram.items()) / applied) if applied else 0.0,
                "max": max(histogram, default=0),
                "dropped": dict(self.dropped),
            },
            "errors": [
                {"worker": w, "code": c, "reason": r, "raised_by": b, "joined": j}
                for w, c, r, b, j in self.errors
            ],
            "error_counts": dict(self.error_counts),
            "peer_error_counts": dict(self.peer_error_counts),
            "unadmitted": {"connections": self.unadmitted_connections, "bytes": self.unadmitted.total()},
        }
