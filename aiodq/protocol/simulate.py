"""An in-memory cluster: the real coordinator, worker sessions and wire bytes, no sockets.

Messages are delivered one at a time in a seeded random order, so workers run
at different speeds and gradients arrive stale, exactly as the protocol allows,
but reproducibly.  Used by tests, by ``aiodq bench master`` for the in-process
cost of an update, and to tune defaults quickly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ..config import ConnectionConfig, MasterConfig
from .algorithms import TrainConfig, initial_model
from .coordinator import Coordinator
from .dataset import Dataset, shard
from .objectives import BUILT_IN, Objective, fixed_fingerprint
from .session import WorkerSession
from .start import starting_point

__all__ = ["MasterSide", "WorkerSide", "build_cluster", "deliver", "simulate"]


def build_cluster(
    config: TrainConfig,
    dataset: Dataset,
    workers: int,
    *,
    objective: Callable[[Any, Any], Objective] | None = None,
    record_every: int = 0,
    master_config: MasterConfig | None = None,
    connection_config: ConnectionConfig | None = None,
) -> tuple[Coordinator, list[WorkerSession]]:
    """A coordinator and ``workers`` sessions holding the deterministic shards of ``dataset``.

    ``objective``: your own model's factory, as ``--model MODULE:NAME`` names one
    (docs/usage.md, Your own model), called with the whole dataset's features and labels for
    the master (x_0 and its checks: :func:`~aiodq.protocol.start.starting_point`) and with each
    shard's for its worker; None: ``config.model``, a built-in model.  ``record_every``,
    ``master_config`` and ``connection_config`` go to the
    :class:`~aiodq.protocol.coordinator.Coordinator`, which knows the dataset's size; the
    sessions get ``connection_config`` too.
    """
    x0: npt.NDArray[Any]
    if objective is not None:
        if config.model in BUILT_IN:  # (its workers would be judged as the built-in's)
            raise ValueError(
                f"with objective=, config.model names your model (its MODULE:NAME, say), not {config.model!r}"
            )
        whole = objective(dataset.features, dataset.labels)
        x0, fixed = starting_point(config, whole), fixed_fingerprint(whole)
        classes = None
    else:
        dataset, _ = dataset.for_model(config.model)
        classes = dataset.classes
        x0 = initial_model(config, config.built_in(dataset.features, dataset.labels, classes=classes))
        fixed = None
    coordinator = Coordinator(
        config,
        x0,
        workers=workers,
        record_every=record_every,
        master_config=master_config,
        samples=dataset.samples,
        connection_config=connection_config,
    )
    coordinator.fingerprints["fixed"] = fixed  # (a worker whose objective differs there refuses the run)
    sessions = []
    for index in range(workers):
        rows = shard(dataset.samples, workers, index, seed=config.seed)
        part = dataset.rows(rows)
        if objective is not None:
            own = objective(part.features, part.labels)
            session = WorkerSession(
                objective=own, model=config.model, name=f"sim-{index}", connection_config=connection_config
            )
        else:
            session = WorkerSession(
                part.features,
                part.labels,
                name=f"sim-{index}",
                classes=classes,
                connection_config=connection_config,
            )
        sessions.append(session)
    return coordinator, sessions


def simulate(
    config: TrainConfig,
    dataset: Dataset,
    workers: int,
    *,
    seed: int = 0,
    max_steps: int = 10_000_000,
    slow: dict[int, int] | None = None,
    record_every: int = 0,
    master_config: MasterConfig | None = None,
    objective: Callable[[Any, Any], Objective] | None = None,
) -> Coordinator:
    """Train in memory; return the finished coordinator (trace, traffic, staleness).

    Args:
        config: the run's hyperparameters.
        dataset: the training data, split across the workers by :func:`aiodq.data.shard`.
        workers: number of workers M.
        seed: seed of the delivery order.
        max_steps: a bound on message deliveries.
        slow: worker index to a delay factor k: that worker's messages are
            delivered only on every k-th chance, so its gradients are stale.
        record_every: keep model copies in ``coordinator.records`` (see
            :class:`~aiodq.protocol.coordinator.Coordinator`).
        master_config: the guard and deadlines of the coordinator.
        objective: your own model's factory, ``(features, labels) -> Objective``
            (:func:`build_cluster`); None: ``config.model``, a built-in model.
    """
    coordinator, sessions = build_cluster(
        config, dataset, workers, objective=objective, record_every=record_every, master_config=master_config
    )
    deliver(coordinator, sessions, seed=seed, max_steps=max_steps, slow=slow)
    return coordinator


class MasterSide(Protocol):
    """What :func:`deliver` uses of a master: a :class:`Coordinator` has it."""

    def connect(self, now: float) -> int:
        """Open a connection; return its worker id."""
        ...

    def data_to_send(self) -> dict[int, bytes]:
        """The bytes to send, by worker id."""
        ...

    def receive_data(self, worker_id: int, data: bytes | None, now: float, budget: int = -1) -> bool:
        """Bytes from a worker (``b""``: its end of stream); True if messages may be left (see budget)."""
        ...


class WorkerSide(Protocol):
    """What :func:`deliver` uses of a worker: a :class:`WorkerSession` has it."""

    @property
    def closed(self) -> bool:
        """True once the session has ended."""
        ...

    def data_to_send(self) -> bytes:
        """The bytes to send to the master."""
        ...

    def prepare(self, now: float) -> None:
        """Do the next gradient's model-free work (after sending)."""
        ...

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the master (``b""``: its end of stream)."""
        ...


def deliver(
    coordinator: MasterSide,
    sessions: Sequence[WorkerSide],
    *,
    seed: int = 0,
    max_steps: int = 10_000_000,
    slow: dict[int, int] | None = None,
) -> None:
    """Connect ``sessions`` to ``coordinator`` and pass their bytes until neither side has more.

    One message is delivered per step, from a channel (a worker's uplink or downlink) drawn
    with ``seed``; see :func:`simulate` for ``max_steps`` and ``slow``.  Then every session
    and connection is closed.  ``coordinator`` and ``sessions`` are used only through the
    members of :class:`MasterSide` and :class:`WorkerSide` (a caller may pass wrappers, as
    ``aiodq bench cluster`` does to time each side).
    """
    workers = len(sessions)
    ids = [coordinator.connect(0.0) for _ in sessions]
    up: list[deque[bytes]] = [deque() for _ in sessions]
    down: list[deque[bytes]] = [deque() for _ in sessions]
    rng = np.random.default_rng(seed)
    slow = slow or {}
    step = 0
    for step in range(max_steps):
        now = float(step)
        for index, session in enumerate(sessions):
            data = session.data_to_send()
            if data:
                up[index].append(data)
                session.prepare(now)  # as the asyncio worker does after sending
        for worker_id, data in coordinator.data_to_send().items():
            down[ids.index(worker_id)].append(data)
        channels = [(i, d) for i in range(workers) for d, q in (("up", up[i]), ("down", down[i])) if q]
        if not channels:
            break
        index, direction = channels[int(rng.integers(len(channels)))]
        if index in slow and rng.integers(slow[index]) != 0:
            continue
        if direction == "up":
            coordinator.receive_data(ids[index], up[index].popleft(), now)
        else:
            sessions[index].receive_data(down[index].popleft(), now)
    for index, session in enumerate(sessions):
        if not session.closed:
            session.receive_data(b"", float(step))
        coordinator.receive_data(ids[index], b"", float(step))
