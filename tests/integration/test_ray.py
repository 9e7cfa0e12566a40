"""The Ray launcher (#12): a9a to within 1 % through Ray actors, a killed worker actor, a timeout.

Every Ray instance here is local and on 127.0.0.1 only: Ray takes the node's address from
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (read when ray is imported), and the master binds
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # a local node on the loopback only
ray = pytest.importorskip("ray", reason="the Ray launcher needs ray: pip install 'aiodq[ray]'")

from aiodq import LogisticRegression  # noqa: E402
from aiodq import load_dataset as aiodq_load  # noqa: E402
from aiodq.errors import RunError  # noqa: E402
from aiodq.launch.ray import run_ray  # noqa: E402
from aiodq.launch.ray_start import RayStart  # noqa: E402
from aiodq.protocol.algorithms import TrainConfig  # noqa: E402

from .cluster import (  # noqa: E402
    A9A,
    A9A_HEAD,
    LEAST_SQUARES,
    ROOT,
    alive,
    edited_fixture,
    logistic_optimum,
    poll_until,
    wait_until,
)

LOOPBACK = "127.0.0.1"


def descendants(pid: int) -> set[int]:
    """Every live process under ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def aiodq_actors() -> list[str]:
    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)]
    return [name for name in names if name.startswith("aiodq-")]


class Epochs(logging.Handler):
    """Counts the master's epoch lines, which the driver logs again from the master actor."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("epoch "):
            self.count += 1


@pytest.fixture
def epochs() -> Iterator[Epochs]:
    handler = Epochs()
    logger = logging.getLogger("aiodq.master")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def within_one_percent(result: Any) -> None:
    best = logistic_optimum(A9A, result.config.l2)
    final = result.trace[-1]
    assert final.samples == A9A.samples
    assert (final.loss - best) / best < 0.01, (final.loss, best)


@pytest.mark.asyncio
async def test_a9a_trains_to_within_one_percent_and_ray_is_left_clean(
    epochs: Epochs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_ray starts a local Ray instance, trains a9a with 3 worker actors, and leaves no process behind;
    Ray's start and shutdown (seconds each) leave the caller's event loop running."""
    assert not ray.is_initialized()
    seen: set[int] = set()
    ticks = 0
    during: dict[str, int] = {}

    async def watch() -> None:
        nonlocal ticks
        while True:
            seen.update(descendants(os.getpid()))
            ticks += 1
            await asyncio.sleep(0.05)

    def counted(name: str, call: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            before = ticks
            try:
                return call(*args, **kwargs)
            finally:
                during[name] = ticks - before

        return run

    for name in ("init", "shutdown"):
        monkeypatch.setattr(ray, name, counted(name, getattr(ray, name)))
    watcher = asyncio.create_task(watch())
    try:
        result = await run_ray(TrainConfig(epochs=4), workers=3, bind_host=LOOPBACK, timeout=120)
    finally:
        watcher.cancel()
    assert during["init"] >= 2 and during["shutdown"] >= 1, during  # 0 and 0 when they blocked the loop
    assert result.ok, result.failure
    within_one_percent(result)
    assert result.summary["worker_restarts"] == 0 and result.summary["worker_nice"] is None  # (usage.md)
    assert os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] == "1"  # (ray.md: set for the process)
    assert result.summary["workers"] == 3
    assert result.summary["dataset"] == "a9a"
    assert result.summary["ray"]["master"].startswith(f"{LOOPBACK}:")
    assert result.summary["ray"]["local_instance"] is True
    assert epochs.count == 5  # the master's log lines reached this process
    # Ray is shut down and every process it started (GCS, raylet, the actors) is gone.
    assert not ray.is_initialized()
    assert len(seen) >= 3, seen
    await wait_until(lambda: not any(alive(pid) for pid in seen), 15, f"the exit of Ray processes {seen}")


@pytest.mark.asyncio
async def test_a_killed_worker_actor_is_replaced_and_the_run_reaches_the_optimum(epochs: Epochs) -> None:
    """max_restarts=1: the worker actor killed mid-run is replaced on its shard; the run ends within 1 %."""
    killed: list[str] = []

    async def kill_one() -> None:
        await wait_until(lambda: epochs.count >= 3, 60, "training never got going")
        name = next(name for name in aiodq_actors() if name.endswith("-worker-0-0"))
        ray.kill(ray.get_actor(name))
        killed.append(name)

    killer = asyncio.create_task(kill_one())
    try:
        result = await run_ray(
            TrainConfig(epochs=10), workers=3, bind_host=LOOPBACK, timeout=120, max_restarts=1
        )
    finally:
        killer.cancel()
    assert killed, "no worker actor was killed"
    assert result.ok, result.failure
    assert result.summary["worker_restarts"] == 1
    within_one_percent(result)


CTRL_C = """
import logging, os, signal, sys
# A terminal's foreground job takes Ctrl-C whatever its parent did with SIGINT; a test suite started
# in the background by a shell without job control inherits SIGINT ignored, and so would this child.
signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from aiodq.launch.local import run_coroutine
from aiodq.launch.ray import run_ray
from aiodq.protocol.algorithms import TrainConfig
try:
    run_coroutine(run_ray(TrainConfig(epochs=1000), workers=2, bind_host="127.0.0.1", timeout=120))
except KeyboardInterrupt:
    import ray
    print("interrupted; Ray initialised:", ray.is_initialized(), flush=True)
    sys.exit(130)
"""


def test_ctrl_c_stops_the_run_and_every_ray_process(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the foreground process group) mid-run: the driver returns, nothing of Ray is left."""
    log = tmp_path / "stderr"
    with log.open("w") as stderr:
        run = subprocess.Popen(
            [sys.executable, "-c", CTRL_C],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=ROOT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    try:
        poll_until(lambda: "epoch 2:" in log.read_text() or run.poll() is not None, 90, "epoch 2")
        assert run.poll() is None, log.read_text()[-3000:]
        ray_processes = descendants(run.pid)
        os.killpg(run.pid, signal.SIGINT)
        stdout, _ = run.communicate(timeout=30)
    finally:
        run.kill()
    assert run.returncode == 130, log.read_text()[-3000:]
    assert stdout.strip() == "interrupted; Ray initialised: False"
    assert len(ray_processes) >= 4, ray_processes  # GCS, raylet, the master and the workers
    poll_until(lambda: not any(alive(pid) for pid in ray_processes), 15, "Ray processes outliving Ctrl-C")


def read_or_empty(path: Path) -> str:
    """The file's text, or "" while it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_sigterm_stops_a_ray_run_writing_the_run_as_it_stood(tmp_path: Path) -> None:
    """A newcomer trial: SIGTERM to aiodq run --launcher ray aborted it (exit 134, Ray's crash handler
    for SIGTERM, installed for the whole process by its core worker), with no 'stopped by SIGTERM' and
    no plot.  Now it stops as with the local launcher: 143, the run as it stood written, nothing of Ray
    left.  (A SIGTERM to the whole process group still reaches Ray's own processes at the same moment,
    and the driver, its raylet gone, aborts: ray.md says so.)"""
    out, log = tmp_path / "out", tmp_path / "stderr"
    command = [
        sys.executable,
        "-m",
        "aiodq",
        "run",
        "--launcher",
        "ray",
        "--epochs",
        "1000",
        "--workers",
        "2",
    ]
    environment = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    environment.pop("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)  # (as a user's shell has it)
    with log.open("w") as stderr:
        run = subprocess.Popen(
            [*command, "--no-progress", "--out", str(out), "--ray-bind", LOOPBACK],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=ROOT,
            env=environment,
            start_new_session=True,
        )
    try:
        epochs = out / "aiodq.log"  # (--no-progress: the epochs are in the log)
        poll_until(lambda: "epoch 2:" in read_or_empty(epochs) or run.poll() is not None, 90, "epoch 2")
        assert run.poll() is None, log.read_text()[-3000:]
        ray_processes = descendants(run.pid)
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
    finally:
        run.kill()
    said = log.read_text()
    assert run.returncode == 128 + signal.SIGTERM, said[-3000:]
    assert said.strip().splitlines()[-1] == "aiodq run: stopped by SIGTERM", said[-3000:]
    assert "aiodq run: the run as it stood, at epoch " in said, said[-3000:]
    written = json.loads((out / "result.json").read_text())
    assert written["failure"] == "stopped by SIGTERM" and (out / "loss_vs_bits.png").exists()
    poll_until(lambda: not any(alive(pid) for pid in ray_processes), 30, "Ray processes outliving SIGTERM")


def test_without_ray_the_command_says_which_extra_to_install(tmp_path: Path) -> None:
    """No ray: an ImportError naming the extra, and aiodq run --launcher ray exits with status 2."""
    code = (
        "import sys\n"
        "sys.modules['ray'] = None  # as if ray were not installed\n"
        "from aiodq.cli import main\n"
        f"sys.exit(main(['run', '--launcher', 'ray', '--no-progress', '--out', {str(tmp_path)!r}]))\n"
    )
    command = [sys.executable, "-c", code]
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "pip install 'aiodq[ray]'" in run.stderr
    assert list(tmp_path.iterdir()) == []  # nothing made in --out: no aiodq.log either (a newcomer trial)


def test_a_usage_error_once_the_run_began_is_in_its_log_too(tmp_path: Path) -> None:
    """A Ray user's audit: an unknown --ray-master-node (found once Ray is up) exited 2 with one line on
    stderr, and aiodq.log held the command line only. That line is all of stderr: Ray's warning that it
    turned its token authentication on (RAY_AUTH_MODE unset) is left out (an audit)."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "aiodq", "run", "--launcher", "ray", "--ray-master-node", "bogus",
               "--workers", "1", "--epochs", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    run = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False, env=environment
    )
    said = "aiodq run: master node 'bogus': no live Ray node has that IP address or ID (or: head)"
    assert run.returncode == 2 and run.stderr == said + "\n", run.stderr[-3000:]
    assert (out / "aiodq.log").read_text().splitlines()[-1].endswith(f"aiodq.cli ERROR {said}")


@pytest.mark.asyncio
async def test_cancelled_while_ray_starts_it_shuts_the_instance_down() -> None:
    """Cancelled half a second in (Ray takes seconds to start, in a thread): the instance started
    anyway is shut down, not left for the next run_ray to take as the caller's own."""
    assert not ray.is_initialized()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run_ray(TrainConfig(epochs=1), workers=1, bind_host=LOOPBACK, timeout=60), 0.5)
    assert not ray.is_initialized()
    await wait_until(lambda: not descendants(os.getpid()), 15, "the exit of Ray's processes")


@pytest.mark.asyncio
async def test_a_worker_actor_given_other_data_is_refused_and_the_masters_data_trains(tmp_path: Path) -> None:
    """The Ray master actor always names its data in CONFIG (workers on other nodes may read another copy
    of the file): a worker actor whose file differs in one value is refused (INVALID_CONFIG), one on the
    master's file trains.  The actor classes are driven directly, without starting Ray."""
    from aiodq.errors import ErrorCode  # noqa: PLC0415
    from aiodq.launch.ray_actors import MasterActor, Secret, WorkerActor  # noqa: PLC0415
    from aiodq.launch.ray_failures import cannot_train  # noqa: PLC0415

    source, other = A9A_HEAD, edited_fixture(tmp_path)
    outcomes = []
    for data in (other, source):
        master, secret = MasterActor(), Secret(b"s" * 32)
        host, port, limits, _ = await master.start(
            TrainConfig(epochs=1), source=str(source), workers=1, secret=secret, bind_host="127.0.0.1",
            master_config=None, record_every=0, saving={},
        )  # fmt: skip
        try:
            worker = WorkerActor()
            worker.load(str(data))
            run = asyncio.to_thread(
                worker.run,
                host,
                port,
                index=0,
                workers=1,
                seed=0,
                model="logistic",
                secret=secret,
                limits=limits,
            )
            outcomes.append(await asyncio.wait_for(run, 120))
        finally:
            await master.stop()
    refused, trained = outcomes
    assert refused[0] == int(ErrorCode.INVALID_CONFIG) and refused[2] == 0
    assert refused[1].startswith("this worker's data (fingerprint blake2b:")
    assert trained[:2] == (0, "training complete") and trained[2] > 0
    # The refusal is the worker's own: run_ray starts no other in its place (a review: it restarted one,
    # within max_restarts, to be refused alike); a session that trained is not.
    assert refused[4] is True and trained[4] is False
    for outcome, refusal in ((refused, True), (trained, False)):
        future = asyncio.get_running_loop().create_future()
        future.set_result(outcome)
        loaded = asyncio.get_running_loop().create_future()
        loaded.set_result(300)
        assert cannot_train(loaded, future) is refusal


@pytest.mark.asyncio
async def test_a_model_whose_factory_edits_its_data_in_place_trains_through_the_actors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master actor takes its data's fingerprint before the model's factory, as the workers do: a
    factory that changes the labels it is given in place (-1 to 0) made the master name data the workers
    did not have, and every worker was refused as holding other data."""
    from aiodq.launch.ray_actors import MasterActor, Secret, WorkerActor  # noqa: PLC0415

    (tmp_path / "edits_in_place.py").write_text(
        LEAST_SQUARES.replace(
            "    def __init__(self, features, labels):\n",
            "    def __init__(self, features, labels):\n        labels[labels < 0] = 0  # in place\n",
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = "edits_in_place:LeastSquares"
    master, secret = MasterActor(), Secret(b"s" * 32)
    host, port, limits, _ = await master.start(
        TrainConfig(epochs=1, step=0.05, model=model), source=str(A9A_HEAD), workers=1, secret=secret,
        bind_host=LOOPBACK, master_config=None, record_every=0, saving={},
    )  # fmt: skip
    try:
        worker = WorkerActor()
        worker.load(str(A9A_HEAD))
        run = asyncio.to_thread(
            worker.run, host, port, index=0, workers=1, seed=0, model=model, secret=secret, limits=limits
        )
        code, reason, gradients, ok, cannot_train = await asyncio.wait_for(run, 120)
    finally:
        await master.stop()
    assert (code, reason, ok, cannot_train) == (0, "training complete", True, False)
    assert gradients > 0


@pytest.mark.asyncio
async def test_the_master_actor_refuses_a_start_vector_of_another_size_as_a_usage_error() -> None:
    """One line at the driver (a UsageError passes through Ray), not a ValueError's traceback."""
    from aiodq.errors import UsageError  # noqa: PLC0415
    from aiodq.launch.ray_actors import MasterActor, Secret  # noqa: PLC0415

    master = MasterActor()
    with pytest.raises(UsageError, match="the model to start from has 3 parameters; LogisticRegression has"):
        await master.start(
            TrainConfig(epochs=1), source=str(A9A_HEAD), workers=1, secret=Secret(b"s" * 32),
            bind_host=LOOPBACK, master_config=None, record_every=0, saving={"start_from": np.zeros(3)},
        )  # fmt: skip
    await master.stop()


def test_a_ray_address_where_no_cluster_answers_fails_within_the_timeout(tmp_path: Path) -> None:
    """A deployment trial: a wrong --ray-address kept `aiodq run` waiting on Ray's start past its --timeout
    and its SIGTERM (Ray retries for ever).  It fails within the timeout, saying which address, and exits
    (the start is left to a daemon thread)."""
    with socket.socket() as bound:  # a port with no cluster behind it (bound, not listening)
        bound.bind((LOOPBACK, 0))
        address = f"{LOOPBACK}:{bound.getsockname()[1]}"
        command = ["run", "--launcher", "ray", "--ray-address", address, "--timeout", "4", "--no-progress"]
        run = subprocess.run(
            [sys.executable, "-m", "aiodq", *command, "--out", str(tmp_path / "out")],
            capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
        )  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    said = (
        f"aiodq run: cannot reach the Ray cluster at {address} within 4 s (the timeout; Ray's log says why)"
    )
    assert said in run.stderr.splitlines(), run.stderr[-3000:]


def test_rays_text_for_a_dead_actor_is_cut_so_what_follows_is_read() -> None:
    """A deployment trial missed the checkpoint's note after Ray's 900 characters on OOM killers: each of the
    two lines kept of Ray's text is cut at 300 characters, at a word."""
    from aiodq.launch.ray_failures import describe as _describe  # noqa: PLC0415

    advice = "Some common causes include: " + "the process was killed by the OOM killer, " * 20
    text = f"The actor died unexpectedly before finishing this task.\n\tclass_name: MasterActor\n{advice}"
    said = _describe(RuntimeError(text))
    first, last = said.split(" ... ")
    assert first == "The actor died unexpectedly before finishing this task."
    kept = last.removesuffix("...")
    assert len(last) <= 300 and last != kept and advice.startswith(kept) and advice[len(kept)] == " "


def test_rays_header_and_colours_are_left_out_of_what_is_said() -> None:
    """A Ray user's audit: an actor's exception came out as ``\\x1b[36mray::MasterActor.start()\\x1b[39m
    (pid=6745, ip=127.0.0.1, actor_id=..., repr=<...>) ...``, colour codes and all."""
    from aiodq.launch.ray_failures import describe  # noqa: PLC0415

    text = (
        "\x1b[36mray::MasterActor.start()\x1b[39m (pid=6745, ip=127.0.0.1, actor_id=cf45ab, "
        'repr=<aiodq.launch.ray_actors.MasterActor object at 0x7f00>)\n  File "x.py", line 3, in start\n'
        "    raise ValueError\nValueError: \x1b[31m3 samples cannot be split across 5 workers\x1b[0m"
    )
    assert describe(RuntimeError(text)) == (
        'File "x.py", line 3, in start ... ValueError: 3 samples cannot be split across 5 workers'
    )


@pytest.mark.asyncio
async def test_a_worker_whose_model_or_data_cannot_be_loaded_is_not_restarted() -> None:
    """A Ray user's audit: a worker actor whose model raised on its share (a UsageError in the actor) was
    restarted up to max_restarts, where the local launcher's exit status 2 is never restarted."""
    from aiodq.errors import DataError, UsageError  # noqa: PLC0415
    from aiodq.launch.ray_failures import cannot_train  # noqa: PLC0415

    class FailedError(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__(str(cause))
            self.cause = cause  # as Ray's RayTaskError carries the actor's exception

    loop = asyncio.get_running_loop()

    def done(outcome: object) -> asyncio.Future[Any]:
        future = loop.create_future()
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
        return future

    from aiodq.launch.ray_actors import WorkerActor  # noqa: PLC0415

    with pytest.raises(DataError) as unreadable:  # what the actor raises (a review: it was a RunError)
        WorkerActor().load("/nonexistent/data")
    running = loop.create_future()
    for cause, expected in ((UsageError("--model m:f: KeyError"), True), (unreadable.value, True),
                            (DataError("bad"), True), (RuntimeError("the actor died"), False)):  # fmt: skip
        assert cannot_train(done(300), done(FailedError(cause))) is expected, cause
        assert cannot_train(done(FailedError(cause)), running) is expected, cause
    running.cancel()


@pytest.mark.asyncio
async def test_the_master_actor_refuses_data_other_than_the_drivers_and_more_workers_than_samples(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ray user's audit: a file swapped under the master actor (or a node's copy that differs) trained
    with exit 0, and the driver warned of a missing shard instead; 5 workers on 3 samples failed each
    worker with Ray's traceback of a ValueError.  A master that cannot listen says so in one line."""
    from aiodq.errors import RunError, UsageError  # noqa: PLC0415
    from aiodq.launch.ray_actors import MasterActor, Secret  # noqa: PLC0415

    async def start(**changes: Any) -> None:
        master = MasterActor()
        options: dict[str, Any] = {
            "source": str(A9A_HEAD), "workers": 1, "secret": Secret(b"s" * 32), "bind_host": LOOPBACK,
            "master_config": None, "record_every": 0, "saving": {},
        }  # fmt: skip
        try:
            await master.start(TrainConfig(epochs=1), **options | changes)
        finally:
            await master.stop()

    other = "blake2b:" + "0" * 32
    with pytest.raises(RunError, match=rf"reads other data at {re.escape(str(A9A_HEAD))} \(fingerprint "):
        await start(saving={"data_fingerprint": other})
    await start(saving={"data_fingerprint": aiodq_load(str(A9A_HEAD)).fingerprint()})  # the same: it starts
    with pytest.raises(UsageError, match=r"^300 samples cannot be shared by 301 workers$"):
        await start(workers=301)

    async def cannot_listen(self: object) -> None:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr("aiodq.launch.ray_actors.Master.start", cannot_listen)
    with pytest.raises(RunError, match=f"^the master cannot listen on {LOOPBACK}: Address already in use$"):
        await start()


class _FakeRay:
    """ray's init, is_initialized and shutdown, recording the threads they ran in; init waits for ``go``."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.threads: list[threading.Thread] = []
        self.initialized = False

    def init(self, **options: Any) -> None:
        self.go.wait(60)
        self.threads.append(threading.current_thread())
        self.initialized = True

    def is_initialized(self) -> bool:
        return self.initialized

    def shutdown(self) -> None:
        self.threads.append(threading.current_thread())
        self.initialized = False


@pytest.mark.asyncio
async def test_the_thread_that_starts_ray_stops_it_and_lives_until_then() -> None:
    """A local instance's GCS and raylet die with the thread that started them (Linux's parent-death signal
    is the thread's): a version whose starting thread ended after ray.init lost its GCS a minute into the
    run.  One daemon thread starts Ray and, once told to, shuts it down; it lives until then."""
    fake = _FakeRay()
    fake.go.set()
    start = RayStart(fake, address="local")
    await asyncio.wait_for(asyncio.shield(start.started), 30)
    thread = fake.threads[0]
    assert thread is not threading.current_thread() and thread.daemon
    assert thread.is_alive()  # done with the start, still there
    start.stop()
    await asyncio.wait_for(start.down, 30)
    assert fake.threads == [thread, thread] and not fake.initialized and start.ended.is_set()
    await wait_until(lambda: not thread.is_alive(), 30, "the thread's end")


@pytest.mark.asyncio
async def test_a_start_abandoned_at_the_timeout_is_shut_down_when_it_ends_and_blocks_the_next() -> None:
    """A review: a start that timed out went on in its thread, succeeded later, and the next run_ray took
    the instance for the caller's own and never shut it down.  The abandoned start's thread shuts Ray down
    when ray.init returns; until then another run_ray in the process is refused."""
    fake = _FakeRay()
    start = RayStart(fake, address="local")  # its init waits for fake.go: a start that does not end
    start.stop()  # abandoned, as at the timeout
    with pytest.raises(RunError, match=r"^Ray was started in this process by a run_ray that has not ended"):
        await run_ray(TrainConfig(epochs=1), workers=1, bind_host=LOOPBACK, timeout=30)

    # The caller starts Ray meanwhile (as the refusal advises): that instance is the caller's, and a run_ray
    # goes on to use it (a review: it was refused while the abandoned start hung).
    class ReachedError(Exception):
        pass

    async def reached(*args: Any, **kwargs: Any) -> None:
        raise ReachedError

    callers = type("CallersRay", (), {"is_initialized": staticmethod(lambda: True)})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("aiodq.launch.ray.import_ray", lambda: callers)
        patch.setattr("aiodq.launch.ray._run", reached)
        with pytest.raises(ReachedError):
            await run_ray(TrainConfig(epochs=1), workers=1, bind_host=LOOPBACK, timeout=30)
    fake.go.set()  # the start ends after all
    await asyncio.wait_for(start.down, 30)
    assert fake.threads == [fake.threads[0]] * 2 and not fake.initialized


@pytest.mark.asyncio
async def test_a_second_run_ray_while_the_first_runs_on_the_instance_it_started_is_refused_at_once() -> None:
    """A Ray user's audit: the second of two concurrent run_ray calls took the first's instance for the
    caller's own; the first shut it down as it ended, and the second waited out its timeout."""
    first = asyncio.create_task(
        run_ray(TrainConfig(epochs=10_000), workers=1, bind_host=LOOPBACK, timeout=120)
    )
    try:
        await wait_until(lambda: ray.is_initialized() or first.done(), 60, "the first run's Ray")
        assert not first.done()
        with pytest.raises(
            RunError, match=r"^Ray was started in this process by a run_ray that has not ended"
        ):
            await asyncio.wait_for(run_ray(TrainConfig(epochs=1), workers=1, bind_host=LOOPBACK), 10)
    finally:
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
    assert not ray.is_initialized()


@pytest.mark.asyncio
async def test_an_abandoned_start_whose_init_fails_leaves_the_callers_ray_alone() -> None:
    """A review: a start abandoned at its timeout whose ray.init then failed ("called ray.init twice", the
    caller having started Ray meanwhile) shut the caller's instance down.  Only an instance the start
    brought up is shut down."""

    class Refused(_FakeRay):
        def init(self, **options: Any) -> None:
            self.go.wait(60)
            raise RuntimeError("Maybe you called ray.init twice by accident?")

    fake = Refused()
    start = RayStart(fake, address="local")
    start.stop()  # abandoned
    fake.initialized = True  # the caller's ray.init, while the start hung
    fake.go.set()
    await asyncio.wait_for(start.down, 30)
    assert fake.initialized and fake.threads == []  # not shut down
    assert start.ended.is_set() and not start.up.is_set()


@pytest.mark.asyncio
async def test_a_start_whose_init_fails_once_connected_shuts_its_instance_down() -> None:
    """A review: ray.init may raise once connected (a post-init hook, say); the start that was not abandoned
    shuts down what it started (left connected, Ray ended the process a minute later)."""

    class FailsLate(_FakeRay):
        def init(self, **options: Any) -> None:
            self.initialized = True
            raise RuntimeError("post-init hook failed")

    fake = FailsLate()
    start = RayStart(fake, address="local")
    with pytest.raises(RuntimeError, match="post-init hook failed"):
        await asyncio.wait_for(asyncio.shield(start.started), 30)
    await asyncio.wait_for(start.down, 30)
    assert not fake.initialized and len(fake.threads) == 1  # shut down, in the start's thread


class TestInTheCallersRay:
    """Runs in a Ray instance the caller started: run_ray uses it and leaves it running.  One instance
    serves the class (starting and stopping one took 3.5-5 s a test), as a user's serves run after run:
    each test starts once no aiodq actor is left in it (run_ray kills its actors as it ends; Ray may list
    them a moment longer)."""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def callers_ray(cls) -> Iterator[None]:
        assert not ray.is_initialized()
        sigterm = signal.getsignal(signal.SIGTERM)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        signal.signal(signal.SIGTERM, sigterm)  # ray.init's would outlive the tests
        try:
            yield
        finally:
            ray.shutdown()

    @pytest.fixture(autouse=True)
    def no_actor_left(self) -> None:
        assert ray.is_initialized()
        poll_until(lambda: not aiodq_actors(), 15, "the end of the last run's actors")

    @pytest.mark.asyncio
    async def test_a_timeout_ends_the_run_and_kills_every_actor(self) -> None:
        """A run too long for its timeout ends with RunError; none of its actors is left in the caller's
        Ray."""
        seen: set[str] = set()

        async def watch() -> None:
            while True:
                seen.update(aiodq_actors())
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        try:
            # (10 s: on a machine loaded 3.5-fold the master actor had not started within 5 s, and the error
            # rightly carried no run)
            with pytest.raises(RunError, match="did not finish within 10 s") as info:
                await run_ray(TrainConfig(epochs=1000), workers=2, bind_host=LOOPBACK, timeout=10)
        finally:
            watcher.cancel()
        # The error carries the run as it stood: the master actor was closed before any actor was killed.
        stood = info.value.result
        if stood is None:  # (a fresh-clone run loaded 2-fold: the actors had not all started; said so)
            assert "had not loaded the data (no room, or slow)" in str(info.value), info.value
        else:
            assert stood.failure == stood.summary["failure"] == str(info.value)
            assert stood.trace and stood.trace[-1].samples == 32_561  # every sample of the bundled a9a
            assert stood.summary["dataset"] == "a9a" and stood.summary["ray"]["master"]
            # Where it ran, as a finished run's says (an audit found both missing from a failed run's).
            assert stood.summary["ray"]["local_instance"] is False and stood.summary["ray"]["seconds"] >= 10
        assert any(name.endswith("-master") for name in seen), seen
        assert sum("-worker-" in name for name in seen) == 2, seen
        assert ray.is_initialized()  # the caller's instance is left alone
        await wait_until(lambda: not aiodq_actors(), 15, "actors outlived the run")

    @pytest.mark.asyncio
    async def test_a_relative_checkpoint_is_the_callers_not_the_actors_working_folders(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A Ray user's audit: on a cluster started from another folder, a relative checkpoint was written in
        the master actor's working folder, and resume=True there found another folder's run."""
        monkeypatch.chdir(tmp_path)  # the caller's Ray was started elsewhere: its actors work there
        result = await run_ray(
            TrainConfig(epochs=1), str(A9A_HEAD), workers=1, bind_host=LOOPBACK, timeout=120,
            checkpoint="ck/run.ckpt",
        )  # fmt: skip
        assert result.ok and (tmp_path / "ck" / "run.ckpt").exists()

    @pytest.mark.asyncio
    async def test_a_ray_run_cancelled_part_way_resumes_from_its_checkpoint(self, tmp_path: Path) -> None:
        """Cancelled mid-run, the master actor is closed before it is killed: its checkpoint holds the run
        as it stood, and resume=True trains the rest (every epoch once)."""
        from aiodq.net.checkpoint import load, resumable  # noqa: PLC0415

        path = tmp_path / "run.ckpt"
        config = TrainConfig(epochs=12)

        def version() -> int:
            kept = resumable(path) if path.exists() else None
            return -1 if kept is None else kept[1]

        stood: list[Any] = []
        run = asyncio.create_task(
            run_ray(
                config,
                workers=2,
                bind_host=LOOPBACK,
                timeout=120,
                checkpoint=str(path),
                checkpoint_interval=0.2,
                stopped=stood.append,
            )
        )
        await wait_until(lambda: version() >= 100 or run.done(), 90, "a checkpoint of 100 updates")
        assert not run.done()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        saved = load(path).meta
        assert saved["phase"] in ("snapshot", "inner") and saved["state"]["version"] >= 100
        # The stopped hook got the run as it stood when the master actor closed (as the checkpoint).
        assert len(stood) == 1 and stood[0].failure == "stopped before training ended"
        assert [asdict(record) for record in stood[0].trace] == saved["trace"]
        assert stood[0].summary["ray"]["master"]
        await wait_until(lambda: not aiodq_actors(), 15, "actors outlived the cancelled run")

        result = await run_ray(
            config, workers=2, bind_host=LOOPBACK, timeout=120, checkpoint=str(path), resume=True
        )
        assert result.ok, result.failure
        assert [record.epoch for record in result.trace] == list(range(13))
        assert result.trace[len(saved["trace"]) - 1].version == saved["trace"][-1]["version"]
        assert resumable(path) is None  # marked done
        finished = path.read_bytes()
        # Resumed again, the finished run gives its result as it ended, with no worker, and keeps its file.
        again = await run_ray(
            config, workers=2, bind_host=LOOPBACK, timeout=120, checkpoint=str(path), resume=True
        )
        assert again.ok and np.array_equal(again.model, result.model) and again.trace == result.trace
        assert path.read_bytes() == finished

    @pytest.mark.asyncio
    async def test_a_timed_out_ray_run_says_where_its_checkpoint_holds_it(self, tmp_path: Path) -> None:
        from aiodq.net.checkpoint import resumable  # noqa: PLC0415

        path = tmp_path / "run.ckpt"
        with pytest.raises(RunError) as info:
            await run_ray(
                TrainConfig(epochs=1000), workers=2, bind_host=LOOPBACK, timeout=5, checkpoint=str(path)
            )
        kept = resumable(path)
        # On a loaded machine the worker actors may not all have started within the 5 s: said, as such.
        # Then the run may hold nothing to resume (no checkpoint), and the error names none; a run whose
        # workers all started always has one.
        started = r"; (1 worker actor|2 worker actors) had not loaded the data \(no room, or slow\)"
        if kept is None:
            assert re.fullmatch(rf"the run did not finish within 5 s{started}", str(info.value)), info.value
            return
        said = re.escape(
            f"; the checkpoint {path} holds the run as it stood (epoch {kept[0]}, version {kept[1]}): "
            "resume it to continue "
            "(the same options with --resume; resume=True from Python)"
        )
        assert re.fullmatch(rf"the run did not finish within 5 s({started})?{said}", str(info.value)), (
            info.value
        )

    @pytest.mark.asyncio
    async def test_a_ray_run_stopped_as_training_ends_still_hands_its_result_over(
        self,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A cancellation that comes as training ends, before the driver has the master actor's result:
        the result still reaches the finished hook (aiodq run writes its files there) before the actors
        are killed. The driver's poll is wrapped to cancel the run, there, the first time it sees training
        done."""
        import aiodq.launch.ray as launcher  # noqa: PLC0415

        poll = launcher._poll
        handed: list[Any] = []
        task: asyncio.Task[Any] | None = None

        async def cancelling_poll(ray_module: Any, master: Any) -> dict[str, Any]:
            state = await poll(ray_module, master)
            if state["done"] and task is not None and not task.cancelling():
                task.cancel()  # as a SIGTERM would, through run_coroutine
                await asyncio.sleep(0)  # it lands here, inside the driver's loop, before the result is taken
            return state

        monkeypatch.setattr(launcher, "_poll", cancelling_poll)
        task = asyncio.create_task(
            run_ray(TrainConfig(epochs=2), workers=2, bind_host=LOOPBACK, timeout=120, finished=handed.append)
        )
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(handed) == 1
        result = handed[0]
        assert result.ok and [record.epoch for record in result.trace] == [0, 1, 2]
        assert result.summary["ray"]["master"].startswith(f"{LOOPBACK}:")
        await wait_until(lambda: not aiodq_actors(), 15, "actors outlived the cancelled run")

    @pytest.mark.asyncio
    async def test_a_ray_run_starts_from_the_vector_the_driver_sends(self, tmp_path: Path) -> None:
        """start_from, a file the driver reads, travels to the master actor: the trace's first loss is F at
        x_0 (as float32, the snapshot's precision on the wire), computed here from the objective."""
        data = aiodq_load(A9A_HEAD)
        objective = LogisticRegression(data.features, data.labels)
        x0 = np.random.default_rng(6).normal(scale=0.1, size=objective.dim)
        np.save(tmp_path / "x0.npy", x0)
        config = TrainConfig(epochs=1)
        result = await run_ray(
            config, str(A9A_HEAD), workers=2, bind_host=LOOPBACK, start_from=tmp_path / "x0.npy", timeout=120
        )
        assert result.ok, result.failure
        at = x0.astype(np.float32).astype(np.float64)
        expected = float(objective.loss_grad(at)[0]) / data.samples + 0.5 * config.l2 * float(at @ at)
        assert result.trace[0].loss == pytest.approx(expected, rel=1e-12)


def test_a_worker_not_restarted_says_how_to_allow_restarts_or_how_many_it_had() -> None:
    """A Ray user's audit: with the default max_restarts=0, a dead worker's line did not say that
    --max-restarts would have replaced it; a worker that cannot train is never restarted, so no hint."""
    from aiodq.launch.ray_failures import given_up  # noqa: PLC0415

    dead = given_up("1/3", "the actor died", 0, hopeless=False)
    assert dead.startswith("worker 1/3 failed: the actor died (max_restarts is 0: --max-restarts N")
    assert given_up("1/3", "no data", 0, hopeless=True) == "worker 1/3 failed: no data"
    assert given_up("0/2", "died", 2, hopeless=False) == (
        "worker 0/2 failed: died (after 2 restarts, as many as max_restarts allows)"
    )
    assert given_up("0/2", "refused", 1, hopeless=True) == "worker 0/2 failed: refused (after 1 restart)"
