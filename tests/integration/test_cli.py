"""The command line: aiodq run, aiodq master/worker as separate processes, and clear errors."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import (
    A9A_HEAD,
    LEAST_SQUARES,
    ROOT,
    aiodq,
    alive,
    autogroup_nice,
    children,
    edited_fixture,
    free_port,
    master_and_one_worker,
    poll_until,
)


def test_run_trains_with_worker_processes_and_writes_results(tmp_path: Path) -> None:
    """aiodq run: one master and M worker processes; summary, result.json and the plot."""
    out = tmp_path / "out"
    result = aiodq(
        "run", "--workers", "2", "--epochs", "3", "--bits", "4", "--out", str(out), "--no-progress",
        "--connection-rate", "50",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "final training loss" in result.stdout
    # A CLI audit: this warning reached aiodq.log only.
    assert "aiodq run: --connection-rate: every local worker connects from 127.0.0.1" in result.stderr
    summary = json.loads((out / "result.json").read_text())
    assert summary["config"]["algorithm"] == "asylpg"
    assert summary["config"]["bits"] == 4
    assert summary["workers"] == 2
    assert summary["worker_nice"] == 4  # the default, recorded
    assert summary["dataset"] == "a9a"
    trace = summary["trace"]
    assert [r["epoch"] for r in trace] == [0, 1, 2, 3]
    assert trace[-1]["loss"] < 0.34 < trace[0]["loss"]
    assert all(set(r) >= {"loss", "accuracy", "bits", "time"} for r in trace)
    assert summary["staleness"]["histogram"], "the delay distribution is reported"
    assert summary["traffic"]["total_bytes"]["both"] > trace[-1]["bytes"] > trace[1]["bytes"] > 0
    # Every GRADIENT's analytic bits are d b + 32 = 123 * 4 + 32 (0 for a ZERO one), also those that came
    # in their sparse form (a CLI audit: the master counted those at their sparse size).
    up = summary["traffic"]["payload_bits"]["up"]["GRADIENT"]
    assert up % 524 == 0 and up // 524 > summary["version"] // 2, up
    assert (out / "loss_vs_bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _thread_nices(pids: list[int]) -> set[int] | None:
    """The nice values of every thread of ``pids`` (from /proc); None if one has exited meanwhile."""
    values = set()
    try:
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").iterdir():
                stat = (task / "stat").read_text()
                values.add(int(stat.rsplit(")", 1)[1].split()[16]))  # stat field 19, nice
    except OSError:
        return None
    return values


def _room_for_nice(steps: int) -> int:
    """This process's nice value, or a skip if ``steps`` more would pass 19 (and clamp)."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base + steps > 19:
        pytest.skip(f"the tests run at nice {base}: {steps} steps more would clamp at 19")
    return base


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker priorities from /proc (Linux)")
def test_run_starts_its_workers_below_the_master(tmp_path: Path) -> None:
    """aiodq run starts its workers 4 nice steps below the master by default, N with --worker-nice N."""
    base = _room_for_nice(7)
    for option, step in (([], 4), (["--worker-nice", "7"], 7)):
        command = [sys.executable, "-m", "aiodq", "run", "--workers", "2", "--epochs", "200", "--no-progress"]
        command += ["--out", str(tmp_path / f"out{step}"), *option]
        with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT) as run:
            try:
                poll_until(
                    lambda want=base + step: (
                        len(children(run.pid)) == 2 and _thread_nices(children(run.pid)) == {want}
                    ),
                    60,
                    f"two workers with every thread at nice {base + step}",
                )
                assert _thread_nices([run.pid]) == {base}  # the master itself is left alone
            finally:
                run.terminate()
                run.communicate(timeout=60)


@contextlib.contextmanager
def master_process(out: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``aiodq master --listen 127.0.0.1:0 --out OUT ARGS`` and the port it printed."""
    command = [sys.executable, "-m", "aiodq", "master", "--listen", "127.0.0.1:0", "--out", str(out), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env) as master:
        assert master.stdout is not None
        line = master.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        yield master, line.split("127.0.0.1:")[1].split(",")[0]


def finish_cleanly(master: subprocess.Popen[str], *workers: subprocess.Popen[str]) -> None:
    """Wait for ``workers``, then for ``master``: each must exit 0 (a worker's stderr says why not)."""
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr
    assert master.stdout is not None
    master.stdout.read()
    assert master.wait(timeout=60) == 0


def test_master_and_workers_as_separate_processes(tmp_path: Path) -> None:
    """aiodq master --listen and aiodq worker --connect --shard I/M: a cluster of separate processes.

    The first worker lowers its priority with ``--nice 3`` in a session of its own (as the
    network lab starts workers): every thread goes 3 steps down, and where the kernel groups
    processes by session its autogroup too.  The master waits for both workers before
    training, so the first is still running when its priority is read.
    """
    expected_nice = _room_for_nice(3) + 3
    with master_process(tmp_path, "--workers", "2", "--epochs", "2") as (master, port):
        try:
            args = ("worker", "--connect", f"127.0.0.1:{port}", "--shard", "0/2", "--nice", "3")
            first = aiodq_async(*args, new_session=True)
            poll_until(lambda: _thread_nices([first.pid]) == {expected_nice}, 60, "--nice 3 applied")
            # A new session's group starts at nice 0, where the kernel gives it one (the kernel keeps
            # it even with autogroups off).  Written after the threads' values, and retried where
            # the kernel rate-limits it: wait.
            if autogroup_nice(first.pid) is not None:
                poll_until(lambda: autogroup_nice(first.pid) == 3, 60, "the session's group at nice 3")
            finish_cleanly(
                master, first, aiodq_async("worker", "--connect", f"127.0.0.1:{port}", "--shard", "1/2")
            )
        finally:
            master.kill()
    summary = json.loads((tmp_path / "result.json").read_text())
    assert len(summary["trace"]) == 3


def aiodq_async(*args: str, new_session: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aiodq", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        start_new_session=new_session,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--bits", "1"], "bits"),
        (["run", "--workers", "0"], "--workers"),
        (["run", "--tau", "-1"], "tau"),
        (["run", "--mu", "0"], "mu"),
        (["run", "--phi", "2"], "phi"),
        (["run", "--data", "/nonexistent/a9a"], "no such file"),
        (["worker", "--connect", "127.0.0.1:9", "--shard", "2/2"], "I/M"),
        (["worker", "--connect", "nohostport", "--shard", "0/1"], "HOST:PORT"),
        (["worker", "--connect", "127.0.0.1:9", "--shard", "0/1", "--nice", "-1"], "between 0 and 19"),
        (["worker", "--connect", "127.0.0.1:9", "--shard", "0/1", "--nice", "20"], "between 0 and 19"),
        (
            ["run", "--worker-nice", "20"],
            "--worker-nice: a nice increment must be an integer between 0 and 19",
        ),
        (
            ["run", "--worker-nice", "-1"],
            "--worker-nice: a nice increment must be an integer between 0 and 19",
        ),
        (["run", "--worker-nice", "2", "--launcher", "ray"], "--launcher local only"),
        (["run", "--seed", "-1"], "seed must be an integer from 0 to 2**64 - 1, got -1"),
        (["run", "--batch", "10000000000"], "batch must be at most 1,048,576 (2**20), got 10,000,000,000"),
        (
            ["run", "--ray-address", "auto", "--worker-cpus", "2"],
            "--ray-address, --worker-cpus: for --launcher ray only",
        ),
        (
            ["run", "--data", "tests/fixtures/one-class.svm"],
            "every label of one-class.svm is 1: the logistic model",
        ),
        (
            ["master", "--listen", "127.0.0.1:0", "--workers", "1", "--seed", str(2**64)],
            "seed must be an integer",
        ),
        (["worker", "--connect", "127.0.0.1:9", "--shard", "0/1", "--seed", "-1"], "a seed is an integer"),
        (["run", "--model", "mlp", "--bias"], "--bias: for --model logistic or softmax, not mlp"),
        (
            ["run", "--model", "mine:Model", "--bias"],
            "--bias: for --model logistic or softmax, not mine:Model",
        ),
        (["run", "--hidden", "20"], "--hidden: for --model mlp, not logistic"),
        # (an operator trial: options of other algorithms were taken silently)
        (["run", "--exact-budget"], "--exact-budget: for --algorithm sparse-asylpg, not asylpg"),
        (
            ["run", "--phi", "0.1", "--algorithm", "asyfpg"],
            "--phi: for --algorithm sparse-asylpg, not asyfpg",
        ),
        (["run", "--qsgd-levels", "4"], "--qsgd-levels: for --algorithm qsvrg, not asylpg"),
        (
            ["run", "--acc-snapshot", "last"],
            "--acc-snapshot: for --algorithm acc-asylpg, acc-asyfpg, not asylpg",
        ),
        (
            ["master", "--listen", "127.0.0.1:0", "--workers", "1", "--model", "softmax", "--hidden", "7"],
            "--hidden: for --model mlp, not softmax",
        ),
        # (a newcomer trial: --out "" wrote the results into the current folder)
        (["run", "--out", ""], "argument --out: an empty path: give a folder (. for the current one)"),
        (
            ["master", "--listen", "127.0.0.1:0", "--workers", "1", "--out", " "],
            "argument --out: an empty path",
        ),
        # (an operator's audit: --checkpoint "" was the folder '.')
        (["run", "--checkpoint", ""], "argument --checkpoint: an empty path: give a file's path"),
        (
            ["master", "--listen", "127.0.0.1:0", "--workers", "1", "--start-from", ""],
            "argument --start-from: an empty path: give a file's path",
        ),
        (["run", "--data", ""], "aiodq run: the data path is empty: give a file or a folder"),
        (  # (a Ray user's audit: it waited out the whole --timeout)
            ["run", "--launcher", "ray", "--ray-address", "127.0.0.1:99999"],
            "argument --ray-address: expected auto, HOST:PORT or ray://HOST:PORT, got '127.0.0.1:99999'",
        ),
        (
            ["master", "--listen", "127.0.0.1:0", "--workers", "1", "--record-every", "1", "--records", ""],
            "argument --records: an empty path: give a file's path",
        ),
        (
            ["worker", "--connect", "127.0.0.1:0"],
            "argument --connect: '127.0.0.1:0': the port must be between 1",
        ),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(args: list[str], message: str) -> None:
    """Bad options and unreadable data: exit status 2 and a message naming the problem."""
    result = aiodq(*args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_data_exits_2(tmp_path: Path) -> None:
    """A malformed LIBSVM file is refused before any process starts."""
    bad = tmp_path / "bad.libsvm"
    bad.write_text("+1 1:1 2:x\n-1 3:1\n")
    result = aiodq("run", "--data", str(bad), "--epochs", "1")
    assert result.returncode == 2
    assert "bad.libsvm" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("train", "test", "args", "message"),
    [
        # (a review: scored as -1 after training, test accuracy 1.0, exit 0)
        (
            "2 1:1\n4 2:1\n2 1:1 2:1\n",
            "2 1:1\n5 2:1\n",
            [],
            "label 5 is not among the training set's labels (2, 4)",
        ),
        # (a review: found only after training, the summary cut its message short)
        ("0 1:1\n1 2:1\n2 1:1 2:1\n", "0 1:1\n3 2:1\n", ["--model", "softmax"], "label 3 is not among"),
    ],
)
def test_a_test_set_the_model_cannot_score_is_refused_before_training(
    tmp_path: Path, train: str, test: str, args: list[str], message: str
) -> None:
    """F.t is checked against F when it is read: exit 2 naming it, no worker started, no results written."""
    (tmp_path / "f").write_text(train)
    (tmp_path / "f.t").write_text(test)
    out = tmp_path / "out"
    result = aiodq("run", "--data", str(tmp_path / "f"), "--workers", "1", "--out", str(out), *args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert f"the test set f.t: {message}" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "result.json").exists()


def test_unreachable_master_exits_1() -> None:
    """A worker whose master does not answer exits 1 with a clear message."""
    port = free_port()
    result = aiodq(
        "worker", "--connect", f"127.0.0.1:{port}", "--shard", "0/1", "--retry-for", "1", timeout=60
    )
    assert result.returncode == 1
    assert f"cannot reach the master at 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_whose_master_stopped_says_so_when_it_gives_up(tmp_path: Path) -> None:
    """The master is stopped (SIGTERM) mid-run: its worker retries for --retry-for, then exits 1 naming
    how the last session ended, not only that the master cannot be reached."""
    with master_process(tmp_path, "--workers", "1", "--epochs", "100000") as (master, port):
        try:
            connect = ("--connect", f"127.0.0.1:{port}", "--shard", "0/1")
            worker = aiodq_async("worker", *connect, "--retry-for", "2")
            log = tmp_path / "aiodq.log"
            poll_until(lambda: log.exists() and "epoch 1:" in log.read_text(), 60, "the first epoch")
            master.send_signal(signal.SIGTERM)
            assert master.wait(timeout=60) == 128 + signal.SIGTERM
            _, stderr = worker.communicate(timeout=60)
        finally:
            master.kill()
    assert worker.returncode == 1
    assert stderr.strip().splitlines()[-1] == (
        f"aiodq worker: cannot reach the master at 127.0.0.1:{port}: Connection refused; its last session "
        "ended with GOING_AWAY: the master is shutting down, and it was not reached again "
        "within --retry-for 2 s"
    )


def test_custom_app_example_follows_progress_while_working() -> None:
    """examples/custom_app.py hosts a master inside its own event loop and keeps doing other work."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_app.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "epoch 4: loss" in result.stdout
    ticks = int(result.stdout.split("ticked ")[1].split(" ")[0])
    assert ticks > 0


# -- demo and benchmarks: smoke tests (every command runs and prints what it documents) ------------


def test_demo_prints_message_sizes() -> None:
    """aiodq demo: a handshake, a snapshot phase and one MODEL in memory, then every GRADIENT's size."""
    result = aiodq("demo", "--dim", "2000", "--bits", "4")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dim"] == 2000 and report["float32_bytes"] == 8000
    names = [row["message"] for row in report["messages"]]
    assert names[0].startswith("MODEL") and any("sparse" in name for name in names)
    gradients = {row["message"]: row for row in report["messages"][1:]}
    # b = 4 codes: half a byte per coordinate plus the frame, never more than float32.
    assert 1000 < gradients["GRADIENT dense b=4"]["bytes"] < 1100
    assert gradients["GRADIENT float32"]["bytes"] > 8000
    assert all(row["relative_error"] >= 0 for row in report["messages"][1:])


def test_demo_into_a_closed_pipe_or_beyond_memory_is_no_traceback() -> None:
    """``aiodq demo | head -1`` (the reader leaves) ends quietly with 128 + SIGPIPE; a --dim beyond the
    machine's memory is one line, exit 1 (a newcomer trial found tracebacks for both)."""
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write fails with EPIPE
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "aiodq", "demo", "--dim", "2000"],
            stdout=writer, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(writer)
    assert demo.returncode == 128 + 13 and demo.stderr == "", demo.stderr
    huge = aiodq("demo", "--dim", str(10**12))  # (256, 10**12) float64: 2 PB
    assert huge.returncode == 1
    assert huge.stderr.startswith("aiodq demo: out of memory") and len(huge.stderr.splitlines()) == 1, (
        huge.stderr
    )


def test_bench_codec_smoke(tmp_path: Path) -> None:
    """aiodq bench codec: times and sizes against the same run's copy baseline, on stdout and in --out."""
    out = tmp_path / "codec.json"
    # At d = 20 the sparse budget phi = d/20 keeps no coordinate in about a third of the draws: those
    # are sent as ZERO and timed as such, not a crash.
    result = aiodq("bench", "codec", "--dims", "1e3,20", "--bits", "2,8", "--repeats", "9", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report
    cases = report["cases"]
    assert {(case["d"], case["bits"], case["kind"]) for case in cases} >= {
        (d, bits, kind) for d in (1000, 20) for bits in (2, 8) for kind in ("dense", "sparse")
    }
    for case in cases:
        assert case["encode_ms"] > 0 and case["decode_ms"] > 0 and case["baseline_tobytes_ms"] > 0
        assert case["wire_bytes"] >= case["ideal_bytes"]


def test_bench_master_smoke(tmp_path: Path) -> None:
    """aiodq bench master: applied updates per second over TCP against the in-process update."""
    out = tmp_path / "master.json"
    result = aiodq("bench", "master", "--dims", "1e3", "--workers", "1", "--updates", "50", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report
    [case] = report["cases"]
    assert case["d"] == 1000 and case["workers"] == 1 and case["applied_updates"] >= 50
    assert case["updates_per_second"] > 0 and case["in_process_update_ms"] > 0


def test_a_third_worker_claiming_a_held_shard_is_refused(tmp_path: Path) -> None:
    """Shards 0/2 and 1/2 train; a third `--shard 0/2` gets SHARD_TAKEN (exit 1) and the run finishes."""
    with master_process(tmp_path, "--workers", "2", "--epochs", "3") as (master, port):
        try:
            first = aiodq_async("worker", "--connect", f"127.0.0.1:{port}", "--shard", "0/2")
            # The first worker has joined once the master logs it (the log goes to --out/aiodq.log).
            log = tmp_path / "aiodq.log"
            poll_until(lambda: log.exists() and "joined" in log.read_text(), 60, "the first worker's join")
            third = aiodq_async(
                "worker", "--connect", f"127.0.0.1:{port}", "--shard", "0/2", "--retry-for", "0"
            )
            _, third_err = third.communicate(timeout=60)
            finish_cleanly(
                master, first, aiodq_async("worker", "--connect", f"127.0.0.1:{port}", "--shard", "1/2")
            )
        finally:
            master.kill()
    assert third.returncode == 1
    assert "SHARD_TAKEN: shard 0/2 is held by worker" in third_err
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["trace"][-1]["samples"] == 32_561
    assert summary["error_counts"].get("SHARD_TAKEN") == 1


def test_a_worker_with_other_data_of_the_same_shape_is_refused(tmp_path: Path) -> None:
    """The master names its data by fingerprint in CONFIG: a worker whose file differs in one value (same
    samples, same features) leaves with INVALID_CONFIG (exit 2: it cannot train this run; no retry), and one
    with the master's
    file then trains."""
    data, other = A9A_HEAD, edited_fixture(tmp_path)
    with master_process(tmp_path, "--data", str(data), "--workers", "1", "--epochs", "1") as (master, port):
        try:
            connect = ("worker", "--connect", f"127.0.0.1:{port}", "--shard", "0/1", "--retry-for", "0")
            wrong = aiodq_async(*connect, "--data", str(other))
            _, wrong_err = wrong.communicate(timeout=60)
            finish_cleanly(master, aiodq_async(*connect, "--data", str(data)))
        finally:
            master.kill()
    assert wrong.returncode == 2
    assert "INVALID_CONFIG: this worker's data (fingerprint blake2b:" in wrong_err
    assert "start it with the data the master trains on (--data)" in wrong_err
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["trace"][-1]["samples"] == 300


def test_a_worker_given_another_model_of_the_same_dimension_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two user models with as many parameters: a worker started with the other one leaves with
    INVALID_CONFIG and exit 2 (a newcomer trial: it trained, and the run reported the other model's loss)."""
    (tmp_path / "my_models.py").write_text(LEAST_SQUARES + "\n\nclass Other(LeastSquares):\n    pass\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    options = ("--data", str(A9A_HEAD), "--workers", "1", "--epochs", "1", "--step", "0.01")
    with master_process(tmp_path, *options, "--model", "my_models:LeastSquares") as (master, port):
        try:
            connect = ("worker", "--connect", f"127.0.0.1:{port}", "--shard", "0/1", "--data", str(A9A_HEAD))
            wrong = aiodq_async(*connect, "--retry-for", "0", "--model", "my_models:Other")
            _, wrong_err = wrong.communicate(timeout=60)
            finish_cleanly(master, aiodq_async(*connect, "--model", "my_models:LeastSquares"))
        finally:
            master.kill()
    assert wrong.returncode == 2
    assert (
        "INVALID_CONFIG: the master trains 'my_models:LeastSquares', this worker's objective is "
        "'my_models:Other'"
    ) in wrong_err
    assert json.loads((tmp_path / "result.json").read_text())["trace"][-1]["samples"] == 300


def test_bench_cluster_smoke(tmp_path: Path) -> None:
    """aiodq bench cluster: each side's CPU per applied update, by coding, against AsyFPG's."""
    out = tmp_path / "cluster.json"
    options = ["--variants", "asyfpg,aligned", "--warm-up", "20", "--updates", "60", "--repeats", "1"]
    result = aiodq("bench", "cluster", *options, "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report
    assert report["dataset"] == "a9a-bundled" and report["d"] == 123 and report["workers"] == 4
    baseline, aligned = report["cases"]
    assert [baseline["variant"], aligned["variant"]] == ["asyfpg", "aligned"]
    for case in report["cases"]:
        assert case["applied_updates"] == 60
        assert case["master_ms"] > 0 and case["workers_ms"] > 0
        # One run each: the total is the sum of the sides (up to the rounding to 4 places).
        assert case["total_ms"] == pytest.approx(case["master_ms"] + case["workers_ms"], abs=2e-4)
        for part in ("master", "workers", "total"):
            expected = case[f"{part}_ms"] / baseline[f"{part}_ms"]
            assert case[f"{part}_against_asyfpg"] == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--variants", "adaptive"], "--variants: unknown 'adaptive'"),
        (["--variants", "asyfpg,"], "--variants: unknown ''"),
        (["--variants", "asyfpg,asyfpg"], "--variants: a variant is named twice"),
        (["--data", "/nonexistent"], "--data applies to a named --dataset"),
        (["--workers", "40000"], "--workers must be between 1 and 1024"),
        (["--dataset", "debdesc"], "--dataset debdesc needs --data"),
        (["--dataset", "real-sim"], "--dataset: unknown 'real-sim'"),
        (["--updates", "0"], "--updates must be between 1 and"),
        (["--warm-up", str(10**8)], "--warm-up must be between 1 and"),
    ],
)
def test_bench_cluster_refuses_bad_options(options: list[str], message: str) -> None:
    """aiodq bench cluster: a bad option is a usage error (exit 2) that names it, before any run."""
    result = aiodq("bench", "cluster", *options)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("bench", ["codec", "master", "worker", "cluster"])
def test_bench_out_that_is_a_folder_is_refused_before_the_run(bench: str, tmp_path: Path) -> None:
    """aiodq bench ... --out FOLDER: a usage error at once (it used to fail only after the whole run)."""
    result = aiodq("bench", bench, "--out", str(tmp_path))
    assert result.returncode == 2
    assert f"cannot write {tmp_path}: it is a folder" in result.stderr
    assert not result.stdout  # no benchmark ran


def test_bench_cluster_refuses_more_workers_than_samples(tmp_path: Path) -> None:
    """aiodq bench cluster: a dataset with fewer samples than workers is a usage error, not a traceback."""
    (tmp_path / "libsvm").mkdir()
    (tmp_path / "libsvm" / "a9a").write_text("+1 3:1 10:1\n-1 5:1\n+1 7:1 9:1\n")
    result = aiodq("bench", "cluster", "--dataset", "a9a", "--data", str(tmp_path), "--workers", "4")
    assert result.returncode == 2
    assert "--workers 4: more workers than the 3 samples to share" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_worker_smoke(tmp_path: Path) -> None:
    """aiodq bench worker: a worker's step split into model decode, computation and encode."""
    out = tmp_path / "worker.json"
    options = ["--dims", "1e3", "--algorithms", "asylpg,qsvrg", "--repeats", "3", "--out", str(out)]
    result = aiodq("bench", "worker", *options)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report
    assert [case["algorithm"] for case in report["cases"]] == ["asylpg", "qsvrg"]
    for case in report["cases"]:
        assert case["d"] == 1000 and case["compute_ms"] > 0 and case["encode_ms"] > 0
        assert case["prepare_ms"] > 0 and case["critical_path_ms"] < case["step_ms"]
        assert 0 < case["codec_share"] < 1 and 0 < case["overlap_saving"] < 1


def test_the_label_mapping_reaches_aiodq_log_and_bad_data_leaves_the_last_log(tmp_path: Path) -> None:
    """usage.md: the mapping of the labels is logged (in OUT/aiodq.log); a run refused for its data
    (exit 2) leaves the previous run's aiodq.log as it was."""
    data = tmp_path / "zero-one.svm"
    data.write_text("0 1:1 2:1\n1 1:2\n0 2:1\n1 1:1\n")
    out = tmp_path / "out"
    options = ("--workers", "2", "--epochs", "1", "--no-progress", "--out", str(out))
    result = aiodq("run", "--data", str(data), *options)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (out / "aiodq.log").read_text()
    assert "aiodq.models INFO zero-one.svm: labels 0 -> -1, 1 -> +1" in log
    refused = aiodq("run", "--data", str(tmp_path / "missing.svm"), "--no-progress", "--out", str(out))
    assert refused.returncode == 2
    assert (out / "aiodq.log").read_text() == log


def test_aiodq_run_shows_the_epochs_in_its_progress_table(tmp_path: Path) -> None:
    """Without --no-progress the live table goes to stderr; where stderr is not a terminal, rich prints
    it once at the end: one row per epoch record (x_0 and 2 epochs) and the run's figures."""
    data = ROOT / "tests" / "fixtures" / "a9a-head-300"
    done = aiodq("run", "--data", str(data), "--workers", "1", "--epochs", "2", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    trace = json.loads((tmp_path / "result.json").read_text())["trace"]
    lines = [line.strip() for line in done.stderr.splitlines()]
    assert "aiodq run: asylpg, 1 workers" in lines
    rows = [line.strip("│ ").split("│") for line in lines if line.startswith("│")]
    assert [(int(row[0]), float(row[1])) for row in rows] == [
        (r["epoch"], round(r["loss"], 6)) for r in trace
    ]
    caption = next(line for line in lines if line.startswith("version "))
    assert caption.startswith(f"version {trace[-1]['version']}, ") and caption.endswith(" s")


def test_a_log_file_that_cannot_be_written_is_said_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records aiodq.log cannot take (a full disk) give one line on stderr, not Python's logging traceback
    for each (a durability attack counted 26 of them, the run's own error buried among 787 lines)."""
    import errno  # noqa: PLC0415
    import logging  # noqa: PLC0415

    from aiodq.cli.logs import add_logfile  # noqa: PLC0415

    logger = logging.getLogger("aiodq")
    before = list(logger.handlers)
    add_logfile(tmp_path / "aiodq.log")
    (handler,) = [h for h in logger.handlers if h not in before]
    opened = handler.stream  # type: ignore[attr-defined]
    try:

        class Full:
            def write(self, text: str) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            def flush(self) -> None:
                pass

        handler.stream = Full()  # type: ignore[attr-defined]
        for _ in range(3):
            logging.getLogger("aiodq.master").warning("a record")
    finally:
        logger.removeHandler(handler)
        opened.close()
    log = tmp_path / "aiodq.log"
    said = f"aiodq: cannot write the log {log}: No space left on device; it may lack what follows\n"
    assert capsys.readouterr().err == said


def test_a_second_command_is_refused_the_out_folder_another_holds(tmp_path: Path) -> None:
    """aiodq run and aiodq master hold their --out folder (a flock on the folder itself, no file): a
    second command given it is refused with one line, exit 2, before it writes anything (a newcomer's
    two runs spliced their logs line by line); the folder is free once the holder ends, however."""
    from aiodq.cli.outfolder import hold, release  # noqa: PLC0415
    from aiodq.errors import UsageError  # noqa: PLC0415

    out = tmp_path / "out"
    out.mkdir()
    script = (
        f"from pathlib import Path; from aiodq.cli.outfolder import hold; hold(Path({str(out)!r})); "
        "print('held', flush=True); input()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            with pytest.raises(
                UsageError, match=rf"^--out {out} is in use by another run: give another folder$"
            ):
                hold(out)
            refused = aiodq("run", "--epochs", "1", "--workers", "1", "--no-progress", "--out", str(out))
            assert refused.returncode == 2
            assert refused.stderr == f"aiodq run: --out {out} is in use by another run: give another folder\n"
            assert list(out.iterdir()) == []  # nothing written: no log
        finally:
            holder.kill()
    hold(out)  # the holder's end let it go
    hold(out)  # and this process may take it again (hold lets go of what it held first)
    release()


def test_a_stop_while_the_results_are_written_comes_after_them() -> None:
    """Ctrl-C (also one that arrived just before) and SIGTERM wait until the block that writes the results
    is done, then take effect (a second Ctrl-C as the results were written lost the model: 8 of 8)."""
    from aiodq.launch.common import signals_deferred  # noqa: PLC0415

    terms: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: terms.append(signum))
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in aiodq's process)
    try:
        steps = []
        with pytest.raises(KeyboardInterrupt), signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100_000):  # bytecodes enough for Python to run any handler due (a review:
                steps.append(None)  # a first version blocked SIGTERM in this thread only, and numpy's
            steps.clear()  # BLAS threads took it, with the handler running here)
            steps.append("written")
            assert terms == []
        # Delivered once unblocked; Python runs its handler at its next check of pending signals.
        poll_until(lambda: terms, 5.0, "the SIGTERM held during the block")
        assert steps == ["written"] and terms == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, interrupt)


def test_a_double_ctrl_c_during_the_handover_comes_after_the_finished_hook() -> None:
    """Two Ctrl-Cs as training ends, before the hook that writes the results has written them: the
    KeyboardInterrupt comes once the hook is done (it came inside the hook, and the results were lost)."""
    from aiodq.launch.common import Handover  # noqa: PLC0415

    class Finished:
        coordinator = None

        def result(self) -> str:
            return "the result"

    written: list[object] = []

    def finished(result: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        steps = [None for _ in range(100_000)]  # bytecodes enough for Python to run any handler due
        written.append((result, len(steps)))

    handover = Handover(Finished(), lambda result: None, finished)  # type: ignore[arg-type]
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in aiodq's process)
    try:
        with pytest.raises(KeyboardInterrupt):
            handover()
        assert written == [("the result", 100_000)]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, interrupt)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_worker_processes_end_with_aiodq_run_however_it_ends(tmp_path: Path) -> None:
    """aiodq run killed with SIGKILL (no clean-up of its own): its worker processes get SIGTERM from the
    kernel and end (a durability attack saw them retry for 26.5 s, their --retry-for)."""
    run = subprocess.Popen(
        [sys.executable, "-m", "aiodq", "run", "--epochs", "10000", "--workers", "2", "--no-progress",
         "--out", str(tmp_path / "out")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers: list[int] = []
    try:
        poll_until(lambda: len(children(run.pid)) == 2, 60.0, "aiodq run's two worker processes")
        workers = children(run.pid)
        run.kill()
        run.wait()
        poll_until(
            lambda: not any(map(alive, workers)), 15.0, "the worker processes' end after aiodq run's SIGKILL"
        )
    finally:
        run.kill()
        for worker in filter(alive, workers):
            os.kill(worker, signal.SIGKILL)


def test_an_out_folder_that_cannot_be_locked_is_used_unlocked_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only another holder refuses --out: a file system whose flock fails otherwise (NFS emulates it with
    byte-range locks, which a folder opened read-only cannot take: EBADF) runs unlocked, saying so
    (a review: every run with --out on NFS would have exited 2)."""
    import errno  # noqa: PLC0415
    import fcntl  # noqa: PLC0415

    from aiodq.cli.outfolder import _Held, hold, release  # noqa: PLC0415

    def nfs(descriptor: int, operation: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", nfs)
    hold(tmp_path)
    assert _Held.descriptor is None
    assert capsys.readouterr().err == (
        f"aiodq: --out {tmp_path} cannot be locked (Bad file descriptor); another run could use it too\n"
    )
    release()


def test_options_of_other_algorithms_are_taken_with_resume() -> None:
    """A review: a checkpoint written before options of other algorithms were refused may name one (phi with
    asylpg), and is resumed with the options it names; restore compares them, so --resume takes them."""
    from aiodq.cli import _parser  # noqa: PLC0415
    from aiodq.cli.options import train_config  # noqa: PLC0415
    from aiodq.errors import UsageError  # noqa: PLC0415

    given = ["run", "--phi", "0.1", "--checkpoint", "ck.npz"]
    with pytest.raises(UsageError, match=r"^--phi: for --algorithm sparse-asylpg, not asylpg: leave it out$"):
        train_config(_parser().parse_args(given))
    assert train_config(_parser().parse_args([*given, "--resume"])).phi == 0.1


@pytest.mark.parametrize("stdout", ["read once", "/dev/full"])
def test_aiodq_master_trains_on_when_its_stdout_cannot_be_written(tmp_path: Path, stdout: str) -> None:
    """An operator's audit: ``aiodq master ... | head -1`` (the address, as usage.md suggests) ended a run
    that trained with status 1 and no word at its end (rich's summary exits on EPIPE), and ``> /dev/full``
    failed the start as "cannot listen on ...: No space left on device".  The run goes on without stdout."""
    out = tmp_path / "out"
    address = f"127.0.0.1:{free_port() if stdout == '/dev/full' else 0}"
    command = [sys.executable, "-m", "aiodq", "master", "--listen", address, "--workers", "1",
               "--epochs", "2", "--data", str(A9A_HEAD), "--out", str(out)]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with contextlib.ExitStack() as stack:
        err = stack.enter_context(
            (tmp_path / "master.err").open("wb")
        )  # (a file: a full pipe would block it)
        sink = stack.enter_context(Path(stdout).open("wb")) if stdout == "/dev/full" else subprocess.PIPE
        master = subprocess.Popen(command, stdout=sink, stderr=err, env=env, cwd=ROOT)
        stack.callback(master.kill)
        if master.stdout is not None:
            first = master.stdout.readline().decode()
            master.stdout.close()  # (head -1: the reader goes)
            address = first.split("listening on ")[1].split(",")[0]
        shard = ("--shard", "0/1", "--data", str(A9A_HEAD), "--retry-for", "30")
        worker = aiodq("worker", "--connect", address, *shard)
        assert worker.returncode == 0, worker.stderr
        master.wait(timeout=60)
    said = (tmp_path / "master.err").read_text()
    assert master.returncode == 0, said
    assert json.loads((out / "result.json").read_text())["failure"] is None
    assert "cannot listen" not in said and ("cannot write stdout" in said) == (stdout == "/dev/full")
    assert "aiodq master: wrote " in (out / "aiodq.log").read_text()


def test_the_workers_of_a_run_that_diverged_end_at_once_saying_so(tmp_path: Path) -> None:
    """An operator's audit: a diverged run's master closed its sessions with GOING_AWAY (a master that may
    come back), so its workers retried for --retry-for (120 s under Slurm) and then exited 1 on "cannot reach
    the master".  The run is over: NO_ERROR, the verdict its reason, and the worker exits 0 saying it."""
    out = tmp_path / "out"
    status, worker = master_and_one_worker(
        ["--epochs", "3", "--l2", "10", "--step", "1", "--data", str(A9A_HEAD), "--out", str(out)],
        ["--data", str(A9A_HEAD), "--retry-for", "60"],
        tmp_path / "master.err",
    )
    assert status == 1
    assert worker.returncode == 0, worker.stderr
    said = worker.stderr.splitlines()
    assert len(said) == 1 and said[0].startswith("aiodq worker: the master ended training: "), said
    assert "the run diverged" in said[0]
    assert "the run diverged" in (tmp_path / "master.err").read_text()  # (and the master's exit status 1)


def test_what_a_command_says_is_logged_when_stderr_cannot_be_written(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A review: ``aiodq run ... 2>&1 | head -1`` lost a failed run's verdict from its aiodq.log (say()
    printed first, and the broken pipe raised), and the status became 141."""
    from aiodq.cli.logs import SAID, say  # noqa: PLC0415

    class Gone(io.TextIOBase):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stderr", Gone())
    with caplog.at_level(logging.INFO, logger=SAID.name):
        say("run", "the run diverged")
    assert caplog.messages == ["aiodq run: the run diverged"]
    # Nor do the other lines on stderr raise (a second review: > /dev/full 2>&1 failed aiodq master's start
    # as "cannot listen" again, through stdout_gone's own line; aiodq worker 2>&1 | head -1 exited 141).
    from aiodq.cli.logs import tell  # noqa: PLC0415
    from aiodq.launch.common import stdout_gone  # noqa: PLC0415

    tell("aiodq worker: the master ended training: the run diverged")
    monkeypatch.setattr(sys, "stdout", Gone())  # (no descriptor: nothing to point at devnull)
    stdout_gone(OSError(28, "No space left on device"), "master")


def test_a_stop_before_the_command_began_names_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator's audit: stopped while its data was read, aiodq master said "aiodq: stopped by SIGTERM",
    not "aiodq master: ..." as every other line of a command."""
    import aiodq.cli as cli  # noqa: PLC0415

    def reading(argv: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_main", reading)
    assert cli.main(["master", "--listen", "127.0.0.1:0"]) == 130
    assert capsys.readouterr().err == "aiodq master: interrupted\n"
    assert cli.main(["--version"]) == 130
    assert capsys.readouterr().err == "aiodq: interrupted\n"
