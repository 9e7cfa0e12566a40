"""The local launcher left alone: worker restarts, signals that stop everything (#12)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .cluster import A9A, LEAST_SQUARES, ROOT, alive, autogroup_nice, children, logistic_optimum, poll_until


def start_run(out: Path, *args: str) -> subprocess.Popen[str]:
    # (A suite started in the background by a shell without job control passes SIGINT on ignored:
    # aiodq takes it whatever, test_sigint_to_a_background_runs_process_group_interrupts_it.)
    command = [sys.executable, "-m", "aiodq", "run", "--no-progress", "--out", str(out), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )


def epochs_logged(out: Path) -> int:
    log = out / "aiodq.log"
    return log.read_text().count(" epoch ") if log.exists() else 0


def training(out: Path, workers: int) -> tuple[subprocess.Popen[str], list[int]]:
    """``aiodq run`` with ``workers`` workers and 200 epochs, once it has logged two; its workers' pids."""
    run = start_run(out, "--workers", str(workers), "--epochs", "200")
    try:
        poll_until(lambda: epochs_logged(out) >= 2, 120, "training never started")
        pids = children(run.pid)
        assert len(pids) == workers, pids
    except BaseException:
        run.kill()
        raise
    return run, pids


def test_sigterm_stops_the_run_and_every_worker(tmp_path: Path) -> None:
    """SIGTERM to aiodq run: its master tells the workers GOING_AWAY, they leave and exit; nothing is left
    5 s later."""
    out = tmp_path / "out"
    run, workers = training(out, 3)
    try:
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=30)
        # The target: no worker left 5 s after aiodq run exited (the deadline is the check).
        poll_until(lambda: not any(alive(pid) for pid in workers), 5.0, "the workers' exit")
    finally:
        run.kill()
    assert run.returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines()[-1] == "aiodq run: stopped by SIGTERM"
    log = (out / "aiodq.log").read_text()
    # Their sessions ended, then they did; the master's log names each by its connection and shard.
    assert sorted(re.findall(r"worker \d+ \(shard (\d)/3\) left", log)) == ["0", "1", "2"], log


def test_ctrl_c_reaching_the_workers_first_is_still_an_interruption(tmp_path: Path) -> None:
    """A terminal's Ctrl-C goes to the whole process group: when the workers' SIGINT is handled
    before aiodq run's own (here 0.3 s before), the run still ends as interrupted (exit 130), not
    as a worker's failure (exit 1, 'worker process exited with status 130')."""
    out = tmp_path / "out"
    run, workers = training(out, 2)
    try:
        for pid in workers:
            os.kill(pid, signal.SIGINT)
        poll_until(lambda: not any(alive(pid) for pid in workers), 30, "the workers' exit")
        time.sleep(0.3)  # the order a loaded terminal can deliver: the launcher's SIGINT comes later
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, stderr[-2000:]
    assert "worker process" not in stderr
    assert stderr.strip().splitlines()[-1] == "aiodq run: interrupted"
    assert "GOING_AWAY" not in stderr  # the workers' goodbyes are INFO, in aiodq.log only


def test_sigint_to_a_background_runs_process_group_interrupts_it(tmp_path: Path) -> None:
    """A shell without job control starts background commands with SIGINT ignored; the workers, spawned
    through uvloop, stop on it whatever.  ``kill -INT`` of the group then ended the run as a worker's
    failure (exit 1, a newcomer trial); now aiodq run takes it too: interrupted, exit 130."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "aiodq", "run", "--no-progress", "--out", str(out), "--epochs", "200"]
    run = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,  # (a group of its own, as setsid makes it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509 - before exec only
    )
    try:
        poll_until(lambda: epochs_logged(out) >= 2, 120, "training never started")
        os.killpg(run.pid, signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "aiodq run: interrupted", stderr[-2000:]


def test_a_run_started_with_sighup_ignored_trains_on_through_a_hang_up(tmp_path: Path) -> None:
    """``nohup aiodq run``: a review found SIGHUP taken however it started (the command's handler, and its
    workers', which uvloop's spawn does not let inherit SIG_IGN), so a hang-up to the group ended the run.
    It trains on through one (two more epochs logged), and Ctrl-C still stops it."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "aiodq", "run", "--no-progress", "--out", str(out), "--epochs", "200"]

    def nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    run = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True, preexec_fn=nohup,  # noqa: PLW1509
    )  # fmt: skip
    try:
        poll_until(lambda: epochs_logged(out) >= 2, 120, "training never started")
        os.killpg(run.pid, signal.SIGHUP)
        hung_up = epochs_logged(out)
        poll_until(lambda: epochs_logged(out) >= hung_up + 2 or run.poll() is not None, 120, "training on")
        assert run.poll() is None, run.communicate()[1][-2000:]
        os.killpg(run.pid, signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, stderr[-2000:]
    assert "SIGHUP" not in stderr, stderr[-2000:]


def test_a_worker_killed_without_restarts_ends_the_run_saying_how(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run, workers = training(out, 2)
    try:
        arguments = Path(f"/proc/{workers[0]}/cmdline").read_bytes().split(b"\0")
        shard = arguments[arguments.index(b"--shard") + 1].decode()
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 1, stderr[-2000:]
    said = stderr.strip().splitlines()[-2:]
    # Which worker, and how to have it restarted (a newcomer trial: the message named neither).
    failure = (
        f"worker process {shard} killed by SIGKILL: (nothing on stderr) "
        "(aiodq run --max-restarts N, or run_local(max_restarts=N), starts another in its place)"
    )
    assert said[0] == f"aiodq run: {failure}", said
    # Training had begun: the run as it stood is written, its failure the error.
    assert said[1].startswith("aiodq run: the run as it stood, at epoch "), said
    written = json.loads((out / "result.json").read_text())
    assert written["failure"] == failure
    assert len(written["trace"]) >= 2


def test_a_killed_worker_is_restarted_and_the_run_reaches_the_optimum(tmp_path: Path) -> None:
    """--max-restarts 3: a worker SIGKILLed mid-run is started again; the run ends within 1 % of F*."""
    out = tmp_path / "out"
    run = start_run(out, "--workers", "3", "--epochs", "10", "--max-restarts", "3")
    try:
        poll_until(lambda: epochs_logged(out) >= 3, 120, "training never got going")
        first = children(run.pid)
        os.kill(first[0], signal.SIGKILL)
        # The replacement runs below the master like the others (--worker-nice's default, 4).
        expected = min(os.getpriority(os.PRIO_PROCESS, 0) + 4, 19)

        def replacement_niced() -> bool:
            new = [pid for pid in children(run.pid) if pid not in first]
            try:
                return bool(new) and os.getpriority(os.PRIO_PROCESS, new[0]) == expected
            except ProcessLookupError:
                return False

        poll_until(replacement_niced, 60, f"a replacement worker at nice {expected}")
        _, stderr = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 0, stderr[-3000:]
    summary = json.loads((out / "result.json").read_text())
    assert summary["worker_restarts"] == 1
    best = logistic_optimum(A9A, summary["config"]["l2"])
    final = summary["trace"][-1]
    assert final["samples"] == A9A.samples
    assert (final["loss"] - best) / best < 0.01, (final["loss"], best)
    assert "restarting it (1 of 3)" in (out / "aiodq.log").read_text()


_LOWER = """
import os, sys, threading
from pathlib import Path
from typing import Any
from aiodq.launch.local import lower_priority
started, done = threading.Event(), threading.Event()
def wait():
    started.set()
    done.wait()
thread = threading.Thread(target=wait)
thread.start()
started.wait()
lower_priority(int(sys.argv[1]))
nices = {int(Path(f"/proc/self/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[16])
         for t in os.listdir("/proc/self/task")}
fields = Path("/proc/self/autogroup").read_text().split() if Path("/proc/self/autogroup").exists() else []
print(sorted(nices), fields[-1] if fields else "-")  # empty in the root group
done.set()
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads thread priorities from /proc (Linux)")
@pytest.mark.parametrize("own_session", [True, False])
def test_lower_priority_lowers_every_thread_and_only_its_own_sessions_group(own_session: bool) -> None:
    """lower_priority(3): a thread started before the call goes down with the main one, and the
    autogroup (where the kernel has them) goes down only for a process that leads its session."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base + 3 > 19:
        pytest.skip(f"the tests run at nice {base}: 3 steps more would clamp at 19")
    ours = autogroup_nice()
    result = subprocess.run(
        [sys.executable, "-c", _LOWER, "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        start_new_session=own_session,
    )
    assert result.returncode == 0, result.stderr
    nices, autogroup = result.stdout.split("] ")
    assert nices == f"[{base + 3}", result.stdout  # both threads: one value
    child = None if autogroup.strip() == "-" else int(autogroup)
    if own_session:
        # A new session starts in a new group at nice 0, where the kernel gives it one.
        assert child in (3, None), result.stdout
    else:
        assert child == ours, (result.stdout, ours)  # the tests' own group (or none), untouched
    assert autogroup_nice() == ours


def test_run_local_checks_its_launcher_before_anything_starts() -> None:
    """An unknown launcher is a ValueError; Ray's options with the local launcher a TypeError naming them."""
    import asyncio  # noqa: PLC0415

    import aiodq  # noqa: PLC0415

    with pytest.raises(ValueError, match="launcher must be 'local' or 'ray'"):
        asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), launcher="slurm"))
    with pytest.raises(TypeError, match="options for --launcher ray only: address, worker_cpus"):
        asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), address="auto", worker_cpus=2.0))
    # (an embedding trial: an option of neither launcher was called one of Ray's)
    for launcher in ("local", "ray"):
        with pytest.raises(
            TypeError, match=r"^run_local\(\) got unexpected keyword arguments: bogus, nodes$"
        ):
            asyncio.run(
                aiodq.run_local(
                    aiodq.TrainConfig(epochs=1), launcher=launcher, bogus=1, nodes=2, address="auto"
                )
            )
    with pytest.raises(TypeError, match="worker_nice applies to the local launcher only"):
        asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), launcher="ray", worker_nice=2))
    for nice in (-1, 20, 2.5, True):
        with pytest.raises(
            ValueError, match=f"worker_nice must be an integer between 0 and 19, got {nice!r}"
        ):
            asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), worker_nice=nice))  # type: ignore[arg-type]
    # What aiodq run refuses (a docs review: workers="2" raised a TypeError from a comparison, timeout=0
    # started the workers, max_restarts=-1 was taken).
    for options, said in (
        ({"workers": "2"}, "workers must be an integer, 1 or more, got '2'"),
        ({"workers": 0}, "workers must be an integer, 1 or more, got 0"),
        ({"max_restarts": -1}, "max_restarts must be an integer, 0 or more, got -1"),
        ({"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
        ({"timeout": float("nan")}, "timeout must be a positive number of seconds, got nan"),
    ):
        with pytest.raises(ValueError, match=re.escape(said)):
            asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), **options))  # type: ignore[arg-type]


# -- the worker processes' stderr and their stop ----------------------------------------------------

#: 2 MB of stderr in 20,000 lines, one last line, then exit status 3.
_LOUD = """
import sys
for i in range(20000):
    sys.stderr.write(f"line {i} " + "y" * 100 + "\\n")
sys.stderr.write("the end")
sys.exit(3)
"""
#: A process that ignores SIGTERM (it only says it got one) and says so when it is ready; it then
#: waits for signals until it is killed.
_STUBBORN = """
import signal, sys
def noted(signum, frame):
    sys.stderr.write("SIGTERM\\n")
    sys.stderr.flush()
signal.signal(signal.SIGTERM, noted)
sys.stderr.write("ready\\n")
sys.stderr.flush()
while True:
    signal.pause()
"""


@pytest.mark.asyncio
async def test_a_worker_process_writing_megabytes_to_stderr_is_not_held_up_and_its_end_is_kept() -> None:
    """The pipe (64 KiB) is read as it comes: the process runs to its exit, and the last lines are kept."""
    from aiodq.launch.processes import TAIL_LINES, WorkerProcess, stop_workers  # noqa: PLC0415

    worker = await WorkerProcess.start(0, 1, [sys.executable, "-c", _LOUD], dict(os.environ))
    try:
        async with asyncio.timeout(60):
            status = await worker.exited
        assert status == 3 and worker.failed
        tail = (await worker.stderr_tail()).splitlines()
        assert len(tail) == TAIL_LINES
        assert tail[-1] == "the end"
        assert tail[-2].startswith("line 19999 ")
    finally:
        await stop_workers([worker])


async def _stubborn() -> Any:
    """A worker process that ignores SIGTERM, once it says it is ready (the signal handler is set)."""
    from aiodq.launch.processes import WorkerProcess  # noqa: PLC0415

    worker = await WorkerProcess.start(0, 1, [sys.executable, "-c", _STUBBORN], dict(os.environ))
    await _said(worker, "ready")
    return worker


async def _said(worker: Any, line: str) -> None:
    """Wait (60 s at most) until ``worker`` has written ``line`` to stderr."""
    async with asyncio.timeout(60):
        while line not in (await worker.stderr_tail()).splitlines():
            await asyncio.wait([worker.exited], timeout=0.05)


@pytest.mark.asyncio
async def test_stopping_kills_a_worker_process_that_ignores_sigterm_after_the_grace() -> None:
    from aiodq.launch.processes import stop_workers  # noqa: PLC0415

    worker = await _stubborn()
    try:
        await stop_workers([worker], grace=0.5)
        assert worker.returncode == -signal.SIGKILL
    finally:
        await stop_workers([worker])


@pytest.mark.asyncio
async def test_a_cancelled_stop_still_kills_a_worker_process_that_ignores_sigterm() -> None:
    """A second Ctrl-C cancels the stop in its grace: the SIGKILL goes out then, not never."""
    from aiodq.launch.processes import exits, stop_workers  # noqa: PLC0415

    worker = await _stubborn()
    try:
        stopping = asyncio.create_task(stop_workers([worker], grace=600))
        await _said(worker, "SIGTERM")  # the stop has sent it, and waits out its grace
        assert not worker.has_exited and not stopping.done()
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        async with asyncio.timeout(60):
            await asyncio.wait(exits([worker]))
        assert worker.returncode == -signal.SIGKILL
    finally:
        await stop_workers([worker])


#: Exits 1 while a process it started (which says it is up, then sleeps) holds its stderr open.
_PARENT = """
import subprocess, sys
code = "import time; print('up', flush=True); time.sleep(600)"
helper = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
helper.stdout.readline()
sys.stderr.write(f"helper {helper.pid}\\n")
sys.stderr.write("worker: fatal error\\n")
sys.exit(1)
"""


@pytest.mark.asyncio
async def test_a_worker_process_is_known_to_have_exited_while_its_child_holds_its_stderr() -> None:
    """asyncio's own loop resolves Process.wait() only once the pipes close: the worker's exit must
    be seen when it happens (process_exited), its stderr read so far reported, and the stop quick."""
    from aiodq.launch.processes import WorkerProcess, stop_workers  # noqa: PLC0415

    worker = await WorkerProcess.start(0, 1, [sys.executable, "-c", _PARENT], dict(os.environ))
    helper = None
    try:
        async with asyncio.timeout(30):
            status = await worker.exited
        assert status == 1 and worker.failed
        tail = await worker.stderr_tail()  # waits a second for the pipe, which the helper holds
        helper = int(tail.splitlines()[0].split()[1])
        assert tail.splitlines()[-1] == "worker: fatal error"
        async with asyncio.timeout(10):
            await stop_workers([worker])
    finally:
        if helper is not None:
            os.kill(helper, signal.SIGKILL)
        await stop_workers([worker])


#: A least-squares model whose shard-0 worker process exits with status 3 once its session is over.
_CRASHES_AT_EXIT = (
    """
import atexit, os, sys

if "worker" in sys.argv and "0/2" in sys.argv:
    atexit.register(lambda: os._exit(3))
"""
    + LEAST_SQUARES
)


def test_a_worker_failing_after_training_is_a_warning_and_the_model_is_kept(tmp_path: Path) -> None:
    (tmp_path / "crashes_at_exit.py").write_text(_CRASHES_AT_EXIT)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "aiodq", "run", "--model", "crashes_at_exit:LeastSquares", "--workers", "2",
         "--epochs", "2", "--step", "0.05", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "worker process 0/2 exited with status 3 after training had finished" in result.stderr
    assert (out / "model.npz").exists()


#: Says it is ready, then exits 0 on SIGTERM, saying so.
_POLITE = """
import signal, sys, time
def stop(*_):
    sys.stderr.write("got SIGTERM\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
sys.stderr.write("ready\\n")
sys.stderr.flush()
time.sleep(600)
"""


@pytest.mark.asyncio
async def test_waiting_for_a_worker_process_under_a_timeout_leaves_it_whole() -> None:
    """A wait for ``exited`` that times out (its future cancelled) must not cancel the process's own
    exit: its status, its SIGTERM and its stop still work."""
    from aiodq.launch.processes import WorkerProcess, stop_workers  # noqa: PLC0415

    worker = await WorkerProcess.start(0, 1, [sys.executable, "-c", _POLITE], dict(os.environ))
    try:
        async with asyncio.timeout(60):
            while "ready" not in await worker.stderr_tail():
                await asyncio.wait([worker.exited], timeout=0.05)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await worker.exited
        assert not worker.failed and worker.returncode is None
        await stop_workers([worker])
        assert worker.returncode == 0
        assert (await worker.stderr_tail()).splitlines()[-1] == "got SIGTERM"
    finally:
        await stop_workers([worker])


def test_run_local_refuses_data_in_memory_and_more_workers_than_samples(tmp_path: Path) -> None:
    """A newcomer passed a Dataset (an OSError: 'File name too long' with the arrays' repr), and fewer
    samples than workers (a worker process failed, and the message offered --max-restarts)."""
    import aiodq  # noqa: PLC0415

    config = aiodq.TrainConfig(epochs=1)
    with pytest.raises(TypeError, match=r"^run_local's data is a file or folder that the worker processes"):
        asyncio.run(aiodq.run_local(config, A9A, workers=2))
    one = tmp_path / "one.libsvm"
    one.write_text("+1 1:0.5 2:1\n-1 1:0.25\n")
    with pytest.raises(aiodq.UsageError, match=r"^2 samples cannot be shared by 3 workers$"):
        asyncio.run(aiodq.run_local(config, one, workers=3))


def test_classes_without_samples_are_a_warning_with_libsvm_s_numbering_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A docs review: labels 1..C (LIBSVM's usual numbering) leave class 0 empty; the note, which then ends
    with a hint, was logged at INFO (not on stderr), while labels 0, 1, 3 warned."""
    import logging  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from aiodq.launch.models import objective_for  # noqa: PLC0415
    from aiodq.protocol.algorithms import TrainConfig  # noqa: PLC0415
    from aiodq.protocol.dataset import Dataset  # noqa: PLC0415

    for labels in ([1.0, 2, 3, 1, 2, 3], [0.0, 1, 3, 0, 1, 3]):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="aiodq"):
            objective_for(
                TrainConfig(model="softmax"), Dataset(np.eye(6), np.array(labels), "d"), training_set=True
            )
        said = [(r.levelno, r.getMessage()) for r in caplog.records if "no samples" in r.getMessage()]
        assert len(said) == 1 and said[0][0] == logging.WARNING, said


def test_local_workers_that_read_other_data_than_the_masters_refuse_the_run(tmp_path: Path) -> None:
    """A data audit: a file replaced (mv) as aiodq run's workers started was what they trained on, while
    the master, and result.json's fingerprint, held the one it had read: exit 0 without a word (the local
    master named no fingerprint without --checkpoint).  Here the master's data and the file the workers
    read differ from the start: the workers refuse the run, and none is started again in its place."""
    from aiodq.data import load_dataset  # noqa: PLC0415
    from aiodq.errors import RunError  # noqa: PLC0415
    from aiodq.launch.local import run_cluster, run_coroutine  # noqa: PLC0415
    from aiodq.launch.models import objective_for  # noqa: PLC0415
    from aiodq.protocol.algorithms import TrainConfig  # noqa: PLC0415

    from .cluster import A9A_HEAD, edited_fixture  # noqa: PLC0415

    dataset = load_dataset(str(A9A_HEAD))
    config = TrainConfig(epochs=2)
    cluster = run_cluster(
        config, dataset, str(edited_fixture(tmp_path)), objective_for(config, dataset), workers=2,
        progress=False, timeout=120, master_config=None, max_restarts=3,
    )  # fmt: skip
    with pytest.raises(RunError, match=r"this worker's data \(fingerprint .*\) is not the master's"):
        run_coroutine(cluster)
