"""The Ray launcher's actors: the master's and the workers' (:mod:`aiodq.launch.ray` drives them).

They run on the Ray cluster's nodes: the master actor hosts a :class:`~aiodq.net.master.Master`
on Ray's event loop; a worker actor loads the data and trains its shard with
:func:`~aiodq.launch.local.worker_main`.  The driver wraps these classes with ``ray.remote``;
only the master actor imports Ray itself (for its node's address).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import logging
import os
from typing import Any

from threadpoolctl import threadpool_limits

from ..config import DEFAULT_LIMITS, ConnectionConfig, Limits, MasterConfig
from ..errors import RunError, UsageError
from ..net.master import Master
from ..protocol.accounting import ModelRecord
from ..protocol.algorithms import TrainConfig
from ..protocol.dataset import Dataset, other_data
from ..protocol.result import RunResult
from .common import check_shares, load_data_or_fail, progress_state
from .local import use_uvloop, worker_main
from .models import objective_for

__all__ = ["MasterActor", "Secret", "WorkerActor"]

#: How long a worker keeps reconnecting to a master it cannot reach (or that refuses its shard
#: while the master still holds its lost session), in seconds.
_RETRY_FOR = 30.0
#: Log records the master actor keeps for the driver between two polls.
_LOG_BACKLOG = 2000


class Secret:
    """The run's shared secret, as it travels to the actors: its repr never shows it."""

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"


def _load(source: str | Dataset | None) -> Dataset:
    """The dataset from a path (None: the bundled a9a) or as Ray handed it from the object store."""
    return source if isinstance(source, Dataset) else load_data_or_fail(source)


class _Records(logging.Handler):
    """Keeps the ``aiodq`` log records of an actor for the driver (which logs them again)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: collections.deque[tuple[str, int, float, str]] = collections.deque(maxlen=_LOG_BACKLOG)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.records.append((record.name, record.levelno, record.created, record.getMessage()))

    def drain(self) -> list[tuple[str, int, float, str]]:
        drained = list(self.records)
        self.records.clear()
        return drained


class MasterActor:
    """The master's actor (an async actor): a :class:`Master` on Ray's event loop."""

    def __init__(self) -> None:
        self._master: Master | None = None
        self._dataset_name = ""
        self._records = _Records()
        logger = logging.getLogger("aiodq")
        logger.setLevel(logging.INFO)
        logger.addHandler(self._records)
        logger.propagate = False  # the driver logs them

    async def start(
        self,
        config: TrainConfig,
        *,
        source: str | Dataset | None,
        workers: int,
        secret: Secret,
        bind_host: str | None,
        master_config: MasterConfig | None,
        record_every: int,
        saving: dict[str, Any],
    ) -> tuple[str, int, Limits, bool]:
        """Load the data, bind ``bind_host`` (None: this node's address) at a free port.

        Returns the address, the limits the model's size sets (the workers' too), and whether the
        run had finished (a finished run resumed: no worker is needed).
        ``saving``: the master's ``checkpoint``, ``checkpoint_interval``, ``resume`` and ``start_from``.
        """
        dataset = _load(source)
        self._dataset_name = dataset.name
        host = bind_host or importlib.import_module("ray").util.get_node_ip_address()
        # Named before the model's factory, which may edit the data (as aiodq run's master does).
        fingerprint, expected = dataset.fingerprint(), saving.pop("data_fingerprint", None)
        if expected is not None and other_data(expected, fingerprint):  # (an audit: a swapped file trained)
            raise RunError(
                f"the master actor's node reads other data at {source} (fingerprint {fingerprint}) than the "
                f"driver did ({expected}): give every node the same file"
            )
        check_shares(dataset.samples, workers)  # (a UsageError at once, not each worker's ValueError)
        objective = objective_for(config, dataset, training_set=True)
        try:
            limits = DEFAULT_LIMITS.fitting(objective.dim)
        except ValueError as exc:  # (as the local launcher says it: an AiodqError passes through Ray)
            raise UsageError(str(exc)) from exc
        try:  # a start_from of another size, say: one line at the driver, as UsageError passes Ray
            master = Master(
                config,
                objective,
                workers=workers,
                host=host,
                port=0,
                connection_config=ConnectionConfig(secret=secret.value, limits=limits),
                master_config=master_config,
                record_every=record_every,
                samples=dataset.samples,
                data_fingerprint=fingerprint,  # workers on other nodes may read other data
                **saving,
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
        self._master = master  # (closed by stop() even if its start fails part way)
        try:
            await master.start()
        except OSError as exc:  # (one line at the driver, as aiodq master says it: not Ray's traceback)
            raise RunError(f"the master cannot listen on {host}: {exc.strerror or exc}") from None
        return (*master.address, limits, master.resumed_finished)

    async def stop(self) -> tuple[tuple[int, int] | None, RunResult | None]:
        """Close the master (it checkpoints a run still to finish).

        Where the checkpoint holds the run (None without one) and the run as it stood, its
        ``failure`` STOPPED; both None if training had ended or not begun.
        """
        master = self._master
        if master is None:
            return None, None
        await master.close()
        if master.coordinator is None or master.coordinator.done:
            return None, None
        result = master.result()
        result.summary.update(dataset=self._dataset_name)
        return master.checkpointed, result

    async def trained(self) -> tuple[RunResult, list[ModelRecord]]:
        """Wait until training has ended; the result (with the dataset's name) and the model records."""
        assert self._master is not None
        result = await self._master.trained()
        result.summary.update(dataset=self._dataset_name)
        coordinator = self._master.coordinator
        return result, [] if coordinator is None else list(coordinator.records)

    async def wait(self) -> None:
        """Wait until every connection has closed after training, then close the master."""
        assert self._master is not None
        try:
            await self._master.wait()
        finally:
            await self._master.close()

    async def progress(self) -> dict[str, Any]:
        """What the live display shows, whether training is over, and the log records since the last call."""
        return {"logs": self._records.drain(), **progress_state(self._master)}


class WorkerActor:
    """A worker's actor: loads the data, then trains its shard in a session with the master."""

    def __init__(self) -> None:
        self._dataset: Dataset | None = None

    def load(self, source: str | Dataset | None) -> int:
        """Load the data now (while the master starts); the number of samples.

        Raises:
            DataError: if they cannot be read (this worker cannot train: it is not started again).
        """
        from ..data import load_dataset  # noqa: PLC0415 - scipy, as load_data_or_fail imports it

        self._dataset = source if isinstance(source, Dataset) else load_dataset(source)
        return self._dataset.samples

    def run(
        self,
        host: str,
        port: int,
        *,
        index: int,
        workers: int,
        seed: int,
        model: str,
        secret: Secret,
        limits: Limits = DEFAULT_LIMITS,
    ) -> tuple[int, str, int, bool, bool]:
        """Train shard ``index`` of ``workers`` until the master closes.

        Returns ``(code, reason, gradients, ok, cannot_train)``: the last, if this worker refused the
        run's CONFIG itself (its model, data or split not the master's: another would be refused alike).
        """
        assert self._dataset is not None
        # One compute thread (BLAS, OpenMP): the workers share their node's cores.
        os.environ["OMP_NUM_THREADS"] = "1"
        with threadpool_limits(1), asyncio.Runner(loop_factory=use_uvloop()) as runner:
            result = runner.run(
                worker_main(
                    host,
                    port,
                    self._dataset,
                    index=index,
                    workers=workers,
                    seed=seed,
                    model=model,
                    connection_config=ConnectionConfig(secret=secret.value, limits=limits),
                    retry_for=_RETRY_FOR,
                )
            )
        return result.code, result.reason, result.gradients, result.ok, result.cannot_train
