"""The asyncio master: a TCP server that runs a :class:`~aiodq.protocol.coordinator.Coordinator`.

This module and :mod:`aiodq.net.worker` are the only ones that open sockets, read the clock or
sleep.  A :class:`Master` runs inside any running event loop::

    async with Master(config, x0, workers=4, host="127.0.0.1", port=0) as master:
        print("listening on", master.address)
        summary = await master.wait()

While it runs, ``master.coordinator`` shows the trace, the traffic and the model
(``master.coordinator.state.x``), so the hosting application can follow progress while doing other work.

What no peer can do (docs/security.md): make a connection handler raise (an unexpected failure closes
that connection with INTERNAL_ERROR and one log line); hold more than ``MasterConfig.max_unauthenticated``
connections in aiodq's handshake (4 times that in a TLS handshake), or open more than ``connection_rate``
a second from one address after a burst (more are closed as they arrive, before any TLS handshake); keep a
finished master alive (it stops accepting, and drops what is left after the close timeout); fill the log
(peers that never join are counted, and reason texts are logged escaped and cut); or hold the others up
with a flood of valid frames (each connection's messages are handled a few at a time, in turns).
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from pathlib import Path
from typing import Any

import numpy.typing as npt

from ..config import ConnectionConfig, MasterConfig
from ..errors import CheckpointError
from ..protocol.admission import HANDSHAKE_CUT_SHORT, ConnectionRate, oldest_of_busiest
from ..protocol.algorithms import TrainConfig
from ..protocol.coordinator import Coordinator
from ..protocol.members import check_workers
from ..protocol.objectives import Objective, fixed_fingerprint, measures_accuracy
from ..protocol.result import STOPPED, RunResult
from ..protocol.start import starting_point, vector_digest
from . import checkpoint as checkpoint_file
from .arguments import BlasLimit, check_kinds, check_master_arguments, check_timeout, own_objective
from .listener import Listener
from .logbook import RATE_REFUSAL, Logbook, peer_host, peer_name, printable, provenance, standing

__all__ = ["Master", "printable", "provenance"]

_log = logging.getLogger("aiodq.master")

_READ_SIZE = 1 << 18
#: Messages of one connection handled before the others get a turn.
_TURN = 16
#: TLS handshakes at once, per place in aiodq's handshake (--max-unauthenticated): 256 by default.
_TLS_HANDSHAKES = 4


class Master:
    """A parameter server on TCP; an async context manager."""

    def __init__(
        self,
        config: TrainConfig,
        model: Objective | npt.ArrayLike,
        *,
        workers: int,
        host: str = "127.0.0.1",
        port: int = 0,
        connection_config: ConnectionConfig | None = None,
        master_config: MasterConfig | None = None,
        samples: int | None = None,
        ssl: ssl_module.SSLContext | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_interval: float = 60.0,
        resume: bool = False,
        blas_threads: int | None = 1,
        record_every: int = 0,
        data_fingerprint: str | None = None,
        start_from: npt.ArrayLike | None = None,
    ) -> None:
        """Configure; nothing runs until :meth:`start` (or ``async with``).

        Args:
            config: the run's hyperparameters.
            model: an :class:`~aiodq.Objective` over the whole dataset (its ``initial`` gives
                x_0 with the run's seed, its ``samples`` n), or x_0 itself as an array-like.
            workers: the number of workers M to wait for.
            host: the address to listen on.
            port: the port (0: any free port; see :attr:`address`).
            connection_config: limits, timeouts and the shared secret of every connection.
            master_config: the guard, the snapshot deadline and the admission limit.
            samples: n, the samples of the whole dataset, if known (workers' reports are checked
                against the shard sizes); an objective's ``samples`` by default.
            ssl: a server-side TLS context (with client-certificate checks for mutual TLS).
            checkpoint: a file to checkpoint the whole state into, atomically (written once at
                :meth:`start`, so a path that cannot be written fails there).  The master holds
                a lock on it from :meth:`start` to :meth:`close` (:func:`checkpoint.lock`).
            checkpoint_interval: seconds between checkpoints.
            resume: continue from ``checkpoint`` instead of starting afresh.
            blas_threads: BLAS threads in this process while the master runs (None: leave
                them).  One by default: the master's vectors are small, and idle BLAS threads
                spin on the cores the workers need (docs/benchmarks.md).
            record_every: keep a copy of the model every this many applied updates and at every
                snapshot phase, in ``coordinator.records`` (0: none; see ``accounting.ModelRecord``).
            data_fingerprint: what the run trains on (``Dataset.fingerprint()``), in every checkpoint
                (``resume`` refuses one that names another) and in CONFIG (workers refuse other data).
            start_from: x_0 in place of the objective's ``initial()``: a warm start from a trained
                model (``load_model``), not with ``resume``; its digest is in the result's provenance.
        """
        check_kinds(config=(config, TrainConfig, False), master_config=(master_config, MasterConfig, True),
                    connection_config=(connection_config, ConnectionConfig, True))  # fmt: skip
        workers = check_workers(workers)  # (before anything uses it: a text said nothing useful)
        if resume and (checkpoint is None or start_from is not None):
            raise ValueError("resume needs a checkpoint file, and takes x_0 from it (no start_from)")
        x0 = starting_point(config, model, start_from)
        self._start = None if start_from is None else vector_digest(x0)  # (in provenance, checkpoints)
        if samples is None and hasattr(model, "loss_grad"):
            samples = int(getattr(model, "samples", 0)) or None
        port, samples, blas_threads = check_master_arguments(port, samples, blas_threads, checkpoint_interval)
        self.config = config
        self.master_config = master_config or MasterConfig()
        self._connection_config = connection_config or ConnectionConfig()
        self._connection_config.limits.check_model(x0.shape[0])  # (wire-format.md 10-4: else refused)
        self._ssl, self._checkpoint = ssl, (Path(checkpoint) if checkpoint is not None else None)
        self._checkpoint_interval, self._resume, self._last_checkpoint = checkpoint_interval, resume, 0.0
        self._checkpointed: tuple[str, int, int, int] | None = None
        self._checkpoint_failure: str | None = None
        self._data_fingerprint, self._fixed = data_fingerprint, fixed_fingerprint(model)
        self._own = own_objective(config, model)  # (CONFIG names a built-in model this one is not: said so)
        self._lock: checkpoint_file.Lock | None = None
        self._before = 0.0  # seconds of training a resumed checkpoint holds
        #: ``(epoch, version)`` of the last checkpoint written, the one at the end or the close included.
        self.checkpointed: tuple[int, int] | None = None
        self.resumed_finished = False  #: True if ``resume`` found a finished run: nothing trains.
        self._blas_threads, self._record_every, self._samples = blas_threads, record_every, samples
        # Whether the trace's accuracy means anything (a torch regression has correct(), counting nothing).
        self._accuracy = measures_accuracy(model) if hasattr(model, "loss_grad") else None
        # A worker whose unsent bytes exceed four of its session's frames is cut off (_flush).
        self._write_limit = 4 * self._connection_config.limits.session_frame_bytes(x0.shape[0])
        self._blas_limit: BlasLimit | None = None
        self._x0, self._workers = x0, workers
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._address: tuple[str, int] | None = None
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._timer_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._trained = asyncio.Event()  # training has ended (the connections may still be closing)
        self._finished_at: float | None = None
        self._closing = self._closed = self._began = False
        self._accepted, self._started = 0, 0.0
        self._rate = ConnectionRate(self.master_config.connection_rate, 2 * workers + 16)
        self._logbook = Logbook(self._now, accuracy=self._accuracy is not False)
        tls_limit = _TLS_HANDSHAKES * self.master_config.max_unauthenticated  # (net/listener.py)
        self._listener = Listener(admit=self._admit, refused=self._logbook.refuse, tls_limit=tls_limit)
        self._provenance: dict[str, Any] = {}
        self.coordinator: Coordinator | None = None

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting workers.

        Raises:
            CheckpointError: the checkpoint cannot be written, or (``resume``) read or used.
            OSError: the address cannot be listened on.
            RuntimeError: if it was started (and did not fail) or closed before: a Master runs one run.
        """
        if was := "started" if self._began else "closed" if self._closed else "":  # (a 2nd listener, or run)
            raise RuntimeError(f"this Master was {was} before: a Master runs one run (make another)")
        self._began, self._loop = True, asyncio.get_running_loop()  # (_began: False again if this fails)
        self._started = self._loop.time()
        try:
            self.coordinator = Coordinator(
                self.config,
                self._x0,
                workers=self._workers,
                connection_config=self._connection_config,
                now=0.0,
                record_every=self._record_every,
                master_config=self.master_config,
                samples=self._samples,
            )
            self.coordinator.fingerprints.update(
                data=self._data_fingerprint, fixed=self._fixed, objective=self._own
            )
            if self._checkpoint is not None:
                # Held until close(): a second master on the same file is refused, not let overwrite it.
                self._lock = checkpoint_file.lock(self._checkpoint)
                self._open_checkpoint(self._checkpoint)
            start = {"start_from": self._start} if self._start else {}  # (the resumed run's id stays: below)
            self._provenance = provenance() | self._provenance | start
            # TLS is the loop's own (uvloop's start_tls could stall one), after _admit (net/listener.py).
            tls = None if self._ssl is None else (self._ssl, self._connection_config.handshake_timeout)
            await self._listener.start(self._serve, self._host, self._port, limit=_READ_SIZE, tls=tls)
            host, port = self._listener.sockets[0].getsockname()[:2]
            self._address = (str(host), int(port))
            if self._blas_threads is not None:  # only once listening: a start that fails leaves it as it was
                self._blas_limit = BlasLimit(self._blas_threads)
        except BaseException:
            self._began = False
            if self._lock is not None:  # (a start that failed leaves the file to the next one)
                self._lock.release()
                self._lock = None
            raise
        self._timer_task = asyncio.create_task(self._run_timers(), name="aiodq-master-timers")
        if self.coordinator.done:  # a finished run resumed: trained() returns it at once, as it ended
            self.resumed_finished = True
            self._finished_at = self._now()  # (its checkpoint is left as it is)
            self._trained.set()
            self._listener.stop_accepting()
            self._check_done()

    def _open_checkpoint(self, path: Path) -> None:
        """Resume from ``path`` (``resume``), or check that it may be overwritten and write the first one."""
        assert self.coordinator is not None
        if checkpoint_file.remove_stale(path):
            _log.info("removed temporary checkpoint files an interrupted run left next to %s", path)
        if self._resume:
            saved = checkpoint_file.load(path, max_bytes=self._checkpoint_bytes())
            if saved.meta.get("phase") is not None:  # (else not a run's: restore says so)
                checkpoint_file.check_data(path, saved.meta, self._data_fingerprint, self._fixed)
            try:
                self.coordinator.restore(saved, 0.0)
            except CheckpointError as exc:  # (which file: an operator resumed from a model.npz)
                raise CheckpointError(f"{path}: {exc}") from None
            self._before = float(saved.meta["elapsed"])  # (checked by restore)
            self._start = start if isinstance(start := saved.meta.get("start_from"), str) else None
            self._provenance = {"id": run} if isinstance(run := saved.meta.get("run"), str) else {}
            if saved.meta.get("workers") != self._workers and not self.coordinator.done:
                _log.warning(
                    "the checkpointed run had %s workers, this one %d: its shards change from here",
                    *(saved.meta.get("workers"), self._workers),
                )
            self._logbook.resumed(self.coordinator)
            state, done = self.coordinator.state, self.coordinator.done  # done: its results are written again
            said = f"resumed from {path} at epoch {state.epoch}, version {state.version}"
            if done:
                _log.warning("%s: the run had finished; nothing trains, its results are given again", said)
            else:
                _log.info("%s", said)
        else:
            checkpoint_file.check_fresh_start(path, max_bytes=self._checkpoint_bytes())
        # Written at once (the same state, resumed): fails now, with one line, if it cannot be (a resume
        # on a full disk finished, exit 0, its checkpoint unfinished).  A finished run's is left as it is.
        self.write_checkpoint()

    def _checkpoint_bytes(self) -> int:
        assert self.coordinator is not None
        dim = self.coordinator.dim
        records = checkpoint_file.records_in(self._checkpoint, dim) if self._checkpoint else 0
        return checkpoint_file.read_limit(dim, self.config.epochs, records)

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` the server listens on (listened on, once the run is over)."""
        if self._address is None:
            raise RuntimeError("the master is not listening; call start() first")
        return self._address

    async def wait(self, timeout: float | None = None) -> RunResult:
        """Wait until training has ended and every connection has closed; the model and the figures.

        Raises:
            TimeoutError: if ``timeout`` seconds pass first.
        """
        return await self._result_after(self._done, timeout)

    async def trained(self, timeout: float | None = None) -> RunResult:
        """Wait until training has ended (the workers' connections may still be closing); the result.

        Raises:
            TimeoutError: if ``timeout`` seconds pass first.
        """
        return await self._result_after(self._trained, timeout)

    async def _result_after(self, event: asyncio.Event, timeout: float | None) -> RunResult:
        check_timeout(timeout, started=self._began)
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:  # (asyncio's says nothing; the run goes on: the caller may wait again)
            stands = standing(self.coordinator)  # (a trial's workers had all failed: it said nothing of it)
            raise TimeoutError(f"the run did not finish within {timeout:g} s{stands}") from None
        return self.result()

    def result(self) -> RunResult:
        """The model and the run's figures as they stand (final once trained; STOPPED once stopped before)."""
        wall_time = round(self._before + (self._finished_at or self._now()), 6)  # (RuntimeError before start)
        assert self.coordinator is not None
        self._logbook.counts(force=True)  # what the last interval counted
        stopped = self._closing and not self.coordinator.done and self.coordinator.failure is None
        return RunResult.of(
            self.coordinator,
            wall_time=wall_time,
            refused_connections=dict(self._logbook.refused),
            provenance=self._provenance,
            **({} if self._accuracy is None else {"measures_accuracy": self._accuracy}),
            **{k: v for k, v in (("data", self._data_fingerprint), ("fixed", self._fixed)) if v is not None},
            **({"failure": STOPPED} if stopped else self._logbook.failure(self.coordinator)),
        )

    async def close(self) -> None:
        """Stop accepting, tell every worker GOING_AWAY (unless training ended), and stop.

        The workers get the CLOSE; handlers still running after a short grace are cancelled.
        A master closed already is left as it is.
        """
        if self._closed:
            return
        try:
            await self._close()
            self._closed = True
        finally:  # (also when the close is cancelled part way: the lock and BLAS go back)
            if not self._closed:
                # A master whose close did not finish may serve on: no checkpoint without the lock.
                self._checkpoint = None
            if self._blas_limit is not None:
                self._blas_limit.release()
                self._blas_limit = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def stop_training(self) -> None:
        """From now on nothing changes the model: no worker is admitted, every one is told GOING_AWAY.

        :meth:`close` does this first; a launcher calls it before it stops its workers, so that
        their exits end no snapshot phase part way.  The deadlines stop too, and training does not
        end (:meth:`trained` and :meth:`wait` return only for a run whose training ended).
        """
        self._closing = True
        self._listener.stop_accepting()
        if self.coordinator is not None and self._loop is not None and not self.coordinator.done:
            self.coordinator.shutdown(self._now())
            self._write_queued()

    async def _close(self) -> None:
        self.stop_training()  # before any wait: training cannot end (or move on) during the close
        if self.coordinator is not None and self._loop is not None:
            # Before any wait, too: a second signal cancels the close at its first (an operator's INT then
            # TERM lost the training since the last checkpoint).  The timers' task sleeps: no write beside.
            if not self.coordinator.done and self._address is not None:  # (a failed start: maybe refused)
                self._checkpoint_at_last("at the close")
            self._write_queued()
        if self._timer_task is not None:
            self._timer_task.cancel()
            # asyncio.wait, not an await of it: only a cancellation of the close itself ends the close.
            await asyncio.wait([self._timer_task])
        for writer in list(self._writers.values()):
            writer.close()
        if self._handlers:
            _, pending = await asyncio.wait(list(self._handlers), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Then every connection accepted is closed (refused, or accepted during this close, too); one closing
        # gracefully has the close timeout (wire-format.md 8.3) to deliver its CLOSE (net/listener.py).
        await self._listener.close(self._connection_config.handshake_timeout)

    async def __aenter__(self) -> Master:
        # A second entry is refused, and must not close the run the first one began.
        first = not (self._began or self._closed)
        try:
            await self.start()
        except BaseException:
            if first:
                await self.close()  # what a start that failed part way holds (__aexit__ will not run)
            raise
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
        """Transports accepted since :meth:`start`, open or closed (refused ones included)."""
        return self._accepted

    @property
    def elapsed(self) -> float:
        """Seconds of training: since :meth:`start`, plus those a resumed checkpoint holds."""
        return self._before + self._now()

    def _now(self) -> float:
        if self._loop is None:
            raise RuntimeError("the master has not started; call start() first")
        return self._loop.time() - self._started

    def _unadmitted(self) -> int:  # open connections that are not members (closed ones linger apart)
        return sum(not self.coordinator.is_member(i) for i in self._writers)  # type: ignore[union-attr]

    def _admit(self, peer: str | None) -> bool:
        """Whether to serve a connection just accepted from ``peer``: before any TLS handshake."""
        assert self.coordinator is not None
        self._accepted += 1
        why = "the run is over" if self._closing or self.coordinator.done else None
        if why is None and not self._rate.admit(peer, self._now()):  # (the places in the handshake: _serve)
            why = RATE_REFUSAL
        if why is not None:
            self._logbook.refuse(why, peer)
        return why is None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self.coordinator is not None
        if self._closing or self.coordinator.done:  # (admitted before it ended)
            writer.transport.abort()
            self._logbook.refuse("the run is over")
            return
        if self._unadmitted() >= self.master_config.max_unauthenticated:  # (one cut short: security.md)
            member = self.coordinator.is_member
            victim = oldest_of_busiest({i: peer_host(w) for i, w in self._writers.items() if not member(i)})
            self._logbook.refuse(HANDSHAKE_CUT_SHORT, peer_name(self._writers[victim]))
            self._abort_writer(victim)
        self._handlers.add(task)
        try:
            await self._serve_worker(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception as exc:
            what = f"{type(exc).__name__}: {printable(str(exc))}"
            _log.error("connection from %s: unexpected %s", peer_name(writer), what)
            writer.transport.abort()
        finally:
            self._handlers.discard(task)
            self._check_done()

    async def _serve_worker(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        coordinator = self.coordinator
        assert coordinator is not None
        # Its handshake deadline counts from the accept, a TLS handshake included (security.md).
        accepted_at = self._listener.accepted_at(writer.transport)
        worker_id = coordinator.connect(self._now() if accepted_at is None else accepted_at - self._started)
        self._writers[worker_id] = writer
        _log.debug("connection %d from %s", worker_id, peer_name(writer))
        try:
            while True:
                try:
                    data = await reader.read(_READ_SIZE)
                except (ConnectionError, OSError):
                    data = b""
                # _TURN messages, then the others' turn (a flood of HEARTBEATs held them up 100-fold).
                more = coordinator.receive_data(worker_id, data, self._now(), _TURN if data else -1)
                self._flush()
                while more and worker_id in self._writers:
                    await asyncio.sleep(0)
                    more = coordinator.receive_data(worker_id, None, self._now(), _TURN)
                    self._flush()
                if not data or worker_id not in self._writers:
                    break
        finally:
            lost = coordinator.disconnect(worker_id, self._now())
            self._flush()
            self._close_writer(worker_id)
            coordinator.forget(worker_id)
            self._logbook.left(worker_id, lost=lost)

    def _write_queued(self) -> None:
        """Hand the coordinator's queued bytes to the transports (never waits for one to drain)."""
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

    def _flush(self) -> None:
        """Write what the coordinator queued and close finished connections.

        No serve loop ever waits for another peer's socket to drain: a worker that stops
        reading must not stall the others.  The protocol bounds what can queue up for one
        worker (it gets a MODEL only in answer to its own GRADIENT, plus an epoch's SNAPSHOT,
        FULL_GRADIENT and CLOSE), and a worker whose unsent bytes still exceed four frames
        of its session's size is cut off.
        """
        coordinator = self.coordinator
        assert coordinator is not None
        self._write_queued()
        for worker_id in coordinator.closed_workers():
            self._close_writer(worker_id)
        self._logbook.progress(coordinator, self._writers)
        if coordinator.done and self._finished_at is None:
            self._finished_at = self._now()
            self._checkpoint_at_last("at the end of the run")
            self._trained.set()
            self._listener.stop_accepting()  # nothing more to accept
            for worker_id in list(self._writers):
                if not coordinator.is_member(worker_id):
                    self._abort_writer(worker_id)  # strangers get nothing more
        self._check_done()

    def _close_writer(self, worker_id: int) -> None:
        if (writer := self._writers.pop(worker_id, None)) is not None:  # (linger: a peer may never read)
            self._listener.linger(
                writer.transport, self._connection_config.handshake_timeout, self._write_limit
            )

    def _abort_writer(self, worker_id: int) -> None:
        if (writer := self._writers.pop(worker_id, None)) is not None:
            writer.transport.abort()

    def _check_done(self) -> None:
        if self.coordinator is not None and self.coordinator.done and not self._writers:
            self._done.set()

    async def _run_timers(self) -> None:
        assert self.coordinator is not None
        while True:
            deadline = self.coordinator.get_timer()
            # At most a second between rounds, and at most the checkpoint interval.
            longest = min(1.0, self._checkpoint_interval) if self._checkpoint is not None else 1.0
            delay = longest if deadline is None else min(longest, max(0.0, deadline - self._now()))
            await asyncio.sleep(delay)
            try:
                self.coordinator.handle_timer(self._now())
            except Exception as exc:  # (a bug, not a peer's doing): logged, and the timers go on
                _log.error("timers: unexpected %s: %s", type(exc).__name__, printable(str(exc)))
            self._flush()
            self._logbook.counts()  # what was counted, not logged, once the interval has passed
            if self._finished_at is not None:
                # wire-format.md 8.3: nobody is waited for longer than the close timeout.
                if self._now() - self._finished_at >= self._connection_config.handshake_timeout:
                    for worker_id in list(self._writers):
                        self._abort_writer(worker_id)
                    self._done.set()
            elif (
                self._checkpoint is not None
                and self._now() - self._last_checkpoint >= self._checkpoint_interval
            ):
                try:
                    if self._progress() == self._checkpointed:
                        self._last_checkpoint = self._now()  # nothing new (waiting for workers, say)
                        continue
                    self.write_checkpoint()
                except CheckpointError as exc:
                    self._last_checkpoint = self._now()  # try again at the next interval, not at once
                    if str(exc) != self._checkpoint_failure:
                        _log.error("%s; training goes on, and it is tried again at each interval", exc)
                        self._checkpoint_failure = str(exc)

    def _progress(self) -> tuple[str, int, int, int]:
        """Where the run stands: a checkpoint of the same place would hold the same state."""
        coordinator = self.coordinator
        assert coordinator is not None
        state = coordinator.state
        return coordinator.phase.value, state.epoch, state.version, len(coordinator.trace)

    def _checkpoint_at_last(self, when: str) -> None:
        """Checkpoint now, at the run's end or the master's close; a failure is logged (no caller to tell).

        At the end the checkpoint says done: resumed, it trains nothing and gives its results again; at
        a close mid-run (SIGTERM, Ctrl-C, the caller) it keeps what was trained since the last one.
        """
        if self._checkpoint is None or self.coordinator is None:
            return
        try:
            self._save_checkpoint()
        except CheckpointError as exc:
            _log.error("%s: the checkpoint %s was not written", exc, when)

    def _save_checkpoint(self) -> None:
        """Write the coordinator's checkpoint, with the data's and the model's fingerprints, to the file."""
        assert self._checkpoint is not None and self.coordinator is not None
        checkpoint = self.coordinator.checkpoint(self._now())
        kept = {"data": self._data_fingerprint, "fixed": self._fixed, "start_from": self._start}
        checkpoint.meta.update({name: value for name, value in kept.items() if value is not None})
        checkpoint.meta["run"] = self._provenance.get("id")  # (a resumed run is the same run: its id stays)
        checkpoint_file.save(self._checkpoint, checkpoint)
        state = self.coordinator.state
        self.checkpointed = (state.epoch, state.version)

    def write_checkpoint(self) -> None:
        """Checkpoint the whole state now (atomically), if a checkpoint file was configured.

        Raises:
            CheckpointError: if the file cannot be written.
        """
        if self._checkpoint is None or self.coordinator is None or self.coordinator.done:
            return
        self._save_checkpoint()
        self._last_checkpoint = self._now()
        self._checkpointed = self._progress()
        self._checkpoint_failure = None
        state = self.coordinator.state
        _log.info(
            "checkpoint written to %s (epoch %d, version %d)", self._checkpoint, state.epoch, state.version
        )
