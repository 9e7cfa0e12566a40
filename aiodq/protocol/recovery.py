"""Checkpoint state: the master's whole run as arrays and JSON-ready metadata, and back.

A :class:`Checkpoint` is a pure value: named arrays (the model, the snapshot, g_snap,
y and the iterate sum; the model records, if any, as ``records.*``) and a JSON
document (the counters, the quantizer's random-generator state, the trace, the
staleness, drop, error and traffic counters).  Writing it to disk atomically is the shell's business
(:mod:`aiodq.net.checkpoint`); this module builds it from a running coordinator's
parts and checks everything in it before any of it is used again.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy.typing as npt

from ..errors import CheckpointError
from .accounting import MAX_ERRORS, EpochRecord, Ledger, Traffic, records_as_arrays, records_from_arrays
from .algorithms import MasterState, TrainConfig

__all__ = ["RECORDS", "Checkpoint", "Resumed", "capture", "restore"]

#: The prefix of the model records' arrays in a checkpoint.
RECORDS = "records."


@dataclass(slots=True)
class Checkpoint:
    """Arrays and JSON metadata of one checkpoint."""

    #: Named float64 arrays.
    arrays: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    #: JSON-ready metadata.
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Resumed:
    """What a restored checkpoint hands back to the coordinator besides the master state."""

    #: The run's book as it stood.
    ledger: Ledger
    #: Seconds of training before the checkpoint.
    elapsed: float
    #: True if the checkpoint was taken in an inner loop (the epoch resumes where it stood).
    mid_epoch: bool
    #: True if the run had ended (the checkpoint at its end): nothing is left to train.
    finished: bool = False
    #: Why a finished run ended before its epochs did (it diverged, say), or None.
    failure: str | None = None
    #: The guard's figures of the previous snapshot phase and of the first (Guard.remember), or None.
    guard: tuple[tuple[float, float] | None, tuple[float, float] | None] = (None, None)


def capture(
    config: TrainConfig,
    state: MasterState,
    ledger: Ledger,
    traffic: Traffic,
    *,
    workers: int,
    phase: str,
    elapsed: float,
    failure: str | None = None,
    guard: dict[str, list[float] | None] | None = None,
) -> Checkpoint:
    """Everything needed to continue a run later.

    ``failure``: why a run that ended did so early; ``guard``: the guard's figures of past
    snapshot phases (:meth:`~aiodq.protocol.guard.Guard.memory`).
    """
    arrays, state_meta = state.to_checkpoint()
    # The model records too (a crash-recovery trial: a resumed run's --records lacked those before it).
    records, kinds = records_as_arrays(ledger.records) if ledger.records else ({}, [])
    arrays |= {f"{RECORDS}{name}": column for name, column in records.items()}
    meta = {
        "config": config.to_params(),
        "dim": int(state.x.shape[0]),
        "workers": workers,
        "phase": phase,
        "failure": failure,
        "elapsed": elapsed,
        "state": state_meta,
        "guard": guard,
        "trace": [asdict(record) for record in ledger.trace],
        "applied_staleness": [[k, v] for k, v in ledger.applied_staleness.items()],
        "dropped": dict(ledger.dropped),
        "errors": [list(error) for error in ledger.errors],
        "error_counts": dict(ledger.error_counts),
        "peer_error_counts": dict(ledger.peer_error_counts),
        "traffic": {
            name: [[d, k, v] for (d, k), v in table.items()] for name, table in traffic.tables().items()
        },
        "records": len(ledger.records),
        **({"records_wire_kinds": kinds} if records else {}),
    }
    return Checkpoint(arrays, meta)


def _saved_error(entry: Any) -> tuple[int, str, str, str, bool]:
    """A checkpoint's ``[worker, code, reason, raised_by, joined]``; older ones lack the last one or two.

    An earlier version kept no side, and counted the codes workers sent with those the master
    raised, in ``error_counts``: they stay counted there, as the master's.  One that did not
    mark errors of connections that never joined has them as the workers' that took part.
    """
    worker, code, reason = entry[:3]
    rest: list[Any] = list(entry[3:])
    side = rest[0] if rest else "master"
    joined = rest[1] if len(rest) > 1 else True
    if side not in ("master", "worker") or len(rest) > 2:
        raise ValueError(f"an error raised by {side!r}")
    if not isinstance(joined, bool):
        raise ValueError(f"an error whose 'joined' is {joined!r}")
    return int(worker), str(code), str(reason), side, joined


def _saved_figures(saved: object, name: str) -> tuple[float, float] | None:
    """The guard's ``name`` figures in a checkpoint: a per-sample loss and a gradient norm, or None."""
    if saved is None:
        return None
    if (
        isinstance(saved, list)
        and len(saved) == 2
        and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in saved)
        and all(math.isfinite(value) for value in saved)
        and saved[1] >= 0
    ):
        return float(saved[0]), float(saved[1])
    raise ValueError(f"the guard's {name} figures {saved!r} are not a loss and a gradient norm")


def _saved_config(params: object) -> TrainConfig | None:
    """The configuration a checkpoint names, None if it names none.

    A field added since it was written takes its default: for ``aligned_codes`` that is how
    the run that wrote it ran; for ``sparse_gradients``, which that run did not have, the
    resumed run starts sending its gradients' sparse form (the same values).
    """
    if not isinstance(params, dict):
        return None
    try:
        return TrainConfig.from_params(params)
    except (ValueError, TypeError):
        return None


def _saved_trace(records: list[dict[str, Any]]) -> list[EpochRecord]:
    """The trace of a checkpoint, each record's values checked.

    (A review: a loss of "abc" failed every later snapshot phase and the run hung; a NaN one was
    copied into result.json.)

    Raises:
        ValueError: for a value of the wrong type, not finite or negative, or an epoch before the last.
    """
    trace = [EpochRecord(**record) for record in records]
    for at, record in enumerate(trace):
        for name in ("epoch", "bytes_total", "version", "samples"):
            value = getattr(record, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"trace record {at}: {name} {value!r} is not a count")
        for name in ("loss", "accuracy", "time"):
            value = getattr(record, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"trace record {at}: {name} {value!r} is not a finite number")
        if at and record.epoch < trace[at - 1].epoch:
            raise ValueError(f"trace record {at}: epoch {record.epoch} after epoch {trace[at - 1].epoch}")
    return trace


def restore(checkpoint: Checkpoint, config: TrainConfig, state: MasterState) -> Resumed:
    """Load ``checkpoint`` into ``state``; return the ledger and clock it carries.

    A finished run's checkpoint (phase ``done``) is restored as it ended, with nothing left to
    train: its results can be written again from it (a stop or a full disk between its last
    checkpoint and its results would otherwise lose them).

    Raises:
        CheckpointError: if the checkpoint belongs to another configuration or dimension, is a
            finished run's of a version that did not record how it ended, or is incomplete or damaged.
    """
    meta = checkpoint.meta
    if meta.get("phase") is None:
        raise CheckpointError("the file is not the checkpoint of a run (a model or records file?)")
    saved = _saved_config(meta.get("config"))
    if saved is None:
        raise CheckpointError("the checkpoint names no configuration this version of aiodq can read")
    if saved != config:
        differences = "; ".join(
            f"{item.name} {getattr(saved, item.name)!r} there, {getattr(config, item.name)!r} here"
            for item in fields(config)
            if getattr(saved, item.name) != getattr(config, item.name)
        )
        hint = ""  # (other epochs: a new run, from the model, --start-from)
        if saved.epochs != config.epochs:
            hint = (
                "; to train on from where it stands, start a new run from the model.npz its run wrote "
                "(--start-from OUT/model.npz; not from the checkpoint)"
                if meta.get("phase") == "done"
                # (a crash-recovery trial: a killed run had written no model.npz)
                else f"; resume it with --epochs {saved.epochs} to finish it, then start a new run from the "
                "model.npz it writes (--start-from OUT/model.npz)"
            )
        raise CheckpointError(
            f"the checkpoint was written by a run with another configuration: {differences}{hint}"
        )
    if meta.get("dim") != int(state.x.shape[0]):
        raise CheckpointError(
            f"the checkpoint's model has {meta.get('dim')!r} parameters, this run's {int(state.x.shape[0])}"
        )
    phase, failure = meta.get("phase"), meta.get("failure")
    if phase == "done" and "failure" not in meta:
        raise CheckpointError(
            "the checkpointed run had already finished, and the version of aiodq that wrote the checkpoint "
            "kept no record of how it ended: to train again from the start, leave --resume out"
        )
    if phase not in ("joining", "snapshot", "inner", "done"):
        raise CheckpointError(
            f"the checkpoint's phase {phase!r} is not one of joining, snapshot, inner, done"
        )
    if not (failure is None or isinstance(failure, str)):
        raise CheckpointError(f"the checkpoint's failure {failure!r} is not a text")
    workers = meta.get("workers", 1)  # (a finished run's result gives it again)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise CheckpointError(f"the checkpoint's worker count {workers!r} is not a count")
    # Everything is read and checked before the state changes, so a damaged checkpoint
    # leaves the state as it was.
    try:
        elapsed = float(meta["elapsed"])
        ledger = Ledger(
            trace=_saved_trace(meta["trace"]),
            applied_staleness=Counter({int(k): int(v) for k, v in meta["applied_staleness"]}),
            dropped=Counter({str(k): int(v) for k, v in meta["dropped"].items()}),
            errors=deque(map(_saved_error, meta["errors"]), maxlen=MAX_ERRORS),
            error_counts=Counter({str(k): int(v) for k, v in meta.get("error_counts", {}).items()}),
            peer_error_counts=Counter({str(k): int(v) for k, v in meta.get("peer_error_counts", {}).items()}),
        )
        for name, rows in meta["traffic"].items():
            table = ledger.retired.tables()[name]
            for direction, kind, value in rows:
                table[str(direction), str(kind)] += int(value)
        records = {
            name[len(RECORDS) :]: a for name, a in checkpoint.arrays.items() if name.startswith(RECORDS)
        }
        if records:  # (none: the run kept none, or the checkpoint is of an earlier version, which kept none)
            ledger.records = records_from_arrays(records, meta.get("records_wire_kinds", []))
            if any(record.model.shape != state.x.shape for record in ledger.records):
                raise ValueError("a model record of another dimension")
        # (A checkpoint of a version before the guard's memory has none: its guard starts afresh.)
        memory = meta.get("guard") or {"previous": None, "first": None}
        guard = (_saved_figures(memory["previous"], "previous"), _saved_figures(memory["first"], "first"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"the checkpoint is incomplete or damaged: {exc!r}") from exc
    if not (math.isfinite(elapsed) and elapsed >= 0):
        raise CheckpointError(f"the checkpoint's elapsed time {elapsed!r} is not a time")
    # The latest epoch it names, its state's or its trace's (a review: epoch 99 of 6 trained one more).
    state_epoch = meta["state"].get("epoch") if isinstance(meta.get("state"), dict) else None
    named = [e for e in (state_epoch, *(r.epoch for r in ledger.trace[-1:])) if isinstance(e, int)]
    if named and max(named) > config.epochs:
        raise CheckpointError(
            f"the checkpoint is at epoch {max(named)}, beyond the run's {config.epochs}: damaged"
        )
    try:
        state.restore(checkpoint.arrays, meta["state"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"the checkpoint is incomplete or damaged: {exc!r}") from exc
    # In the inner loop the snapshot is the one the trace's last loss evaluates; in a snapshot
    # phase it is the next, and the checkpoint holds the evaluated one (if it is of this version).
    if phase == "inner":
        state.evaluated = state.snapshot
    return Resumed(
        ledger, elapsed, mid_epoch=phase == "inner", finished=phase == "done", failure=failure, guard=guard
    )
