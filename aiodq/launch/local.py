"""``aiodq run``, ``aiodq master`` and ``aiodq worker``: the processes of a cluster, and live progress.

:func:`run_local` starts a :class:`~aiodq.net.master.Master` in this process and M
worker processes (``python -m aiodq worker``) on 127.0.0.1 and shows live progress
with rich; :mod:`aiodq.launch.results` writes what the run produced.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from ..config import DEFAULT_LIMITS, ConnectionConfig, Limits, MasterConfig
from ..errors import RunError, StoppedError, UsageError
from ..net.master import Master
from ..net.worker import WorkerResult, format_address, run_worker
from ..protocol.accounting import ModelRecord
from ..protocol.algorithms import TrainConfig
from ..protocol.dataset import Dataset, shard
from ..protocol.objectives import BUILT_IN, Objective
from ..protocol.result import RunResult
from .common import (
    Handover,
    as_it_stood,
    check_run_arguments,
    check_shares,
    checkpoint_note,
    live_display,
    load_data_or_fail,
    print_out,
    progress_state,
    progress_table,
)
from .models import import_root, objective_for, refuse_a_run_at_import, start_vector
from .priority import DEFAULT_WORKER_NICE, MAX_NICE, check_nice, lower_priority, resolve_worker_nice
from .processes import CANNOT_TRAIN, WorkerProcess, after_training, ended, exits, stop_workers
from .results import records_saved

__all__ = [
    "DEFAULT_WORKER_NICE",
    "MAX_NICE",
    "RESTART_HINT",
    "check_nice",
    "load_data_or_fail",
    "lower_priority",
    "resolve_worker_nice",
    "master_main",
    "run_cluster",
    "run_coroutine",
    "run_local",
    "use_uvloop",
    "worker_main",
]


_log = logging.getLogger("aiodq.launch")


def use_uvloop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop factory, or None (the default loop) without uvloop or with AIODQ_NO_UVLOOP=1.

    ``0``, ``false``, ``no`` and ``off`` keep uvloop (a review: ``AIODQ_NO_UVLOOP=0`` turned it off).
    """
    if os.environ.get("AIODQ_NO_UVLOOP", "").strip().lower() not in ("", "0", "false", "no", "off"):
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional at run time
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _stoppable(coroutine: Any) -> Any:
    """Await ``coroutine``; SIGTERM and SIGHUP cancel it (its clean-up runs), then raise StoppedError."""
    loop = asyncio.get_running_loop()
    task, received = asyncio.current_task(), list[int]()
    assert task is not None

    def stop(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    stops = [(s, signal.getsignal(s) or signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGHUP)]
    handled = {s: handler for s, handler in stops if handler is not signal.SIG_IGN}  # (nohup's SIGHUP)
    for signum in handled:
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await coroutine
    except asyncio.CancelledError:
        if received:
            raise StoppedError(received[0]) from None
        raise
    finally:
        for signum, handler in handled.items():
            loop.remove_signal_handler(signum)  # (which leaves SIG_DFL: the caller's handler goes back)
            signal.signal(signum, handler)


def run_coroutine(coroutine: Any) -> Any:
    """Run ``coroutine`` on a new event loop, uvloop's where available.

    SIGTERM and SIGHUP (but one ignored when it starts) cancel it, as Ctrl-C does, so that its
    clean-up runs (a local cluster's worker processes are stopped, a worker closes with
    GOING_AWAY); then :class:`StoppedError`.
    """
    with asyncio.Runner(loop_factory=use_uvloop()) as runner:
        return runner.run(_stoppable(coroutine))


# -- aiodq run ----------------------------------------------------------------


def _worker_command(
    host: str,
    port: int,
    index: int,
    workers: int,
    *,
    data: str | None,
    seed: int,
    model: str,
    nice: int = 0,
    limits: Limits = DEFAULT_LIMITS,
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "aiodq",
        "worker",
        "--connect",
        f"{host}:{port}",
        "--shard",
        f"{index}/{workers}",
    ]
    command += ["--seed", str(seed)]
    if data is not None:
        command += ["--data", data]
    if model not in BUILT_IN:
        command += ["--model", model]  # the workers import the user's objective themselves
    if nice:
        command += ["--nice", str(nice)]
    if limits.max_dimension != DEFAULT_LIMITS.max_dimension:  # a model above the default limits
        command += ["--max-dimension", str(limits.max_dimension)]
    if limits.max_frame_bytes != DEFAULT_LIMITS.max_frame_bytes:
        command += ["--max-frame-bytes", str(limits.max_frame_bytes)]
    return command


async def run_local(
    config: TrainConfig,
    data: str | Path | None = None,
    *,
    workers: int = 4,
    progress: bool = False,
    timeout: float = 3600.0,
    master_config: MasterConfig | None = None,
    record_every: int = 0,
    records: list[ModelRecord] | None = None,
    max_restarts: int = 0,
    launcher: str = "local",
    worker_nice: int | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_interval: float = 60.0,
    resume: bool = False,
    start_from: str | Path | npt.ArrayLike | None = None,
    **ray_options: Any,
) -> RunResult:
    """Train on a local cluster: a master in this process, ``workers`` worker processes on 127.0.0.1.

    What ``aiodq run`` does, from Python::

        result = asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=5), workers=2))
        print(result.final_loss, result.model.shape)

    Args:
        config: the run's hyperparameters; ``config.model`` names a built-in model or your
            objective as ``MODULE:NAME`` (importable from the current folder).
        data: a data file or folder (LIBSVM, MNIST CSV or IDX; default: the bundled a9a); the
            workers read it too.
        workers: the number of worker processes M (an integer, 1 or more: else a ``ValueError``).
        progress: show live progress with rich (the ``cli`` extra).
        timeout: give up after this many seconds (more than 0).
        master_config: the master's guard, snapshot deadline and admission limit.
        record_every: with a positive value the master keeps model copies (see
            :class:`~aiodq.protocol.accounting.ModelRecord`).
        records: a list the model copies are appended to.
        max_restarts: restart a worker process that exits with an error, up to this many
            times in all, instead of failing the run (the restarted worker rejoins the session).
        launcher: ``"local"``, or ``"ray"`` for the master and the workers as Ray actors
            (:func:`aiodq.launch.ray.run_ray`).
        worker_nice: with the local launcher, start the workers this many ``nice`` steps below
            the master (0 to 19; None: :data:`DEFAULT_WORKER_NICE`, 4, or 0 where ``os.nice`` is
            missing; a ``TypeError`` with ``launcher="ray"``).  Every update passes through the
            master: one that waits for a core behind a worker's computation keeps every worker
            waiting (docs/results.md, "Workers below the master").  It lowers the workers against
            this session's other processes too, and against every process where the kernel does
            not group processes by session (:func:`lower_priority`); ``result.summary["worker_nice"]``.
        checkpoint: a file the master checkpoints the whole run into (atomically): every
            ``checkpoint_interval`` seconds, when the run stops early (a timeout, a failed worker,
            a cancellation) and, marked done, at its end.  It names the training data's fingerprint
            (``Dataset.fingerprint()``).  Without ``resume`` it must not hold a run still to finish.
        checkpoint_interval: seconds between checkpoints.
        resume: continue the run ``checkpoint`` holds, with the same configuration and data
            (anything else is refused); the workers start afresh and rejoin it.
        start_from: x_0 in place of the model's own starting point (a warm start): a run's
            ``model.npz`` or a ``.npy`` vector (:func:`~aiodq.launch.models.read_start`), or the
            vector itself.  A new run, of ``config.epochs`` more epochs; not with ``resume``.
        **ray_options: with ``launcher="ray"``, :func:`~aiodq.launch.ray.run_ray`'s own options
            (``address``, ``worker_cpus``, ``master_node``, ``bind_host``...); a ``TypeError``
            with the local launcher.

    Returns:
        The trained model and the run's figures.  A run that ended without finishing its
        epochs (it diverged) returns normally, with the reason in ``result.failure``.

    Raises:
        RunError: if the data cannot be read, a worker process fails (beyond ``max_restarts``)
            or the run times out.
        UsageError: if the model cannot be loaded or does not fit the data, or the data has
            fewer samples than ``workers``.
        ValueError: if ``worker_nice`` is not an integer in 0..19, ``workers`` or ``max_restarts``
            not an integer (1 or more, 0 or more), ``timeout`` not above 0.
        TypeError: for ``worker_nice`` or ``ray_options`` with the wrong launcher, or ``data``
            that is not a path (a :class:`~aiodq.protocol.dataset.Dataset`: ``run_ray`` takes one).
        CheckpointError: if the checkpoint cannot be written, or (``resume``) read or used.
    """
    refuse_a_run_at_import()
    common: dict[str, Any] = {
        "workers": workers,
        "progress": progress,
        "timeout": timeout,
        "master_config": master_config,
        "record_every": record_every,
        "records": records,
        "max_restarts": max_restarts,
    }
    resolve_worker_nice(worker_nice)  # refused before any data is read
    check_run_arguments(workers, timeout, max_restarts)
    if launcher not in ("local", "ray"):
        raise ValueError(f"launcher must be 'local' or 'ray', not {launcher!r}")
    if ray_options:
        from .ray import run_ray  # noqa: PLC0415 - (imports no ray)

        named = set(inspect.signature(run_ray).parameters) - set(inspect.signature(run_local).parameters)
        if unknown := sorted(set(ray_options) - named):
            said = "an unexpected keyword argument" if len(unknown) == 1 else "unexpected keyword arguments"
            raise TypeError(f"run_local() got {said}: {', '.join(unknown)}")
    if launcher == "ray":
        if worker_nice is not None:
            raise TypeError("worker_nice applies to the local launcher only")
        from .ray import run_ray  # noqa: PLC0415 - ray is an extra, imported only when asked for

        return await run_ray(
            config,
            data,
            checkpoint=checkpoint,
            checkpoint_interval=checkpoint_interval,
            resume=resume,
            start_from=start_from,
            **common,
            **ray_options,
        )
    if ray_options:
        raise TypeError(f"options for --launcher ray only: {', '.join(sorted(ray_options))}")
    start_from = start_vector(start_from, config, resume=resume)
    if data is not None and not isinstance(data, str | os.PathLike):
        raise TypeError(
            f"run_local's data is a file or folder that the worker processes read too, not a "
            f"{type(data).__name__} (a Dataset in memory trains with run_ray, or in-process with simulate)"
        )
    dataset = await asyncio.to_thread(load_data_or_fail, None if data is None else str(data))  # off-loop
    data_path = None if data is None else os.path.abspath(data)  # (not resolved, as aiodq run records it)
    fingerprint = await asyncio.to_thread(dataset.fingerprint)  # (before the factory: it may edit the data)
    objective = await asyncio.to_thread(objective_for, config, dataset, training_set=True)
    return await run_cluster(
        config,
        dataset,
        data_path,
        objective,
        data_fingerprint=fingerprint,
        worker_nice=worker_nice,
        checkpoint=checkpoint,
        checkpoint_interval=checkpoint_interval,
        resume=resume,
        start_from=start_from,
        **common,
    )


#: How long a worker's exit on SIGINT waits for this process's own SIGINT before it counts as a failure.
_SIGINT_GRACE = 1.0
RESTART_HINT = " (aiodq run --max-restarts N, or run_local(max_restarts=N), starts another in its place)"


async def run_cluster(
    config: TrainConfig,
    dataset: Dataset,
    data_path: str | None,
    objective: Objective,
    *,
    workers: int,
    progress: bool,
    timeout: float,
    master_config: MasterConfig | None,
    record_every: int = 0,
    records: list[ModelRecord] | None = None,
    max_restarts: int = 0,
    worker_nice: int | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_interval: float = 60.0,
    resume: bool = False,
    start_from: npt.ArrayLike | None = None,
    finished: Callable[[RunResult], None] | None = None,
    stopped: Callable[[RunResult], None] | None = None,
    data_fingerprint: str | None = None,
) -> RunResult:
    """:func:`run_local` on a dataset already loaded (from ``data_path``) and its objective.

    ``data_fingerprint``: the data's, taken before the objective was built on it (a factory may edit
    its arrays in place; the workers take theirs before theirs); None: taken now.

    ``finished`` gets the result as soon as training has ended, before the workers' exit is
    awaited, and also when the run is stopped after that (``aiodq run`` writes its files then: a
    stop while the workers exit loses nothing).  The result returned comes after the workers'
    exit: its traffic also counts their last CLOSE frames.  ``stopped`` gets the run as it stood
    (its ``failure`` not set) when the run is cancelled before training has ended.

    Raises:
        ValueError: if ``worker_nice`` is not an integer in 0..19 (None: :func:`resolve_worker_nice`).
        RunError: as :func:`run_local`; when a checkpoint kept the run as it stood, the message
            says so.
    """
    nice = resolve_worker_nice(worker_nice)
    check_shares(dataset.samples, workers)  # (before a worker process fails on it)
    # The local cluster authenticates too: a fresh secret, handed to the workers in their environment.
    secret = secrets.token_hex(32)
    try:  # its own model's size sets the limits, which protect against strangers' (wire-format.md 10)
        limits = DEFAULT_LIMITS.fitting(objective.dim)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    connection_config = ConnectionConfig(secret=secret.encode(), limits=limits)
    try:
        master = Master(
            config,
            objective,
            workers=workers,
            host="127.0.0.1",
            port=0,
            connection_config=connection_config,
            record_every=record_every,
            master_config=master_config,
            samples=dataset.samples,
            checkpoint=checkpoint,
            checkpoint_interval=checkpoint_interval,
            resume=resume,
            data_fingerprint=data_fingerprint or dataset.fingerprint(),  # (a data audit: a file swapped)
            start_from=start_from,
        )
    except (TypeError, ValueError) as exc:  # a start_from of another size, say
        raise UsageError(str(exc)) from exc
    restarts = 0

    def figures(result: RunResult) -> None:
        result.summary.update(
            dataset=dataset.name, data_path=data_path, worker_restarts=restarts, worker_nice=nice
        )

    handover = Handover(master, figures, finished)
    try:
        async with master:
            if master.resumed_finished:  # its results again, no worker needed
                return handover(await master.trained(timeout))
            host, port = master.address
            # One compute thread per worker process (BLAS, OpenMP: torch's too) unless the user says
            # otherwise: M processes share the machine's cores, and idle threads spin on them.
            env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1", "AIODQ_SECRET": secret}
            # A user model found beside the caller's script: the workers start in the current folder.
            if (root := import_root(config.model)) is not None:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, (env.get("PYTHONPATH"), root)))

            def start(index: int) -> Awaitable[WorkerProcess]:
                command = _worker_command(
                    host,
                    port,
                    index,
                    workers,
                    data=data_path,
                    seed=config.seed,
                    model=config.model,
                    nice=nice,
                    limits=connection_config.limits,
                )
                return WorkerProcess.start(index, workers, command, env)

            processes: list[WorkerProcess] = []
            waiter: asyncio.Task[RunResult] | None = None

            title = f"aiodq run: {config.algorithm}, {workers} workers"

            def table() -> Any:
                return progress_table(title, progress_state(master))

            try:
                # Started inside the try: a failure or a cancellation part way leaves none running.
                for index in range(workers):
                    processes.append(await start(index))
                waiter = asyncio.create_task(master.trained(timeout))
                with live_display(table, progress) as live:
                    while not waiter.done():
                        for index, worker in enumerate(processes):
                            if not worker.failed or (master.coordinator and master.coordinator.done):
                                continue  # (once training has ended, after_training reports it)
                            if worker.interrupted:
                                # A terminal's Ctrl-C goes to the whole process group: this process's own
                                # SIGINT, which stops the run, may come a moment after the worker's exit.
                                await asyncio.sleep(_SIGINT_GRACE)
                            message = (await worker.stderr_tail()).strip()
                            if master.coordinator and master.coordinator.done:
                                continue  # training ended during those waits
                            status = worker.returncode
                            if restarts >= max_restarts or status == CANNOT_TRAIN:
                                said = message[-2000:] or "(nothing on stderr)"
                                after = f" (after {restarts} restart{'s' * (restarts != 1)})" * (restarts > 0)
                                if not restarts and status != CANNOT_TRAIN:  # (else another would fail alike)
                                    after = RESTART_HINT
                                raise RunError(
                                    f"worker process {index}/{workers} {ended(status)}: {said}{after}"
                                )
                            # The protocol lets a worker rejoin: start another on the same shard.
                            restarts += 1
                            _log.warning(
                                "worker process %d/%d %s; restarting it (%d of %d)%s",
                                index,
                                workers,
                                ended(status),
                                restarts,
                                max_restarts,
                                f": {message.splitlines()[-1]}" if message else "",
                            )
                            await stop_workers([worker])  # its stderr read to the end
                            processes[index] = await start(index)
                        pending: list[asyncio.Future[Any]] = [waiter]
                        pending += exits([w for w in processes if not w.has_exited])
                        await asyncio.wait(pending, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                        if live is not None:
                            live.update(table())
                try:
                    trained = waiter.result()
                except TimeoutError:
                    raise RunError(f"the run did not finish within {timeout:g} s") from None
                # A run that ended early (its workers did not all join) sent them GOING_AWAY, after which
                # they would retry for their --retry-for: nothing to retry for, the clean-up stops them.
                if handover(trained).ok:
                    await after_training(processes)
                result = handover.current()  # (the workers gone: the traffic counts their last CLOSEs)
            finally:
                handover.if_trained()  # (stopped as training ended, before the waiter woke)
                # Stopped early: training first (the model stays as it stood), so that the workers'
                # exits end no snapshot phase on the reports of those that happened to report.
                master.stop_training()
                await stop_workers(processes)
                if waiter is not None:
                    waiter.cancel()
            if records is not None and master.coordinator is not None:
                records.extend(master.coordinator.records)
    except (RunError, asyncio.CancelledError) as exc:
        # The master checkpointed the run as it stood when it closed: say where, so it is not lost; the
        # error (and a cancellation, to ``stopped``) carries the run as it stood (model: the last snapshot).
        if master.coordinator is None or master.coordinator.done:
            raise
        stood = handover.current()
        if not isinstance(exc, RunError):
            if stopped is not None:
                stopped(stood)
            raise
        message = f"{exc}{checkpoint_note(checkpoint, master.checkpointed)}"
        raise RunError(message, result=as_it_stood(stood, message)) from exc
    return result


# -- aiodq master / aiodq worker ------------------------------------------------


async def master_main(
    config: TrainConfig,
    dataset: Dataset,
    objective: Objective,
    *,
    host: str,
    port: int,
    workers: int,
    records_path: Path | None = None,
    finished: Callable[[RunResult], None] | None = None,
    stopped: Callable[[RunResult], None] | None = None,
    **options: Any,
) -> RunResult:
    """``aiodq master``: serve until training finishes; return the trained model and figures.

    ``options`` go to :class:`~aiodq.net.master.Master` (TLS, connection config, checkpoints,
    ``record_every``); with ``records_path`` the model records are saved there as training ends
    (but for a finished run resumed from an earlier version's checkpoint, which holds none).
    ``finished`` gets the result then, before the workers' connections have closed (and when a stop
    comes right then); ``stopped`` the run as it stood (``failure`` not set) if cancelled before that.
    """
    options.setdefault("samples", dataset.samples)
    options.setdefault("data_fingerprint", dataset.fingerprint())  # workers with other data refuse the run
    async with Master(config, objective, workers=workers, host=host, port=port, **options) as master:
        address = format_address(*master.address)
        if not master.resumed_finished:  # (a finished run resumed waits for none)
            print_out(f"aiodq master listening on {address}, waiting for {workers} workers", "master")
        saved: list[dict[str, str]] = []

        def figures(result: RunResult) -> None:
            # The records with the results as training ends: a stop then loses neither (an audit lost them).
            kept = master.coordinator.records if master.coordinator and master.coordinator.done else None
            if records_path and kept is not None and (kept or not master.resumed_finished):
                saved[:] = saved or [records_saved(kept, records_path)]
                result.summary.update(saved[0])
            result.summary.update(dataset=dataset.name)

        handover = Handover(master, figures, finished)
        try:
            handover(await master.trained())
            result = await master.wait()
        except asyncio.CancelledError:
            if stopped is not None and master.coordinator is not None and not master.coordinator.done:
                master.stop_training()  # the model as the close will checkpoint it
                stopped(handover.current())
            raise
        finally:
            handover.if_trained()
    figures(result)
    return result


async def worker_main(
    host: str,
    port: int,
    dataset: Dataset,
    *,
    index: int,
    workers: int,
    seed: int,
    model: str | None = None,
    **options: Any,
) -> WorkerResult:
    """``aiodq worker``: train on shard ``index`` of ``workers`` until the master closes.

    With ``model`` (``MODULE:NAME``) the worker trains that objective on its shard; without, the
    built-in model the master's CONFIG names.  ``options`` go to
    :func:`~aiodq.net.worker.run_worker` (TLS, connection config, retries).

    Raises:
        UsageError: if ``model`` cannot be loaded or does not fit the shard.
    """
    rows = shard(dataset.samples, workers, index, seed=seed)
    part = dataset.rows(rows)
    # Checked against a master that names its data in CONFIG; taken before connecting (0.1 s for debdesc).
    options.setdefault("data_fingerprint", dataset.fingerprint())
    # Several workers share the machine's cores: one BLAS thread each avoids oversubscription.
    threadpool_limits(1, user_api="blas")
    name = f"shard-{index}/{workers}"
    if model is not None and model not in BUILT_IN:
        objective = objective_for(TrainConfig(model=model), part)
        return await run_worker(
            host,
            port,
            objective=objective,
            model=model,  # a master training another model is refused, even of the same dimension
            name=name,
            shard=(index, workers),
            shard_seed=seed,
            **options,
        )
    return await run_worker(
        host,
        port,
        part.features,
        part.labels,
        name=name,
        model=model,  # (a built-in's name: a master training another is refused)
        label_values=np.unique(dataset.labels),
        shard=(index, workers),
        shard_seed=seed,
        **options,
    )
