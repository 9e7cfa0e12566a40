"""``aiodq run --launcher ray``: the master and the M workers as Ray actors (docs/ray.md).

:func:`run_ray` is :func:`~aiodq.launch.local.run_local` on a Ray cluster: Ray places the
actors, supervises them and brings the result back; master and workers speak aiodq's own
protocol over TCP between the actors' hosts, so Ray never carries a gradient.

- The master actor hosts a :class:`~aiodq.net.master.Master` on its event loop, listening on
  its node's address (127.0.0.1 on a local instance this function starts) at a free port.
- Worker actor i loads the data (a path every node sees, the bundled a9a, or a dataset the
  driver put once in Ray's object store), keeps shard i of M and runs
  :func:`~aiodq.launch.local.worker_main` to the master with the run's fresh secret.
- The driver polls the master for the live progress and its log records, restarts a failed
  worker (``max_restarts``) and kills every actor when the run ends, fails, times out or is
  interrupted; a Ray instance it started, it shuts down.

Ray is optional (the ``ray`` extra): it is imported only when :func:`run_ray` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy.typing as npt

from ..config import Limits, MasterConfig
from ..errors import RunError, UsageError
from ..net.checkpoint import resumable
from ..protocol.accounting import ModelRecord
from ..protocol.algorithms import TrainConfig
from ..protocol.dataset import Dataset
from ..protocol.result import RunResult
from .common import as_it_stood, check_shares, checkpoint_note, live_display, progress_table
from .models import refuse_a_run_at_import, start_vector
from .ray_actors import MasterActor, Secret, WorkerActor
from .ray_failures import call, cannot_train, given_up, worker_failure
from .ray_start import INIT_GRACE, RayStart

__all__ = ["RayMissingError", "import_ray", "run_ray"]

_log = logging.getLogger("aiodq.launch")

#: Seconds a cancelled run waits for Ray's shutdown before it goes on.
SHUTDOWN_GRACE = 30.0
#: Ray's switch for its crash handler, which takes SIGTERM from the whole process (run_ray sets it).
_NO_CRASH_HANDLER = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"
#: Seconds between the driver's polls of the master (progress, log records, failed workers).
_POLL = 0.25
#: How long the master actor has to close (and checkpoint) when a run stops early, before it is killed.
_STOP = 30.0


class RayMissingError(UsageError, ImportError):
    """Ray is not installed: an ImportError, and a usage error (``aiodq run`` exits with status 2)."""


def import_ray() -> Any:
    """Ray, or :class:`RayMissingError` saying which extra brings it (``pip install 'aiodq[ray]'``).

    Ray's core worker installs a crash handler for SIGTERM in the whole process: a SIGTERM aborted
    ``aiodq run --launcher ray`` (exit 134) without the run as it stood (a newcomer trial).  It is
    off unless the caller set :data:`_NO_CRASH_HANDLER` (ray.md), from before Ray's import (set
    only before ``ray.init``, the command line's earlier import came first, and a loaded suite's
    run still aborted once).
    """
    os.environ.setdefault(_NO_CRASH_HANDLER, "1")
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise RayMissingError(f"the Ray launcher needs ray ({exc}): pip install 'aiodq[ray]'") from exc


#: Where Ray says it turned its token authentication on for a local instance (Ray 2.60).
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _Unless(logging.Filter):
    """Drops the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


async def run_ray(
    config: TrainConfig,
    data: str | Path | Dataset | None = None,
    *,
    workers: int = 4,
    address: str | None = None,
    worker_cpus: float = 1.0,
    master_node: str | None = None,
    master_resources: dict[str, float] | None = None,
    bind_host: str | None = None,
    progress: bool = False,
    timeout: float = 3600.0,
    master_config: MasterConfig | None = None,
    record_every: int = 0,
    records: list[ModelRecord] | None = None,
    max_restarts: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_interval: float = 60.0,
    resume: bool = False,
    start_from: str | os.PathLike[str] | npt.ArrayLike | None = None,
    finished: Callable[[RunResult], None] | None = None,
    stopped: Callable[[RunResult], None] | None = None,
    data_fingerprint: str | None = None,
) -> RunResult:
    """Train with the master and ``workers`` workers as Ray actors (``aiodq run --launcher ray``).

    ::

        result = asyncio.run(run_ray(aiodq.TrainConfig(epochs=5), workers=2))

    Args:
        config: the run's hyperparameters (``config.model``: a built-in model, or ``MODULE:NAME``
            importable on every node, e.g. from ``ray job submit --working-dir``).
        data: a data file or folder every node sees at this path (default: the bundled a9a), or
            a :class:`~aiodq.protocol.dataset.Dataset`, put once in Ray's object store.
        workers: the number of worker actors M.
        address: the Ray cluster (``auto``, ``HOST:6379``, ``ray://HOST:10001``).  None:
            ``$RAY_ADDRESS`` if set, else a new local Ray instance for this run only, with as
            many CPUs as the workers reserve (at least the machine's), shut down at the end.
            Unused when Ray is already initialised in this process (left open).
        worker_cpus: the CPUs each worker actor reserves.
        master_node: where the master actor runs: ``head``, a node's IP address or ID
            (default: this driver's node).  It reserves no CPU.
        master_resources: custom resources the master actor needs (``{"aiodq_master": 1}``).
        bind_host: the address the master listens on (default: its node's address, 127.0.0.1 on
            a local instance); the workers connect to it.
        progress: show live progress with rich (the ``cli`` extra).
        timeout: give up after this many seconds, Ray's start-up and the actors' placement included.
        master_config: the master's guard, snapshot deadline and admission limit.
        record_every: with a positive value the master keeps model copies.
        records: a list the model copies are appended to.
        max_restarts: replace a worker actor that dies or fails, up to this many times in all
            (the new actor rejoins on the same shard).
        checkpoint: a file on the master actor's node (so give ``master_node`` to resume it; a
            relative path is made absolute here, as ``data``'s) that the master checkpoints the
            run into, as :func:`~aiodq.launch.local.run_local`'s: every ``checkpoint_interval``
            s, when the run stops early (the master actor is closed before any actor is killed)
            and, marked done, at its end.
        checkpoint_interval: seconds between checkpoints.
        resume: continue the run ``checkpoint`` holds (same configuration and data).
        start_from: x_0 in place of the model's own (a warm start; see ``run_local``): a file
            read here (on the driver), or the vector itself; sent to the master actor.
        finished: gets the result as soon as training has ended, before the actors' sessions end
            (``aiodq run`` writes its files then); ``summary["ray"]`` then lacks
            ``local_instance`` and ``seconds``, which the result returned has.
        stopped: gets the run as it stood (its ``failure`` not set) when the run is cancelled
            before training has ended (the master actor is then closed first, within 30 s).
        data_fingerprint: the data's as the caller read it (``Dataset.fingerprint()``): a master
            actor whose node reads other data at ``data``'s path refuses to start (RunError).

    Returns:
        The trained model and the run's figures (``result.summary["ray"]`` says where it ran).

    Raises:
        RayMissingError: (an ImportError) if ray is not installed.
        RunError: if Ray cannot be started or reached, the data cannot be read, an actor fails
            (beyond ``max_restarts``) or the run times out.  Every actor is killed first.
        UsageError: for impossible options, or a model that cannot be loaded or does not fit.
    """
    refuse_a_run_at_import()
    ray = import_ray()
    # Absolute, as data's: the actors' working folder is not the caller's on a cluster (an audit's relative
    # --checkpoint --resume found another folder's run there).
    checkpoint = None if checkpoint is None else os.path.abspath(os.path.expanduser(checkpoint))
    if workers < 1:
        raise UsageError("the Ray launcher needs at least one worker")
    if not worker_cpus > 0 or not math.isfinite(worker_cpus):
        raise UsageError("worker_cpus must be a positive number")
    if not timeout > 0 or max_restarts < 0:
        raise UsageError("the timeout must be positive and max_restarts not negative")
    start_from = start_vector(start_from, config, resume=resume)  # (a file is read here, on the driver)
    began = time.monotonic()
    started = local = False

    def where_it_ran(result: RunResult) -> RunResult:
        """``result`` with the Ray figures this function adds (a failed or stopped run's too)."""
        ray_figures = {"local_instance": local, "seconds": round(time.monotonic() - began, 3)}
        result.summary["ray"] = {**result.summary.get("ray", {}), **ray_figures}
        return result

    start: RayStart | None = None
    latest = RayStart.latest
    # (Not while a start abandoned at its timeout still hangs in ray.init, if the caller has started Ray
    # since: that instance is the caller's, a review.)
    if latest is not None and not latest.ended.is_set() and (latest.up.is_set() or not ray.is_initialized()):
        # (An audit: a second run_ray while the first ran on the instance it started lost it to the first's
        # shutdown, and waited out its timeout.)
        raise RunError(
            "Ray was started in this process by a run_ray that has not ended (one still running, or one "
            "abandoned at its timeout or cancelled, whose instance is shut down when its start ends): run "
            "them one after the other, or call ray.init() first, whose instance every run_ray uses and none "
            "shuts down"
        )
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        local = address is None
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if local:
            cpus = max(os.cpu_count() or 1, math.ceil(workers * worker_cpus))
            options.update(num_cpus=cpus, include_dashboard=False)
        # Ray takes seconds to start: in a thread, so that the caller's event loop runs meanwhile
        # (and Ray, off the main thread, leaves the caller's SIGTERM handler alone; import_ray turned
        # its crash handler off).
        quiet = _Unless("SIGTERM handler is not set")  # which is what we want: it is not Ray's to set
        logging.getLogger("ray._private.worker").addFilter(quiet)
        # (An audit: every run's stderr began with Ray's notice of its default, docs/ray.md, Authentication.)
        token = _Unless("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE")
        if local:  # (for the instance this run starts only: a review)
            logging.getLogger(_AUTH_LOGGER).addFilter(token)
        start = RayStart(ray, address="local" if local else address, **options)
        where = "start Ray" if local else f"reach the Ray cluster at {address}"
        try:
            # Within the timeout: Ray retries an address where no cluster answers for ever (a deployment
            # trial's run outlived its --timeout and its SIGTERM, waiting on it).
            await asyncio.wait_for(
                asyncio.shield(start.started), max(0.0, began + timeout - time.monotonic())
            )
        except TimeoutError:
            start.stop()  # (its thread shuts Ray down if the start ever ends)
            raise RunError(f"cannot {where} within {timeout:g} s (the timeout; Ray's log says why)") from None
        except (ConnectionError, RuntimeError, ValueError) as exc:
            start.stop()
            raise RunError(f"cannot {where}: {exc}") from exc
        except asyncio.CancelledError:
            # The thread goes on starting Ray: it shuts down what it started; wait for that a while (a
            # second cancellation does not stop the wait: the first one ends the task anyway, below).
            start.stop()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(start.down), INIT_GRACE[local])
            raise
        finally:
            logging.getLogger("ray._private.worker").removeFilter(quiet)
            logging.getLogger(_AUTH_LOGGER).removeFilter(token)
        started = True
        _log.debug("Ray %s in %.2f s", "started" if local else "reached", time.monotonic() - began)
    # Where the checkpoint holds a run that stopped early, and the run as it stood:
    stood: list[tuple[tuple[int, int] | None, RunResult | None]] = []
    try:
        result = await _run(
            ray,
            config,
            data,
            workers=workers,
            worker_cpus=worker_cpus,
            master_node=master_node,
            master_resources=master_resources,
            bind_host=bind_host or ("127.0.0.1" if local else None),
            progress=progress,
            deadline=began + timeout,
            timeout=timeout,
            master_config=master_config,
            record_every=record_every,
            records=records,
            max_restarts=max_restarts,
            saving={
                "checkpoint": checkpoint,
                "checkpoint_interval": checkpoint_interval,
                "resume": resume,
                "start_from": start_from,
                "data_fingerprint": data_fingerprint,
            },
            stood=stood,
            finished=finished,
            stopped=stopped is not None,
        )
    except asyncio.CancelledError:
        if stopped is not None and stood and stood[-1][1] is not None:
            stopped(where_it_ran(stood[-1][1]))
        raise
    except RunError as exc:
        held, partial = stood[-1] if stood else (None, None)
        if held is None and checkpoint is not None:
            # The master actor could not be closed (it died): its last periodic checkpoint, where this
            # process can read it (a local instance, a shared folder), says where the run stood.
            held = resumable(checkpoint)
        if partial is None and held is None:
            raise
        message = f"{exc}{checkpoint_note(checkpoint, held)}"
        stood_as = None if partial is None else as_it_stood(where_it_ran(partial), message)
        raise RunError(message, result=stood_as) from exc
    finally:
        if start is not None and started:
            stopping = time.monotonic()
            start.stop()
            await _ray_down(start)
            _log.debug("Ray shut down in %.2f s", time.monotonic() - stopping)
    return where_it_ran(result)


async def _run(
    ray: Any,
    config: TrainConfig,
    data: str | Path | Dataset | None,
    *,
    workers: int,
    worker_cpus: float,
    master_node: str | None,
    master_resources: dict[str, float] | None,
    bind_host: str | None,
    progress: bool,
    deadline: float,
    timeout: float,
    master_config: MasterConfig | None,
    record_every: int,
    records: list[ModelRecord] | None,
    max_restarts: int,
    saving: dict[str, Any],
    stood: list[tuple[tuple[int, int] | None, RunResult | None]],
    finished: Callable[[RunResult], None] | None = None,
    stopped: bool = False,
) -> RunResult:
    """:func:`run_ray` once Ray is up: start the actors, follow the run, kill every actor at the end.

    A run that stops early (with a checkpoint, on a RunError, or with ``stopped``: someone to hand
    a cancelled run to) has its master actor closed first (which checkpoints it): where the
    checkpoint holds the run (or None) and the run as it stood (None once training had ended)
    are appended to ``stood``.
    """
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    if workers * worker_cpus > cpus:
        _log.warning(
            "%d workers of %g CPUs need %g CPUs and the Ray cluster has %g: some wait for room",
            *(workers, worker_cpus, workers * worker_cpus, cpus),
        )
    data_path: str | None = None
    source: Any = None  # the bundled a9a
    if isinstance(data, Dataset):
        check_shares(data.samples, workers)
        source = await asyncio.to_thread(ray.put, data)  # once: every actor reads this copy from the store
    elif data is not None:
        source = data_path = os.path.abspath(Path(data).expanduser())  # (not resolved: a link per node)
    run_id = secrets.token_hex(4)
    secret = Secret(secrets.token_hex(32).encode())
    strategies = importlib.import_module("ray.util.scheduling_strategies")
    master = (
        ray.remote(MasterActor)
        .options(
            name=f"aiodq-{run_id}-master",
            num_cpus=0,
            resources=master_resources or {},
            scheduling_strategy=_master_placement(ray, strategies, master_node),
            max_restarts=0,
        )
        .remote()
    )
    worker_class = ray.remote(WorkerActor)
    actors: list[Any] = [master]  # every actor started, to kill at the end
    handles: list[Any] = []
    loads: list[asyncio.Future[Any]] = []
    runs: list[asyncio.Future[Any]] = []
    waiter: asyncio.Future[Any] | None = None
    restarts = 0

    def create(index: int) -> None:
        """Start worker actor ``index``; it loads the data at once."""
        actor = worker_class.options(
            name=f"aiodq-{run_id}-worker-{index}-{restarts}",
            num_cpus=worker_cpus,
            scheduling_strategy="SPREAD",
            max_restarts=0,
        ).remote()
        actors.append(actor)
        load = asyncio.wrap_future(actor.load.remote(source).future())
        if index < len(handles):
            handles[index], loads[index] = actor, load
        else:
            handles.append(actor)
            loads.append(load)

    def begin(index: int, address: tuple[str, int], limits: Limits) -> asyncio.Future[Any]:
        call = handles[index].run.remote(
            *address,
            index=index,
            workers=workers,
            seed=config.seed,
            model=config.model,
            secret=secret,
            limits=limits,
        )
        return asyncio.wrap_future(call.future())

    state: dict[str, Any] = {"trace": [], "done": False}
    title = f"aiodq run (Ray): {config.algorithm}, {workers} workers"
    reported: list[RunResult] = []

    def figures(result: RunResult) -> None:
        """The launcher's figures, added to a result's summary."""
        provenance = result.summary.get("provenance")
        if isinstance(provenance, dict):
            provenance.update(command=list(sys.argv))  # the driver's (the master's host stays)
        gcs = None
        with contextlib.suppress(Exception):  # (not known to a Ray Client)
            gcs = str(ray.get_runtime_context().gcs_address)
        ray_figures = {"address": gcs, "master": f"{host}:{port}"}
        # (worker_nice: none with Ray, as usage.md says; a newcomer trial found the key missing.)
        result.summary.update(
            data_path=data_path, worker_restarts=restarts, worker_nice=None, ray=ray_figures
        )

    def report(result: RunResult) -> None:
        """The result as training ended, with the launcher's figures; given to ``finished`` once."""
        if reported:
            return
        figures(result)
        reported.append(result)
        if finished is not None:
            finished(result)  # before the master's connections and the workers' sessions end

    scope = asyncio.timeout(max(0.0, deadline - time.monotonic()))
    try:
        async with scope:
            with live_display(lambda: progress_table(title, state), progress) as live:
                for index in range(workers):  # they load their data while the master starts
                    create(index)
                starting = master.start.remote(
                    config,
                    source=source,
                    workers=workers,
                    secret=secret,
                    bind_host=bind_host,
                    master_config=master_config,
                    record_every=record_every,
                    saving=saving,
                )
                host, port, limits, ended = await call(ray, starting, "the master actor")
                address = (str(host), int(port))
                _log.info("the master actor listens on %s:%d", *address)
                # A finished run resumed gives its results again: no worker takes part.
                runs = [] if ended else [begin(index, address, limits) for index in range(workers)]
                waiter = asyncio.wrap_future(master.trained.remote().future())
                while runs and not waiter.done():
                    pending = [f for f in [waiter, *loads, *runs] if not f.done()]
                    await asyncio.wait(pending, timeout=_POLL, return_when=asyncio.FIRST_COMPLETED)
                    state = await _poll(ray, master)
                    if live is not None:
                        live.update(progress_table(title, state))
                    for index in range(workers):
                        failure = worker_failure(loads[index], runs[index])
                        if failure is None or waiter.done() or state["done"]:
                            continue
                        hopeless = cannot_train(loads[index], runs[index])
                        if restarts >= max_restarts or hopeless:
                            said = given_up(f"{index}/{workers}", failure, restarts, hopeless=hopeless)
                            raise RunError(said)
                        restarts += 1
                        _log.warning(
                            "worker %d/%d failed; restarting it (%d of %d): %s",
                            *(index, workers, restarts, max_restarts, failure),
                        )
                        ray.kill(handles[index], no_restart=True)
                        create(index)
                        runs[index] = begin(index, address, limits)
            result: RunResult
            result, kept = await call(ray, waiter, "the master actor")
            scope.reschedule(None)  # training has ended: the waits below have bounds of their own
            report(result)
            await call(ray, master.wait.remote(), "the master actor")  # (within its close timeout)
            await _poll(ray, master)  # its last log records
            if runs:
                await asyncio.wait(runs, timeout=30)  # the workers end their sessions on the master's CLOSE
            failed = {
                i: worker_failure(loads[i], run) if run.done() else "still running"
                for i, run in enumerate(runs)
            }
            if result.ok and any(failed.values()):
                # The model is trained and kept, as with the local launcher: a warning, not a failure.
                # (After a failed run the failure says why; its workers' sessions may end in error too.)
                text = "; ".join(f"worker {i}: {why}" for i, why in failed.items() if why)
                _log.warning("worker actors failed at the end of the run: %s", text)
    except TimeoutError:
        if not scope.expired():
            raise
        placed = sum(load.done() for load in loads)
        late = workers - placed  # (not placed for want of room, or placed and still loading: the loads tell)
        unloaded = f"{late} worker actor{'s' * (late > 1)}"
        why = f"; {unloaded} had not loaded the data (no room, or slow)" if late else ""
        raise RunError(f"the run did not finish within {timeout:g} s{why}") from None
    finally:
        stopped_by_error = isinstance(sys.exc_info()[1], RunError)  # (a timeout, a failed worker...)
        if not reported and waiter is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                # Stopped as training ended, before its result came: the result is not lost either.
                if waiter.done() or (await asyncio.wait_for(_poll(ray, master), _STOP))["done"]:
                    await asyncio.wait([waiter], timeout=_STOP)
                    report(waiter.result()[0])
        # A run stopped early (a RunError: it carries the run as it stood), or with a checkpoint to
        # write: the master actor is closed, and so checkpoints the run, before any actor is killed.
        if saving["checkpoint"] is not None or (not reported and (stopped or stopped_by_error)):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                held, partial = await asyncio.wait_for(
                    call(ray, master.stop.remote(), "the master actor"), _STOP
                )
                if partial is not None:
                    figures(partial)
                stood.append((None if held is None else (held[0], held[1]), partial))
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        for future in [*loads, *runs, *([] if waiter is None else [waiter])]:
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a failure that mattered was raised above
            else:
                future.cancel()
    if records is not None:
        records.extend(kept)
    return result


async def _ray_down(start: RayStart) -> None:
    """Wait for Ray's shutdown, whatever cancellations come (once one has, ``SHUTDOWN_GRACE`` s at most).

    A stopped command whose wait was cancelled again exited while Ray was being torn down in its
    thread, and Ray's exit handler then aborted the process (SIGABRT after "stopped by SIGTERM",
    one run in four under load).  The cancellation is raised again once Ray is down.
    """
    cancelled = False
    while not start.down.done():
        try:
            await asyncio.wait_for(asyncio.shield(start.down), SHUTDOWN_GRACE if cancelled else None)
        except asyncio.CancelledError:
            cancelled = True
        except TimeoutError:
            break
    if cancelled:
        raise asyncio.CancelledError


def _master_placement(ray: Any, strategies: Any, master_node: str | None) -> Any:
    """The master actor's scheduling strategy: the named node (hard), else this driver's node (soft)."""
    if master_node is None:
        with contextlib.suppress(Exception):
            here = ray.get_runtime_context().get_node_id()
            if here:
                return strategies.NodeAffinitySchedulingStrategy(node_id=here, soft=True)
        return "DEFAULT"
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        head = "node:__internal_head__" in node.get("Resources", {})
        if master_node in (node.get("NodeID"), node.get("NodeManagerAddress")) or (
            master_node == "head" and head
        ):
            return strategies.NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
    raise UsageError(f"master node {master_node!r}: no live Ray node has that IP address or ID (or: head)")


async def _poll(ray: Any, master: Any) -> dict[str, Any]:
    """The master's progress; its log records are logged here again."""
    state: dict[str, Any] = await call(ray, master.progress.remote(), "the master actor")
    _emit(state["logs"])
    return state


def _emit(logs: list[tuple[str, int, float, str]]) -> None:
    for name, level, created, message in logs:
        logger = logging.getLogger(name)
        if logger.isEnabledFor(level):
            record = logger.makeRecord(name, level, "(master actor)", 0, "%s", (message,), None)
            record.created, record.msecs = created, (created - int(created)) * 1000
            logger.handle(record)
