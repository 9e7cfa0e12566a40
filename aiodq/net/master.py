"""The asyncio master: a TCP server that runs a :class:`~aiodq.protocol.coordinator.Coordinator`.

This module and :mod:`aiodq.net.worker` are the only ones that open sockets, read
the clock or sleep.  A :class:`Master` runs inside any running event loop::

    async with Master(config, x0, workers=4, host="127.0.0.1", port=0) as master:
        print("listening on", master.address)
        summary = await master.wait()

While it runs, ``master.coordinator`` shows the trace, the traffic and the
model (``master.coordinator.state.x``), so the hosting application can follow
progress while doing other work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from ..config import ConnectionConfig
from ..protocol.algorithms import TrainConfig
from ..protocol.coordinator import Coordinator
from . import checkpoint as checkpoint_file

__all__ = ["Master"]

_log = logging.getLogger("aiodq.master")

_READ_SIZE = 1 << 18


class Master:
    """A parameter server on TCP; an async context manager."""

    def __init__(
        self,
        config: TrainConfig,
        x0: npt.NDArray[np.floating[Any]],
        *,
        workers: int,
        host: str = "127.0.0.1",
        port: int = 0,
        connection_config: ConnectionConfig | None = None,
        ssl: ssl_module.SSLContext | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_interval: float = 60.0,
        resume: bool = False,
        blas_threads: int | None = 1,
        record_every: int = 0,
    ) -> None:
        """Configure; nothing runs until :meth:`start` (or ``async with``).

        Args:
            config: the run's hyperparameters.
            x0: the initial model.
            workers: the number of workers M to wait for.
            host: the address to listen on.
            port: the port (0: any free port; see :attr:`address`).
            connection_config: limits, timeouts and the shared secret of every connection.
            ssl: a server-side TLS context (with client-certificate checks for mutual TLS).
            checkpoint: a file to checkpoint the whole state into, atomically.
            checkpoint_interval: seconds between checkpoints.
            resume: continue from ``checkpoint`` instead of starting afresh.
            blas_threads: BLAS threads in this process while the master runs (None: leave
                them).  One by default: the master's vectors are small, and idle BLAS threads
                spin on the cores the workers need (docs/benchmarks.md).
            record_every: keep a copy of the model every this many applied updates and at
                every snapshot phase, in ``coordinator.records`` (0: none); see
                :class:`~aiodq.protocol.accounting.ModelRecord`.
        """
        if resume and checkpoint is None:
            raise ValueError("resume needs a checkpoint file")
        if not checkpoint_interval > 0:
            raise ValueError("checkpoint_interval must be positive")
        self.config = config
        self._ssl = ssl
        self._checkpoint = Path(checkpoint) if checkpoint is not None else None
        self._checkpoint_interval = checkpoint_interval
        self._resume = resume
        self._last_checkpoint = 0.0
        self._blas_threads = blas_threads
        self._record_every = record_every
        # A worker whose unsent bytes exceed four frames of the largest size allowed is cut off (_flush).
        self._write_limit = 4 * (connection_config or ConnectionConfig()).limits.max_frame_bytes
        self._blas_limit: threadpool_limits | None = None
        self._x0 = x0
        self._workers = workers
        self._host = host
        self._port = port
        self._connection_config = connection_config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._timer_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._logged_epochs = 0
        self._logged_errors = 0
        self._accepted = 0
        self._started = 0.0
        self.coordinator: Coordinator | None = None

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting workers."""
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        if self._blas_threads is not None:
            self._blas_limit = threadpool_limits(self._blas_threads, user_api="blas")
        self.coordinator = Coordinator(
            self.config,
            self._x0,
            workers=self._workers,
            connection_config=self._connection_config,
            now=0.0,
            record_every=self._record_every,
        )
        if self._resume:
            assert self._checkpoint is not None
            self.coordinator.restore(checkpoint_file.load(self._checkpoint), 0.0)
            self._logged_epochs = len(self.coordinator.trace)  # logged by the run that wrote them
            _log.info(
                "resumed from %s at epoch %d, version %d",
                self._checkpoint,
                self.coordinator.state.epoch,
                self.coordinator.state.version,
            )
        # TLS starts inside _serve, so that a failed TLS handshake is logged with its reason.
        self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=_READ_SIZE)
        self._timer_task = asyncio.create_task(self._run_timers(), name="aiodq-master-timers")

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` the server listens on."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the master is not listening; call start() first")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until training finishes; return the coordinator's summary.

        Raises:
            TimeoutError: if ``timeout`` seconds pass first.
        """
        async with asyncio.timeout(timeout):
            await self._done.wait()
        assert self.coordinator is not None
        summary = self.coordinator.summary()
        summary["wall_time"] = self._now()
        return summary

    async def close(self) -> None:
        """Stop accepting, close every connection and stop the timers."""
        if self._server is not None:
            self._server.close()
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
        for writer in list(self._writers.values()):
            writer.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

    async def __aenter__(self) -> Master:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- connections ----------------------------------------------------------

    @property
    def connections(self) -> int:
        """Transports open now: joined workers and peers still in their handshake."""
        return len(self._writers)

    @property
    def accepted(self) -> int:
        """Transports accepted since :meth:`start`, open or closed."""
        return self._accepted

    @property
    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return self._now()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time() - self._started

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self.coordinator is not None
        self._handlers.add(task)
        try:
            if self._ssl is not None and not await self._start_tls(writer):
                return
            await self._serve_worker(reader, writer)
        finally:
            self._handlers.discard(task)
            self._check_done()

    async def _start_tls(self, writer: asyncio.StreamWriter) -> bool:
        """Run the TLS handshake; refuse (and log why) a peer that fails it, before any state is touched."""
        assert self._ssl is not None
        peer = writer.get_extra_info("peername")
        timeout = (self._connection_config or ConnectionConfig()).handshake_timeout
        try:
            await writer.start_tls(self._ssl, ssl_handshake_timeout=timeout)
        except (ssl_module.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            _log.warning("TLS handshake with %s failed: %s", peer, exc)
            writer.close()
            return False
        return True

    async def _serve_worker(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        coordinator = self.coordinator
        assert coordinator is not None
        worker_id = coordinator.connect(self._now())
        self._accepted += 1
        self._writers[worker_id] = writer
        _log.info("worker %d connected from %s", worker_id, writer.get_extra_info("peername"))
        try:
            while True:
                try:
                    data = await reader.read(_READ_SIZE)
                except (ConnectionError, OSError):
                    data = b""
                coordinator.receive_data(worker_id, data, self._now())
                await self._flush()
                if not data or worker_id not in self._writers:
                    break
        finally:
            coordinator.disconnect(worker_id, self._now())
            await self._flush()
            self._close_writer(worker_id)
            coordinator.forget(worker_id)
            _log.info("worker %d disconnected", worker_id)

    async def _flush(self) -> None:
        """Write what the coordinator queued and close finished connections.

        No serve loop ever waits for another peer's socket to drain: a worker that stops
        reading must not stall the others.  The protocol bounds what can queue up for one
        worker (it gets a MODEL only in answer to its own GRADIENT, plus an epoch's SNAPSHOT,
        FULL_GRADIENT and CLOSE), and a worker whose unsent bytes still exceed four frames
        of the largest size allowed is cut off.
        """
        assert self.coordinator is not None
        limit = self._write_limit
        for worker_id, data in self.coordinator.data_to_send().items():
            writer = self._writers.get(worker_id)
            if writer is not None and not writer.is_closing():
                writer.write(data)
                if writer.transport.get_write_buffer_size() > limit:
                    _log.warning("worker %d does not read what it is sent; closing", worker_id)
                    self.coordinator.disconnect(worker_id, self._now())
                    self._close_writer(worker_id)
        for worker_id in self.coordinator.closed_workers():
            self._close_writer(worker_id)
        self._log_progress()
        self._check_done()

    def _log_progress(self) -> None:
        """Log each new epoch record (with the bytes so far by direction) and each new protocol error."""
        coordinator = self.coordinator
        assert coordinator is not None
        if len(coordinator.trace) > self._logged_epochs:
            traffic = coordinator.traffic()
            for record in coordinator.trace[self._logged_epochs :]:
                _log.info(
                    "epoch %d: loss %.6f, accuracy %.4f, version %d, %.1f s; bytes so far: down %d, up %d",
                    record.epoch,
                    record.loss,
                    record.accuracy,
                    record.version,
                    record.time,
                    traffic.total("down"),
                    traffic.total("up"),
                )
            self._logged_epochs = len(coordinator.trace)
        for worker_id, code, reason in coordinator.errors[self._logged_errors :]:
            _log.warning("worker %d: %s: %s", worker_id, code, reason)
        self._logged_errors = len(coordinator.errors)

    def _close_writer(self, worker_id: int) -> None:
        writer = self._writers.pop(worker_id, None)
        if writer is not None:
            writer.close()

    def _check_done(self) -> None:
        if self.coordinator is not None and self.coordinator.done and not self._writers:
            self._done.set()

    async def _run_timers(self) -> None:
        assert self.coordinator is not None
        while True:
            deadline = self.coordinator.get_timer()
            delay = 1.0 if deadline is None else min(1.0, max(0.0, deadline - self._now()))
            await asyncio.sleep(delay)
            self.coordinator.handle_timer(self._now())
            await self._flush()
            if (
                self._checkpoint is not None
                and self._now() - self._last_checkpoint >= self._checkpoint_interval
            ):
                self.write_checkpoint()

    def write_checkpoint(self) -> None:
        """Checkpoint the whole state now (atomically), if a checkpoint file was configured."""
        if self._checkpoint is None or self.coordinator is None or self.coordinator.done:
            return
        checkpoint_file.save(self._checkpoint, self.coordinator.checkpoint(self._now()))
        self._last_checkpoint = self._now()
        _log.info(
            "checkpoint written to %s (epoch %d, version %d)",
            self._checkpoint,
            self.coordinator.state.epoch,
            self.coordinator.state.version,
        )
