"""Checkpoints of a whole local run: ``aiodq run --checkpoint`` / ``run_local(checkpoint=...)``.

A run stopped early (cancelled, timed out, SIGTERM) leaves a checkpoint of where it stood and says
so; ``resume`` continues it, refusing other data and a finished run.  ``aiodq master`` names its data
in the checkpoint too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import aiodq
from aiodq.cli import _kept
from aiodq.cli.finish import finish, write_results_line
from aiodq.cli.outfolder import found, holds_finished_run, undo_refused_start
from aiodq.data import load_dataset
from aiodq.errors import CheckpointError, RunError
from aiodq.launch.results import load_records, write_results
from aiodq.net import checkpoint as checkpoint_file
from aiodq.net.checkpoint import resumable
from aiodq.protocol.recovery import Checkpoint
from aiodq.protocol.result import RunResult

from .cluster import LEAST_SQUARES, ROOT, wait_until
from .cluster import aiodq as aiodq_command
from .rel_peers import Process, wait_for_text

DATA = ROOT / "tests" / "fixtures" / "a9a-head-300"


def _version(path: Path) -> int:
    kept = resumable(path) if path.exists() else None
    return -1 if kept is None else kept[1]


def _epoch(path: Path) -> int:
    kept = resumable(path) if path.exists() else None
    return -1 if kept is None else kept[0]


@pytest.mark.asyncio
async def test_a_local_run_cancelled_part_way_resumes_where_it_stood(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    config = aiodq.TrainConfig(epochs=6, updates_per_epoch=400)
    run = asyncio.create_task(
        aiodq.run_local(config, DATA, workers=2, checkpoint=path, checkpoint_interval=0.2)
    )
    await wait_until(lambda: _version(path) >= 100 or run.done(), 60, "a checkpoint of 100 updates")
    assert not run.done()
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    saved = checkpoint_file.load(path).meta  # written as the master closed: past the periodic one
    assert saved["phase"] in ("snapshot", "inner") and saved["state"]["version"] >= 100
    assert saved["data"] == load_dataset(DATA).fingerprint()

    result = await aiodq.run_local(config, DATA, workers=2, checkpoint=path, resume=True)
    assert result.ok and result.failure is None
    assert [asdict(record) for record in result.trace[: len(saved["trace"])]] == saved["trace"]
    assert [record.epoch for record in result.trace] == list(range(7))  # x_0 and 6 epochs, once each
    assert result.trace[-1].version >= 6 * 400
    # The wall time counts both sessions' training, as the trace's times do.
    assert result.trace[-1].time <= result.summary["wall_time"]
    assert resumable(path) is None  # marked done

    with pytest.raises(CheckpointError, match="written by a run on other data"):
        await aiodq.run_local(config, None, workers=2, checkpoint=path, resume=True)  # the bundled a9a
    # A stop as the results were written (a second Ctrl-C, say) ends with a line that says where they are.
    assert _kept(argparse.Namespace(checkpoint=str(path), started=0.0)) == (
        f"; training had finished: --resume gives its results again from the checkpoint {path}"
    )
    # Unless the finished checkpoint is older than the command: another run's (a review: a run stopped
    # as it loaded its data said so of an old checkpoint it had not touched).
    later = path.stat().st_mtime + 1.0
    assert _kept(argparse.Namespace(checkpoint=str(path), started=later)) == ""
    # Resumed again, the finished run trains nothing and gives its results as they were: the model and
    # the trace; its checkpoint is left as it is.
    checkpoint_bytes = path.read_bytes()
    again = await aiodq.run_local(config, DATA, workers=2, checkpoint=path, resume=True)
    assert again.ok and np.array_equal(again.model, result.model) and again.trace == result.trace
    assert again.summary["version"] == result.summary["version"] and path.read_bytes() == checkpoint_bytes
    out = tmp_path / "out"
    finished = aiodq_command(
        "run", "--data", str(DATA), "--workers", "2", "--epochs", "6", "--updates-per-epoch", "400",
        "--checkpoint", str(path), "--resume", "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr.strip().endswith(
        f"resumed from {path} at epoch 6, version {result.summary['version']}: "
        "the run had finished; nothing trains, its results are given again"
    )
    model, _ = aiodq.load_model(out / "model.npz")
    assert np.array_equal(model, result.model)
    assert json.loads((out / "result.json").read_text())["trace"] == result.summary["trace"]
    # Resumed once more into the folder that holds its results: the log goes on from the one there (a
    # crash-recovery trial: a finished run's results got back so replaced its log with three lines).
    before = (out / "aiodq.log").read_text()
    command = finished.args[3:]  # (after python -m aiodq)
    assert aiodq_command(*command).returncode == 0
    log = (out / "aiodq.log").read_text()
    assert log.startswith(before) and log.count("nothing trains, its results are given again") == 2, log
    assert not (out / "aiodq.log.new").exists()
    # The same run (its checkpoint keeps its provenance's id): its own results are replaced, not moved
    # aside as another run's (a review: each --resume kept another full copy of the run).
    assert sorted(p.name for p in out.iterdir()) == [
        "aiodq.log",
        "loss_vs_bits.png",
        "model.npz",
        "result.json",
    ]


def test_a_timed_out_local_run_says_where_its_checkpoint_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.ckpt"
    config = aiodq.TrainConfig(epochs=10_000)
    with pytest.raises(RunError) as info:
        asyncio.run(aiodq.run_local(config, DATA, workers=1, checkpoint=path, timeout=2))
    kept = resumable(path)
    assert kept is not None
    assert str(info.value) == (
        f"the run did not finish within 2 s; the checkpoint {path} holds the run as it stood "
        f"(epoch {kept[0]}, version {kept[1]}): resume it to continue "
        "(the same options with --resume; resume=True from Python)"
    )
    with pytest.raises(RunError) as bare:  # without a checkpoint there is nothing to point to
        asyncio.run(aiodq.run_local(config, DATA, workers=1, timeout=0.5))
    assert str(bare.value) == "the run did not finish within 0.5 s"
    # A finished run whose checkpoint still holds it unfinished (its end not written: a full disk) says that
    # --resume would train it again (a crash-recovery trial did so, as the next start advised).
    finished = asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), DATA, workers=1))
    assert finish("run", finished, None, checkpoint=str(path)) == 0
    said = f"the checkpoint {path} still holds the run at epoch {kept[0]}, version {kept[1]}"
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"aiodq run: {said}: --resume would train it again; the run finished"), err
    # aiodq master resuming with --records an earlier version's checkpoint, which keeps no model records,
    # says that the file will lack the copies taken before it (a crash-recovery trial found them gone,
    # unsaid); this version's checkpoints keep them (test_hardening).
    older = checkpoint_file.load(path)
    del older.meta["records"]
    checkpoint_file.save(path, older)
    records = tmp_path / "records.npz"
    master = Process(
        tmp_path, "master", "master", "--listen", "127.0.0.1:0", "--data", str(DATA), "--workers", "1",
        "--epochs", "10000", "--checkpoint", str(path), "--resume", "--record-every", "10", "--records",
        str(records),
    )  # fmt: skip
    try:
        said = (
            f"aiodq master: --records {records}: the model copies from version {kept[1]} on; an earlier "
            "version's checkpoint keeps none, and those the interrupted run took are lost"
        )
        asyncio.run(wait_for_text(lambda: master.stderr, said, 60))
    finally:
        master.kill()


def _objective(model: np.ndarray) -> float:
    """F(x) = (1/n) sum log(1 + exp(-y_i a_i . x)) + 1e-4 / 2 ||x||^2 on DATA (docs/algorithms.md 1.1)."""
    data = load_dataset(DATA)
    margins = data.labels * (data.features @ model)
    return float(np.logaddexp(0.0, -margins).mean() + 0.5e-4 * model @ model)


def test_a_timed_out_run_hands_back_the_model_as_it_stood(tmp_path: Path) -> None:
    """The RunError of a timeout carries the run as it stood: the last snapshot, the point whose loss the
    trace ends with, and the error as its failure; ``aiodq run`` writes it, and still fails."""
    config = aiodq.TrainConfig(epochs=10_000)
    with pytest.raises(RunError) as info:
        asyncio.run(aiodq.run_local(config, DATA, workers=2, timeout=3))
    stood = info.value.result
    assert stood is not None and not stood.ok
    assert stood.failure == stood.summary["failure"] == str(info.value) == "the run did not finish within 3 s"
    assert 2 <= len(stood.trace) < 10_000 and stood.trace[-1].epoch == len(stood.trace) - 1
    assert stood.trace[-1].loss < stood.trace[0].loss  # it trained
    assert _objective(stood.model) == pytest.approx(stood.trace[-1].loss, rel=1e-9)
    assert stood.summary["dataset"] == DATA.name and stood.summary["worker_restarts"] == 0

    out = tmp_path / "out"
    run = aiodq_command(
        "run", "--data", str(DATA), "--workers", "2", "--epochs", "10000", "--timeout", "3",
        "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 1
    said = run.stderr.strip().splitlines()
    assert said[0] == "aiodq run: the run did not finish within 3 s (--timeout)"  # (the option named)
    assert said[1].startswith("aiodq run: the run as it stood, at epoch ")
    assert said[1].endswith(f"wrote {out / 'result.json'}, {out / 'model.npz'}, {out / 'loss_vs_bits.png'}; "
                            f"log in {out / 'aiodq.log'}")  # fmt: skip
    written = json.loads((out / "result.json").read_text())
    assert written["failure"] == "the run did not finish within 3 s"
    model, meta = aiodq.load_model(out / "model.npz")
    assert meta["failure"] == written["failure"]
    assert _objective(model) == pytest.approx(written["trace"][-1]["loss"], rel=1e-9)
    assert f"at epoch {written['trace'][-1]['epoch']} of 10000 " in said[1]

    # A finished run's results are never replaced by those of a run stopped part way (a review).
    finished = aiodq_command(
        "run", "--data", str(DATA), "--workers", "1", "--epochs", "1", "--no-progress", "--out", str(out)
    )
    assert finished.returncode == 0, finished.stderr
    kept = (out / "result.json").read_bytes(), (out / "model.npz").read_bytes()
    finished_log = (out / "aiodq.log").read_text()
    assert "epoch 1" in finished_log
    stopped = aiodq_command(
        "run", "--data", str(DATA), "--workers", "2", "--epochs", "10000", "--timeout", "3",
        "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert stopped.returncode == 1
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"aiodq run: the run as it stood was not written: {out} holds the results of a run that finished, "
        "kept with their aiodq.log (this run's log is at the end of aiodq.log.new; give another --out)"
    )
    assert ((out / "result.json").read_bytes(), (out / "model.npz").read_bytes()) == kept
    # The finished results keep their log; the stopped run's is aiodq.log.new.
    assert (out / "aiodq.log").read_text() == finished_log
    stopped_log = (out / "aiodq.log.new").read_text()
    assert "joined" in stopped_log and stopped_log != finished_log


def test_a_failed_run_never_replaces_finished_results_nor_writes_an_untrained_model(tmp_path: Path) -> None:
    """A run that ends failed is written as it stood, except over a finished run's results (kept) or when
    it never trained: its model would be the starting point (a trial found ``aiodq master --out`` doing
    both: a finished model replaced by zeros)."""
    out = tmp_path / "out"
    finished = aiodq_command(
        "run", "--data", str(DATA), "--workers", "1", "--epochs", "1", "--no-progress", "--out", str(out)
    )
    assert finished.returncode == 0, finished.stderr
    kept = (out / "result.json").read_bytes(), (out / "model.npz").read_bytes()
    finished_log = (out / "aiodq.log").read_text()
    lonely = (
        "master",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--data",
        str(DATA),
        "--join-timeout",
        "1",
    )
    for folder in (out, tmp_path / "fresh"):
        never = aiodq_command(*lonely, "--out", str(folder))
        assert never.returncode == 1, never.stderr
        said = never.stderr.strip().splitlines()
        assert (
            said[0]
            == "aiodq master: the results were not written: the run never trained (no snapshot phase ended)"
        )
        assert said[-1] == "aiodq master: 0 of 2 workers joined within 1 s (--join-timeout)"
    assert ((out / "result.json").read_bytes(), (out / "model.npz").read_bytes()) == kept
    assert sorted(path.name for path in (tmp_path / "fresh").iterdir()) == ["aiodq.log"]
    # The log says what ran and how it ended, as stderr did.
    lines = (tmp_path / "fresh" / "aiodq.log").read_text().splitlines()
    assert lines[0].endswith(
        f" aiodq.cli INFO aiodq {shlex.join(lonely)} --out {tmp_path / 'fresh'} (version {aiodq.__version__})"
    )
    assert [line.split(" ERROR ", 1)[1] for line in lines[1:]] == said
    master_log = (out / "aiodq.log.new").read_text()
    assert "0 of 2 workers joined within 1 s" in master_log
    # A run that trained, then failed (it diverged), keeps the finished results too.  (One worker: its
    # updates come in one order, and it diverges in its second epoch every time; with two, at step 1, a
    # fresh clone's run diverged in its first, and was not written for never having trained.)
    diverged = aiodq_command(
        "run", "--data", str(DATA), "--workers", "1", "--epochs", "3", "--l2", "10", "--step", "0.5",
        "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert diverged.returncode == 1, diverged.stderr
    assert "diverged" in diverged.stderr
    # The failure's line names the step (a newcomer trial: a user model diverged at the default step).
    (failure,) = [line for line in diverged.stderr.splitlines() if "the run diverged" in line]
    assert "; the step was 0.5: a smaller --step may train" in failure, failure
    assert (
        f"the results were not written: {out} holds the results of a run that finished, kept "
        "with their aiodq.log (this run's log is at the end of aiodq.log.new; give another --out)"
    ) in diverged.stderr
    assert ((out / "result.json").read_bytes(), (out / "model.npz").read_bytes()) == kept
    # Two runs that did not finish (aiodq master, then aiodq run) left the finished run's log as it was
    # (a review lost it to the second run of such a chain), and aiodq.log.new holds both of theirs.
    assert (out / "aiodq.log").read_text() == finished_log
    both = (out / "aiodq.log.new").read_text()
    assert both.startswith(master_log)
    assert re.search(r"worker 0 \(shard 0/1\) joined", both[len(master_log) :]), both
    # A run that finishes there replaces the results, and its log becomes aiodq.log; the finished run's
    # results and log are moved aside, not lost, and the line that says where the results are says so.
    _run_moving_the_earlier_results_aside(out, ", aiodq.log")
    files = ["aiodq.log", "loss_vs_bits.png", "model.npz", "result.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(files + [name + ".earlier" for name in files])
    assert (out / "aiodq.log").read_text() != finished_log and "epoch 1" in (out / "aiodq.log").read_text()
    assert (out / "aiodq.log.earlier").read_text() == finished_log
    earlier = ((out / "result.json.earlier").read_bytes(), (out / "model.npz.earlier").read_bytes())
    assert earlier == kept


def test_the_model_is_written_when_result_json_cannot_be_and_each_error_names_its_file(
    tmp_path: Path,
) -> None:
    """write_results writes the model first and each file whatever became of the other (a trial lost the
    model to a result.json that could not be written, under a message naming the folder)."""
    result = asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), DATA, workers=1))
    blocked_summary, blocked_model = tmp_path / "a", tmp_path / "b"
    (blocked_summary / "result.json").mkdir(parents=True)
    (blocked_model / "model.npz").mkdir(parents=True)
    with pytest.raises(RunError) as info:
        write_results(result, blocked_summary, rescue=False)
    wrote = blocked_summary / "model.npz"
    assert (
        str(info.value) == f"cannot write {blocked_summary / 'result.json'}: Is a directory (wrote {wrote})"
    )
    model, _ = aiodq.load_model(blocked_summary / "model.npz")
    assert np.array_equal(model, result.model)
    assert sorted(path.name for path in blocked_summary.iterdir()) == ["model.npz", "result.json"]  # no .tmp
    with pytest.raises(RunError) as info:
        write_results(result, blocked_model, rescue=False)
    assert str(info.value).startswith(f"cannot write the model file {blocked_model / 'model.npz'}: ")
    assert str(info.value).endswith(f" (wrote {blocked_model / 'result.json'})")
    assert json.loads((blocked_model / "result.json").read_text())["trace"] == result.to_json()["trace"]


def test_a_stopped_runs_results_and_log_are_kept_when_another_run_writes_there(tmp_path: Path) -> None:
    """A newcomer trial: a run stopped at epoch 2 replaced the model of one stopped at epoch 8 in the
    same --out, and truncated its log; nothing said so.  Now the earlier run's files are moved aside
    (NAME.earlier), the line that says where the results are says so, and aiodq.log keeps the earlier
    run's part before this run's."""
    earlier = asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), DATA, workers=1))
    stopped = replace(
        earlier,
        failure="interrupted",
        summary=dict(
            earlier.summary,
            failure="interrupted",
            provenance=dict(earlier.summary["provenance"], started="2026"),
        ),
    )
    out = tmp_path / "out"
    write_results(stopped, out)
    assert not holds_finished_run(out)
    planted = {name: (out / name).read_bytes() for name in ("result.json", "model.npz", "loss_vs_bits.png")}
    (out / "aiodq.log").write_text("the earlier run's log\n")
    _run_moving_the_earlier_results_aside(out)
    assert {name: (out / f"{name}.earlier").read_bytes() for name in planted} == planted
    assert json.loads((out / "result.json").read_text())["failure"] is None
    log = (out / "aiodq.log").read_text()
    assert log.startswith("the earlier run's log\n") and " aiodq.cli INFO aiodq run " in log
    # A third run keeps the second's beside the first's (a review: .earlier was replaced, the first lost).
    second = {name: (out / name).read_bytes() for name in planted}
    run = aiodq_command(
        "run", "--data", str(DATA), "--workers", "1", "--epochs", "1", "--no-progress", "--out", str(out)
    )
    assert run.returncode == 0, run.stderr
    assert (
        "; moved the earlier run's result.json, model.npz, loss_vs_bits.png, aiodq.log aside (.earlier.2); "
        in run.stdout
    )
    assert {name: (out / f"{name}.earlier").read_bytes() for name in planted} == planted
    assert {name: (out / f"{name}.earlier.2").read_bytes() for name in planted} == second
    ids = {
        json.loads((out / name).read_text())["provenance"]["id"]
        for name in ("result.json", "result.json.earlier.2")
    }
    assert len(ids) == 2  # (runs are told apart by a random id, not by the second they started in)
    assert (
        out / "aiodq.log.earlier.2"
    ).read_text() == log  # the second run's (and the planted part): with it


def _run_moving_the_earlier_results_aside(out: Path, log: str = "") -> None:
    """``aiodq run`` into ``out``, which holds another run's results: it says it moved them aside (and
    ``log``, ", aiodq.log", where a finished run's log goes with them)."""
    run = aiodq_command(
        "run", "--data", str(DATA), "--workers", "1", "--epochs", "1", "--no-progress", "--out", str(out)
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith(
        f"; moved the earlier run's result.json, model.npz, loss_vs_bits.png{log} aside (.earlier); "
        f"log in {out / 'aiodq.log'}"
    )


STOP_IN_FINISH = """
import os, signal, sys
import aiodq.cli.commands as commands
finish = commands.finish
def stopped_in_finish(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # as the loop has ended: the last pass begins
    return finish(*args, **kwargs)
commands.finish = stopped_in_finish
from aiodq.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("stop", "status", "said"), [("SIGTERM", 143, "stopped by SIGTERM"), ("SIGINT", 130, "interrupted")]
)
def test_a_stop_as_the_results_are_written_again_says_where_they_are(
    tmp_path: Path, stop: str, status: int, said: str
) -> None:
    """An audit: a SIGTERM after the run's loop had ended (the results' last pass, the summary) killed the
    command with no word; a newcomer's Ctrl-C then left complete results and only "interrupted" said.
    Now the stop ends the command at once (the last pass may score a test set for long), saying where
    the results written as training ended are, then the stop, with its status."""
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", STOP_IN_FINISH, stop, "run", "--data", str(DATA), "--workers", "1",
         "--epochs", "1", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == status, run.stderr[-3000:]
    where, stopped = run.stderr.strip().splitlines()[-2:]
    assert where == (
        f"aiodq run: training had finished: wrote {out / 'result.json'}, {out / 'model.npz'}, "
        f"{out / 'loss_vs_bits.png'}; log in {out / 'aiodq.log'}"
    )
    assert stopped == f"aiodq run: {said}"
    assert json.loads((out / "result.json").read_text())["failure"] is None


def test_the_test_set_is_scored_once_for_the_two_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: the results written as training ended and again at the end scored the test set twice, the
    first time with stops deferred.  The same model is scored once; another model again."""
    import aiodq.cli.finish as finishing  # noqa: PLC0415

    calls: list[int] = []
    scores = finishing.test_scores

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return scores(*args, **kwargs)

    monkeypatch.setattr(finishing, "test_scores", counted)
    result = asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), DATA, workers=1))
    data = load_dataset(DATA)
    write_results_line(result, tmp_path / "out", data, data)
    write_results_line(result, tmp_path / "out", data, data)
    assert (
        len(calls) == 1 and "test_loss" in json.loads((tmp_path / "out" / "result.json").read_text())["test"]
    )
    write_results_line(replace(result, model=result.model + 1.0), tmp_path / "other", data, data)
    assert len(calls) == 2


def test_a_resumed_run_leaves_another_finished_runs_log_as_it_was(tmp_path: Path) -> None:
    """An audit: a run stopped in the folder of another, finished run, then resumed there, appended the
    resumed session to that run's aiodq.log (and said its log was at the end of aiodq.log.new).  Its
    checkpoint keeps its run's id: the finished results are another run's, and keep their log."""
    out, path = tmp_path / "out", tmp_path / "run.ckpt"
    common = ("run", "--data", str(DATA), "--workers", "1", "--no-progress", "--out", str(out))
    assert aiodq_command(*common, "--epochs", "1").returncode == 0
    finished_log = (out / "aiodq.log").read_text()
    stopped = (*common, "--epochs", "100000", "--timeout", "3", "--checkpoint", str(path))
    for resume in ((), ("--resume",)):
        run = aiodq_command(*stopped, *resume)
        assert run.returncode == 1, run.stderr
        assert "this run's log is at the end of aiodq.log.new" in run.stderr, run.stderr
        assert (out / "aiodq.log").read_text() == finished_log
    assert (out / "aiodq.log.new").read_text().count(" aiodq.cli INFO aiodq run ") == 2


def test_a_runs_files_are_never_left_beside_an_earlier_runs(tmp_path: Path) -> None:
    """An operator trial: a run into the folder of an earlier, finished one could not write its result.json
    (a full disk) and left its own model.npz beside the earlier run's result.json and plot, a folder then
    taken for one finished run's results.  The earlier run's files are moved aside where this run's could
    not be written (not removed: a review found the earlier model removed where this run's could not be
    written, no trained model left); this run's own, written as training ended (the same provenance),
    stay; where this run's result.json is written, so is its plot."""
    earlier = asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), DATA, workers=1))
    provenance = dict(earlier.summary["provenance"], started="2026-01-01T00:00:00+00:00", id="another run")
    later = replace(earlier, summary=dict(earlier.summary, provenance=provenance))
    out = tmp_path / "out"
    write_results(earlier, out)
    assert holds_finished_run(out)
    # A process killed between the renames of the two files left a run's model beside another's
    # result.json (an audit): that folder holds no finished run's results.
    write_results(later, tmp_path / "later")
    mixed = tmp_path / "mixed"
    write_results(earlier, mixed)
    (tmp_path / "later" / "model.npz").replace(mixed / "model.npz")
    assert not holds_finished_run(mixed)
    # A model.npz that cannot be read is no finished run's (a review: it counted as one).
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "result.json").write_bytes((out / "result.json").read_bytes())
    (tmp_path / "damaged" / "model.npz").write_bytes(b"not a zip")
    assert not holds_finished_run(tmp_path / "damaged")
    # A model.npz that names no provenance (as earlier versions wrote it) beside its result.json: finished.
    old = checkpoint_file.load(out / "model.npz")
    del old.meta["provenance"]
    checkpoint_file.save(tmp_path / "old" / "model.npz", old, what="model file", private=False)
    (tmp_path / "old" / "result.json").write_bytes((out / "result.json").read_bytes())
    assert holds_finished_run(tmp_path / "old")
    blocker = out / ".result.json.tmp"  # where result.json's temporary file goes: writing it fails
    blocker.mkdir()
    with pytest.raises(RunError) as info:
        write_results(later, out, rescue=False)  # (rescued elsewhere: the test below)
    assert str(info.value) == (
        f"cannot write {out / 'result.json'}: Is a directory (wrote {out / 'model.npz'}); moved an earlier "
        "run's result.json, loss_vs_bits.png aside (.earlier), not to be taken for this run's"
    )
    listed = [".result.json.tmp", "loss_vs_bits.png.earlier", "model.npz", "result.json.earlier"]
    assert sorted(p.name for p in out.iterdir()) == listed
    assert not holds_finished_run(out)
    assert aiodq.load_model(out / "model.npz")[1]["provenance"] == provenance
    assert (
        json.loads((out / "result.json.earlier").read_text())["provenance"] == earlier.summary["provenance"]
    )
    blocker.rmdir()
    write_results(later, out)  # as training ended
    blocker.mkdir()
    with pytest.raises(RunError) as info:
        write_results(later, out, rescue=False)  # complete: result.json cannot be written again
    assert (
        str(info.value) == f"cannot write {out / 'result.json'}: Is a directory (wrote {out / 'model.npz'})"
    )
    assert json.loads((out / "result.json").read_text())["provenance"] == provenance
    assert (out / "loss_vs_bits.png").exists() and holds_finished_run(out)
    # The other way round: this run's model cannot be written (a full disk: the larger file), its
    # result.json is; the earlier run's model is the only trained model left, and is kept aside.
    blocker.rmdir()
    other = tmp_path / "other"
    write_results(earlier, other)
    plot_before = (other / "loss_vs_bits.png").stat().st_ino
    with pytest.MonkeyPatch.context() as patch:

        def full(*args: object, **kwargs: object) -> None:
            raise CheckpointError("cannot write the model file: No space left on device")

        patch.setattr(checkpoint_file, "save", full)
        with pytest.raises(RunError) as info:
            write_results(later, other, rescue=False)
    assert str(info.value) == (
        f"cannot write the model file: No space left on device (wrote {other / 'result.json'}); moved an "
        "earlier run's model.npz aside (.earlier), not to be taken for this run's"
    )
    assert aiodq.load_model(other / "model.npz.earlier")[1]["provenance"] == earlier.summary["provenance"]
    assert json.loads((other / "result.json").read_text())["provenance"] == provenance
    assert (other / "loss_vs_bits.png").stat().st_ino != plot_before  # this run's, drawn again (a new file)
    assert not holds_finished_run(other)


def test_results_that_cannot_be_written_again_keep_those_written_as_training_ended(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command writes the results as training ends, then again complete; if the second pass fails
    (a full disk, here a directory where its temporary file goes), the first pass's files are whole and
    kept, and the command says so, status 0 for a run that finished (a durability attack saw 'cannot
    write result.json' and exit 1 over a result.json that was there).  A plot that cannot be written is
    a warning and leaves the earlier plot whole (the attack saw a 0-byte plot and exit 1); a folder with
    a result.json but no model.npz holds no finished run's results."""
    result = asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), DATA, workers=1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "aiodq.log").write_text("")  # (the command's log, as it opens one in --out)
    early = write_results_line(result, out)
    before = {name: (out / name).read_bytes() for name in ("result.json", "model.npz", "loss_vs_bits.png")}
    (out / ".result.json.tmp").mkdir()
    (out / ".loss_vs_bits.png.tmp").mkdir()
    assert finish("run", result, out, early=early) == 0
    said = capsys.readouterr().err
    assert said.startswith(f"aiodq run: cannot write {out / 'result.json'}: Is a directory (wrote ")
    assert said.rstrip().endswith(
        "; kept the results written as training ended (without the last CLOSE frames' bytes)"
    )
    assert {name: (out / name).read_bytes() for name in before} == before
    (out / ".result.json.tmp").rmdir()  # now only the plot cannot be written
    assert finish("run", result, out) == 0
    plot = out / "loss_vs_bits.png"
    assert f"cannot write {plot}: Is a directory (result.json holds its trace)" in caplog.text
    assert plot.read_bytes() == before["loss_vs_bits.png"]
    wrote = f"wrote {out / 'result.json'}, {out / 'model.npz'}; log in {out / 'aiodq.log'}"
    assert capsys.readouterr().out.rstrip().endswith(wrote)
    # (an operator trial removed --out during a run: the results were written again, "log in" a lost file)
    (out / "aiodq.log").unlink()
    assert finish("run", result, out) == 0
    assert (
        capsys.readouterr().out.rstrip().endswith(f"; the log {out / 'aiodq.log'} was removed during the run")
    )
    (out / ".loss_vs_bits.png.tmp").rmdir()
    assert finish("run", result, tmp_path / "elsewhere", early=RunError("disk full")) == 0  # written now
    # Without results from the end of training, a failure to write them is the run's.
    (out / ".result.json.tmp").mkdir()
    capsys.readouterr()  # (what the calls above printed: the summary below must be this call's)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    assert finish("run", result, out, early=RunError("cannot write them: disk full")) == 1
    printed = capsys.readouterr()
    # (Not written as training ended either: rescued to the temporary directory.)
    (rescued,) = temporary.iterdir()
    said = f"; rescued result.json in {rescued}; as training ended: cannot write them: disk full"
    assert printed.err.rstrip().endswith(said), printed.err
    assert json.loads((rescued / "result.json").read_text())["trace"] == result.to_json()["trace"]
    shutil.rmtree(rescued)
    # The summary is printed all the same (an operator trial's full disk left no final loss anywhere).
    assert "final training loss" in printed.out, printed.out
    # The same error then and now is said once.
    failure = RunError(f"cannot write {out / 'result.json'}: Is a directory (wrote {out / 'model.npz'})")
    assert finish("run", result, out, early=failure) == 1
    (rescued,) = temporary.iterdir()
    assert capsys.readouterr().err.strip() == f"aiodq run: {failure}; rescued result.json in {rescued}"
    shutil.rmtree(rescued)
    # A finished run's checkpoint gives them again: said (an audit: usage.md's recovery went unsaid).
    finished = tmp_path / "finished.ckpt"
    asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), DATA, workers=1, checkpoint=finished))
    assert finish("run", result, out, early=failure, checkpoint=str(finished)) == 1
    (rescued,) = temporary.iterdir()
    again = f"; rescued result.json in {rescued}; --resume gives them again from the checkpoint {finished}"
    assert capsys.readouterr().err.strip() == f"aiodq run: {failure}{again}"
    assert holds_finished_run(out)
    (out / "model.npz").unlink()
    assert not holds_finished_run(out)


def test_a_final_loss_over_part_of_the_samples_is_said_and_fails_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A shard missing from the last snapshot phase (security.md): the command says that its final loss
    covers only part of the data (an operator trial saw a loss below the optimum, over half of a9a,
    reported with nothing to tell). Missing from every phase, it exits 1 (a newcomer's audit: aiodq master
    trained without a worker that refused the run and exited 0, which a cluster engine reads as success);
    from the last only (a worker replaced late: a review), 0."""
    result = asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), DATA, workers=1))
    dataset = load_dataset(DATA)
    assert finish("master", result, None, train=dataset) == 0
    assert "samples" not in capsys.readouterr().err  # every sample counted: nothing to say
    result.trace[-1] = replace(result.trace[-1], samples=150)  # (a worker replaced too late for it: a review)
    assert finish("master", result, None, train=dataset) == 0
    said = (
        "aiodq master: the final loss is over 150 of the 300 samples: a worker's shard was missing from the "
        "last snapshot phase (docs/security.md)"
    )
    assert capsys.readouterr().err == said + "\n"
    result.trace[:] = [replace(record, samples=150) for record in result.trace]  # from every phase
    assert finish("master", result, None, train=dataset) == 1
    assert capsys.readouterr().err == said + "; exit status 1: it was missing from every snapshot phase\n"


def test_a_run_whose_objective_did_not_fall_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    """A torch trial: a user model at the algorithm's default step stayed at chance (F 2.307 at epoch 0,
    2.315 at the last), and the run ended with exit 0 and nothing said.  It is still a finished run
    (F did not double: not a failure), and the command says that F did not fall, with the step."""
    result = asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), DATA, workers=1))
    assert finish("master", result, None) == 0
    assert "did not fall" not in capsys.readouterr().err  # it fell: nothing to say
    result.trace[-1] = replace(result.trace[-1], loss=2.315)
    result.trace[0] = replace(result.trace[0], loss=2.307)
    assert finish("master", result, None) == 0
    assert capsys.readouterr().err == (
        "aiodq master: the training objective did not fall: 2.307 at epoch 0, 2.315 at epoch 1; is the step "
        "size right? (--step 0.5; docs/usage.md)\n"
    )


def test_a_shard_the_guard_refused_is_said_with_how_to_keep_it(capsys: pytest.CaptureFixture[str]) -> None:
    """An honest shard of another scale whose snapshot reports the guard refuses as out of line (an
    audit: one sample of 900 scaled by 3e4, a third of the data out of every phase) is named as the
    guard's doing, with the option that keeps it; with that option every sample counts."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((900, 5))
    labels = np.where(features @ rng.standard_normal(5) > 0, 1.0, -1.0)
    features[7] *= 3e4  # in shard 0 of 3: its per-sample gradient norm is over 100 times the others'
    dataset = aiodq.Dataset(features, labels)
    config = aiodq.TrainConfig(algorithm="asyfpg", epochs=2, batch=10, step=0.01)
    for guard in (100.0, 0.0):
        master_config = aiodq.MasterConfig(guard=guard)
        coordinator = aiodq.simulate(config, dataset, workers=3, master_config=master_config)
        result = RunResult.of(coordinator, wall_time=0.0)
        status = finish("master", result, None, train=dataset)
        assert status == 1 or not guard  # (without the guard, the liar-like shard's updates fail the run)
        err = capsys.readouterr().err
        if guard:
            assert [record.samples for record in result.trace] == [600, 600, 600]
            # The refused worker named, and no advice to turn the guard off (an attack: a liar's refused
            # reports had the master advise it).
            (refused,) = {e["worker"] for e in result.summary["errors"] if "out of line" in e["reason"]}
            assert err.startswith(
                "aiodq master: the final loss is over 600 of the 900 samples: a worker's shard was missing "
                "from the last snapshot phase; the guard refused the snapshot reports of worker "
                f"{refused} as out of line with the others': a worker that lies, or honest shards of very "
                "different scales "
                "(docs/algorithms.md 11; --guard 0 would let every report in, a liar's too); exit status 1: "
                "it was missing from every snapshot phase\n"
            ), err
        else:
            assert [record.samples for record in result.trace] == [900, 900, 900]
            assert "samples" not in err


@pytest.mark.asyncio
async def test_aiodq_run_stopped_by_sigterm_names_its_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    run = Process(
        tmp_path, "run", "run", "--data", str(DATA), "--workers", "2", "--epochs", "10000",
        "--checkpoint", str(path), "--checkpoint-interval", "0.2", "--no-progress",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    try:
        # Once an epoch has ended (a checkpoint at epoch 2): stopped before the first ends, by design, a run
        # writes no results (a fresh-clone run failed so once, its SIGTERM at version > 0 in epoch 1).
        await wait_until(lambda: _epoch(path) >= 2 or run.popen.poll() is not None, 60, "an epoch ended")
        run.popen.send_signal(signal.SIGTERM)
        assert await run.exited(60) == 128 + signal.SIGTERM
    finally:
        run.kill()
    kept = resumable(path)
    assert kept is not None and kept[1] > 0
    assert run.stderr.strip().endswith(
        f"aiodq run: stopped by SIGTERM; the checkpoint {path} holds the run as it stood "
        f"(epoch {kept[0]}, version {kept[1]}): resume it to continue "
        "(the same options with --resume; resume=True from Python)"
    )
    # The run as it stood is written too: its model the last snapshot the trace evaluates.
    out = tmp_path / "out"
    written = json.loads((out / "result.json").read_text())
    assert written["failure"] == "stopped by SIGTERM"
    assert written["trace"] and written["trace"][-1]["version"] <= kept[1]
    model, meta = aiodq.load_model(out / "model.npz")
    assert meta["failure"] == "stopped by SIGTERM"
    assert _objective(model) == pytest.approx(written["trace"][-1]["loss"], rel=1e-9)
    assert f"aiodq run: the run as it stood, at epoch {written['trace'][-1]['epoch']} of 10000 " in run.stderr
    # The log ends as stderr does: how the run ended, and where it stands.
    last = (out / "aiodq.log").read_text().splitlines()[-1]
    assert last.split(" aiodq.cli ERROR ", 1)[1] == run.stderr.strip().splitlines()[-1]


@pytest.mark.asyncio
async def test_aiodq_master_names_its_data_in_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "master.ckpt"
    master = Process(
        tmp_path, "master", "master", "--listen", "127.0.0.1:0", "--workers", "1", "--epochs", "1",
        "--data", str(DATA), "--checkpoint", str(path),
    )  # fmt: skip
    try:
        await wait_for_text(lambda: master.stdout, "waiting for", 60)
        assert checkpoint_file.load(path).meta["data"] == load_dataset(DATA).fingerprint()
    finally:
        master.kill()


@contextlib.asynccontextmanager
async def _master_training(tmp_path: Path, interval: str) -> Any:
    """``aiodq master --out`` (checkpointing every ``interval`` s) and one worker; both killed at the end."""
    path, out = tmp_path / "master.ckpt", tmp_path / "out"
    master = Process(
        tmp_path, "master", "master", "--listen", "127.0.0.1:0", "--workers", "1", "--epochs", "10000",
        "--data", str(DATA), "--checkpoint", str(path), "--checkpoint-interval", interval, "--out", str(out),
    )  # fmt: skip
    worker: Process | None = None
    try:
        text = await wait_for_text(lambda: master.stdout, "waiting for", 60)
        address = text.split("listening on ")[1].split(",")[0]
        worker = Process(
            tmp_path, "worker", "worker", "--connect", address, "--shard", "0/1", "--data", str(DATA)
        )
        yield master
    finally:
        for process in (master, worker):
            if process is not None:
                process.kill()


@pytest.mark.asyncio
async def test_aiodq_master_stopped_part_way_writes_the_run_as_it_stood(tmp_path: Path) -> None:
    """``aiodq master --out`` stopped by SIGTERM before training ends writes the run as it stood, as
    ``aiodq run`` does: its failure the stop, its model the last snapshot the trace evaluates."""
    path, out = tmp_path / "master.ckpt", tmp_path / "out"
    async with _master_training(tmp_path, "0.2") as master:
        # An epoch ended (a checkpoint at epoch 2 or later: epoch 1's snapshot phase is done), so the run has
        # a model to write: a stop before any ends writes none, by design (a version above 0 alone, under
        # load, came before it: the test failed once in CI).
        def trained() -> bool:
            kept = resumable(path) if path.exists() else None
            return (kept is not None and kept[0] >= 2) or master.popen.poll() is not None

        await wait_until(trained, 60, "a checkpoint after an epoch's end")
        master.popen.send_signal(signal.SIGTERM)
        assert await master.exited(60) == 128 + signal.SIGTERM
    written = json.loads((out / "result.json").read_text())
    assert written["failure"] == "stopped by SIGTERM" and written["trace"]
    saved = checkpoint_file.load(path).meta  # written at the close: the same run, as it stood
    assert (written["version"], len(written["trace"])) == (saved["state"]["version"], len(saved["trace"]))
    model, meta = aiodq.load_model(out / "model.npz")
    assert meta["failure"] == "stopped by SIGTERM"
    assert _objective(model) == pytest.approx(written["trace"][-1]["loss"], rel=1e-9)
    assert "aiodq master: the run as it stood, at epoch " in master.stderr


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "first, second",
    [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGINT)],
)
async def test_a_second_signal_during_a_stop_does_not_lose_the_closing_checkpoint(
    tmp_path: Path, first: signal.Signals, second: signal.Signals
) -> None:
    """An operator's audit: Ctrl-C then SIGTERM (or the other way round) at once left the checkpoint at the
    start (version 0) with result.json at version 2,100, and the last line said the checkpoint held the run
    as it stood: the second signal cancelled the close before its checkpoint.  It is written first; and a
    second Ctrl-C, which asyncio raises as KeyboardInterrupt wherever the code is (a review: in the write,
    1 time in 3), comes after the write."""
    path, out = tmp_path / "master.ckpt", tmp_path / "out"
    async with _master_training(tmp_path, "600") as master:
        await wait_for_text(lambda: master.stderr, "epoch 2:", 60)  # (the log: an epoch has a model)
        assert _version(path) == 0  # the one checkpoint so far: at the start (the interval is 600 s)
        master.popen.send_signal(first)
        master.popen.send_signal(second)
        assert await master.exited(60) in (128 + signal.SIGINT, 128 + signal.SIGTERM)
    written = json.loads((out / "result.json").read_text())
    assert written["failure"] in ("interrupted", "stopped by SIGTERM") and written["version"] > 0
    saved = checkpoint_file.load(path).meta
    assert (written["version"], len(written["trace"])) == (saved["state"]["version"], len(saved["trace"]))


def test_checkpoint_options_are_checked() -> None:
    for args, says in (
        (("--resume",), "--resume needs --checkpoint"),
        (("--checkpoint", "x.ckpt", "--checkpoint-interval", "0"), "--checkpoint-interval must be positive"),
    ):
        refused = aiodq_command("run", "--data", str(DATA), "--epochs", "1", *args)
        assert refused.returncode == 2 and refused.stderr.strip() == f"aiodq run: {says}", refused.stderr


BUSY = (
    LEAST_SQUARES
    + """
import sys, time

SLOW = sys.argv[sys.argv.index("--shard") + 1].startswith("0/") if "--shard" in sys.argv else False


class Busy(LeastSquares):
    def loss_grad(self, x, rows=None):
        if SLOW and (rows is None or len(rows) > 2):  # worker 0: 2 s a gradient, so it is computing
            time.sleep(2)  # when training ends (not for the start's checks on two rows)
        return super().loss_grad(x, rows)
"""
)


async def stop_when_trained(process: Process, path: Path) -> None:
    """SIGTERM ``process`` as soon as the checkpoint ``path`` says training is done; check its exit."""

    def done() -> bool:
        with contextlib.suppress(CheckpointError):
            return checkpoint_file.load(path, arrays=False).meta.get("phase") == "done"
        return False

    await wait_until(lambda: done() or process.popen.poll() is not None, 90, "the end of training")
    assert process.popen.poll() is None, process.stderr[-2000:]
    process.popen.send_signal(signal.SIGTERM)
    assert await process.exited(60) == 128 + signal.SIGTERM


def assert_written_before_the_stop(command: str, stderr: str, out: Path) -> None:
    """The last two lines: where the results went as training ended, then the stop."""
    lines = stderr.strip().splitlines()
    assert lines[-2] == (
        f"aiodq {command}: training had finished: wrote {out / 'result.json'}, {out / 'model.npz'}, "
        f"{out / 'loss_vs_bits.png'}; log in {out / 'aiodq.log'}"
    )
    assert lines[-1] == f"aiodq {command}: stopped by SIGTERM"
    model, meta = aiodq.load_model(out / "model.npz")
    assert model.shape == (load_dataset(DATA).features_count,) and meta["failure"] is None


@pytest.mark.asyncio
async def test_a_stop_after_training_has_ended_still_leaves_the_results(tmp_path: Path) -> None:
    """SIGTERM right after training ended (its checkpoint marked done) while a worker, busy computing,
    keeps its connection open: the results are written already, and the message says so. Before, the
    launcher waited for every connection to close before it wrote them: result.json and model.npz
    were lost, and --resume refused the done checkpoint."""
    (tmp_path / "busy.py").write_text(BUSY)
    path, out = tmp_path / "run.ckpt", tmp_path / "out"
    run = Process(
        tmp_path, "run", "run", "--data", str(DATA), "--model", "busy:Busy", "--workers", "2",
        "--epochs", "1", "--step", "0.01", "--checkpoint", str(path), "--no-progress", "--out", str(out),
        env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    try:
        await stop_when_trained(run, path)
    finally:
        run.kill()
    assert_written_before_the_stop("run", run.stderr, out)


@pytest.mark.asyncio
async def test_a_checkpoint_is_one_runs_at_a_time_and_a_refused_start_keeps_the_log(tmp_path: Path) -> None:
    """A second run on a checkpoint in use is refused (it overwrote the first run's, untrained one
    at version 0); a start its checkpoint refuses appends to the log instead of emptying it."""
    path, out = tmp_path / "run.ckpt", tmp_path / "out"
    first = Process(
        tmp_path, "first", "run", "--data", str(DATA), "--workers", "1", "--epochs", "10000",
        "--checkpoint", str(path), "--checkpoint-interval", "0.2", "--no-progress", "--out", str(out),
    )  # fmt: skip
    try:
        await wait_until(
            lambda: _version(path) > 0 or first.popen.poll() is not None, 60, "a trained checkpoint"
        )
        second = aiodq_command(
            "run", "--data", str(DATA), "--workers", "1", "--epochs", "3", "--bits", "4",
            "--checkpoint", str(path), "--no-progress", "--out", str(tmp_path / "second"),
        )  # fmt: skip
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"aiodq run: the checkpoint {path} is in use by another run (it holds the lock "
            f"{tmp_path / '.run.ckpt.lock'}): give another file, or wait for that run to end"
        )
        assert not (tmp_path / "second").exists()  # the refused start made no --out
        assert first.popen.poll() is None
        first.popen.send_signal(signal.SIGTERM)
        assert await first.exited(60) == 128 + signal.SIGTERM
    finally:
        first.kill()
    log = (out / "aiodq.log").read_text()
    assert log
    forgot = aiodq_command(
        "run", "--data", str(DATA), "--workers", "1", "--epochs", "10000", "--timeout", "30",
        "--checkpoint", str(path), "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert forgot.returncode == 1 and "holds a run that has not finished" in forgot.stderr
    after = (out / "aiodq.log").read_text()
    assert after.startswith(log)  # the interrupted run's log is still there
    # The refused start's command line, then why it was refused (an operator's audit: the line alone).
    lines = [line for line in after[len(log) :].splitlines() if " aiodq.cli " in line]  # (not aiodq.data's)
    assert len(lines) == 2 and "aiodq.cli INFO aiodq run --data" in lines[0], lines
    assert lines[1].endswith(f"aiodq.cli ERROR {forgot.stderr.strip()}"), lines


@pytest.mark.parametrize("command", ["run", "master"])
def test_a_start_its_checkpoint_refuses_leaves_out_as_it_found_it(tmp_path: Path, command: str) -> None:
    """A refused checkpoint (not one at all, and left as it is; or one to resume that is missing) makes no
    --out folder, no aiodq.log, no lock file and none of their parent folders (a review found a/b/ left
    by --out a/b/c, the lock file by a checkpoint inside --out, and with --records the folder); in a
    folder that exists, an aiodq.log of its own is removed and other files stay."""
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint")
    where = ["--listen", "127.0.0.1:0", "--workers", "1"] if command == "master" else []
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "other.txt").write_text("mine")
    finished = tmp_path / "finished"  # a finished run's folder: its log is set aside, then put back
    finished.mkdir()
    (finished / "result.json").write_text('{"failure": null}')
    model = Checkpoint({"model": np.zeros(3)}, {"kind": checkpoint_file.MODEL_KIND})  # (a model: readable)
    checkpoint_file.save(finished / "model.npz", model, what="model file", private=False)
    (finished / "aiodq.log").write_text("the finished run's log\n")
    cases = [
        (["--checkpoint", str(path), "--out", str(tmp_path / "new")], "is not overwritten"),
        (["--checkpoint", str(path), "--out", str(kept)], "is not overwritten"),
        (["--checkpoint", str(path), "--out", str(finished)], "is not overwritten"),
        (["--checkpoint", str(path), "--out", str(tmp_path / "deep" / "a" / "b")], "is not overwritten"),
        (
            [
                "--checkpoint",
                str(tmp_path / "inner" / "ck" / "run.ckpt"),
                "--resume",
                "--out",
                str(tmp_path / "inner"),
            ],
            "No such file or directory: a run writes its checkpoint as it starts, so none has started "
            "with this path (check it), or the file was removed; to train afresh, start without resuming",
        ),
    ]
    if command == "master":
        records = ["--records", str(tmp_path / "rec" / "records.npz"), "--record-every", "10"]
        cases.append(
            (["--checkpoint", str(path), *records, "--out", str(tmp_path / "rec")], "is not overwritten")
        )
    for options, said in cases:
        refused = aiodq_command(command, "--data", str(DATA), "--epochs", "1", *where, *options)
        assert refused.returncode == 1, refused.stderr
        assert said in refused.stderr
    assert path.read_text() == "not a checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finished", "kept", "notes.txt"]
    assert sorted(p.name for p in kept.iterdir()) == ["other.txt"]
    assert sorted(p.name for p in finished.iterdir()) == ["aiodq.log", "model.npz", "result.json"]
    assert (finished / "aiodq.log").read_text() == "the finished run's log\n"


def test_a_checkpoint_over_the_runs_own_results_is_refused(tmp_path: Path) -> None:
    """Exit 2, and --out is not made (a newcomer trial found it left empty)."""
    out = tmp_path / "out" / "deeper"
    for command, *listen in (("run",), ("master", "--listen", "127.0.0.1:0", "--workers", "1")):
        for name in ("model.npz", "result.json", "aiodq.log", "aiodq.log.new"):
            refused = aiodq_command(
                command,
                *listen,
                "--data",
                str(DATA),
                "--epochs",
                "1",
                "--checkpoint",
                str(out / name),
                "--out",
                str(out),
            )
            assert refused.returncode == 2
            said = f"--checkpoint {out / name}: the run writes its {name} there (--out {out})"
            assert refused.stderr.strip() == f"aiodq {command}: {said}"
            assert list(tmp_path.iterdir()) == []


def test_records_over_the_runs_own_results_or_its_checkpoint_are_refused(tmp_path: Path) -> None:
    """An operator trial: --records out/model.npz was replaced by the model at the end, exit 0, the records
    gone; --records over the checkpoint replaced the finished run's checkpoint.  Both exit 2 before --out
    is made, as a checkpoint there is."""
    out = tmp_path / "out"
    master = (
        "master",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--data",
        str(DATA),
        "--record-every",
        "10",
    )
    refused = aiodq_command(*master, "--out", str(out), "--records", str(out / "model.npz"))
    assert refused.returncode == 2
    said = f"--records {out / 'model.npz'}: the run writes its model.npz there (--out {out})"
    assert refused.stderr.strip() == f"aiodq master: {said}"
    checkpoint = tmp_path / "run.ckpt"
    refused = aiodq_command(*master, "--checkpoint", str(checkpoint), "--records", str(checkpoint))
    assert refused.returncode == 2
    said = f"--records {checkpoint}: the run checkpoints there: give another file"
    assert refused.stderr.strip() == f"aiodq master: {said}"
    assert list(tmp_path.iterdir()) == []
    # Without --checkpoint a folder is no checkpoint's (a review: the folder one ran from was said to be).
    refused = aiodq_command(*master, "--records", str(tmp_path), cwd=tmp_path)  # (the folder it runs in)
    assert refused.stderr.strip() == f"aiodq master: --records {tmp_path}: a folder, not a file", (
        refused.stderr
    )
    # An audit: --records over any other file replaced it, exit 0: a trained model.npz elsewhere, the data.
    (tmp_path / "kept").mkdir()
    model, data = tmp_path / "kept" / "model.npz", tmp_path / "kept" / "data.svm"
    write_results(asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), DATA, workers=1)), model.parent)
    data.write_bytes(DATA.read_bytes())
    before = {path: path.read_bytes() for path in (model, data)}
    for path in (model, data):
        refused = aiodq_command(*master, "--records", str(path))
        assert refused.returncode == 2
        said = f"--records {path}: not a model records file; it is not overwritten: give another file"
        assert refused.stderr.strip() == f"aiodq master: {said}"
    assert {path: path.read_bytes() for path in (model, data)} == before
    # Another master's records file (held, as a master holds its own while it runs): refused (an audit:
    # two masters given one file wrote over each other's records).
    records = tmp_path / "records.npz"
    held = checkpoint_file.lock(records, what="records file")
    try:
        refused = aiodq_command(*master, "--records", str(records))
    finally:
        held.release()
    assert refused.returncode == 2, refused.stderr
    lock = checkpoint_file.lock_path(records)
    said = (
        f"--records: the records file {records} is in use by another run (it holds the lock {lock}): give "
        "another file, or wait for that run to end"
    )
    assert refused.stderr.strip() == f"aiodq master: {said}"


@pytest.mark.asyncio
async def test_aiodq_master_stopped_after_training_has_ended_still_leaves_the_results(tmp_path: Path) -> None:
    """The same for ``aiodq master --out``: its results are written as training ends, while a busy
    worker still holds its connection open, so a SIGTERM then loses nothing."""
    (tmp_path / "busy.py").write_text(BUSY)
    path, out = tmp_path / "run.ckpt", tmp_path / "out"
    env = {"PYTHONPATH": str(tmp_path)}
    records = tmp_path / "records.npz"
    master = Process(
        tmp_path, "master", "master", "--listen", "127.0.0.1:0", "--workers", "2", "--data", str(DATA),
        "--model", "busy:Busy", "--epochs", "1", "--step", "0.01", "--checkpoint", str(path),
        "--out", str(out), "--record-every", "10", "--records", str(records), env=env,
    )  # fmt: skip
    workers: list[Process] = []
    try:
        text = await wait_for_text(lambda: master.stdout, "waiting for", 60)
        address = text.split("listening on ")[1].split(",")[0]
        for index in range(2):
            shard = ("--shard", f"{index}/2", "--data", str(DATA), "--model", "busy:Busy")
            workers.append(
                Process(tmp_path, f"worker{index}", "worker", "--connect", address, *shard, env=env)
            )
        await stop_when_trained(master, path)
    finally:
        for process in [master, *workers]:
            process.kill()
    assert_written_before_the_stop("master", master.stderr, out)
    # The model records too (an audit: they were written only after the workers' sessions had ended).
    written = load_records(records)
    assert (
        written[0].version == 0
        and written[-1].version == json.loads((out / "result.json").read_text())["trace"][-1]["version"]
    )


@pytest.mark.asyncio
async def test_records_that_cannot_be_written_fail_the_run_after_its_results(tmp_path: Path) -> None:
    """An audit: the records' CheckpointError was not caught (an OSError was), and the command took it
    for a refused start: it removed --out and its log, and never said why the run itself ended.  Now
    the results and the summary are written, then the records' error, exit 1."""
    records, out = tmp_path / "gone" / "records.npz", tmp_path / "out"
    master = Process(
        tmp_path, "master", "master", "--listen", "127.0.0.1:0", "--workers", "1", "--data", str(DATA),
        "--epochs", "1", "--out", str(out), "--record-every", "10", "--records", str(records),
    )  # fmt: skip
    worker: Process | None = None
    try:
        text = await wait_for_text(lambda: master.stdout, "waiting for", 60)
        shutil.rmtree(tmp_path / "gone")  # (with the lock file the master holds there)
        (tmp_path / "gone").write_text("a file where the records' folder was")
        address = text.split("listening on ")[1].split(",")[0]
        worker = Process(
            tmp_path, "worker", "worker", "--connect", address, "--shard", "0/1", "--data", str(DATA)
        )
        assert await master.exited(60) == 1, master.stderr[-3000:]
    finally:
        for process in (master, worker):
            if process is not None:
                process.kill()
    said = master.stderr.strip().splitlines()
    assert said[-1].startswith(f"aiodq master: cannot write the records file {records}: "), said
    assert "aiodq master: summary" in master.stdout and (out / "aiodq.log").exists()
    assert json.loads((out / "result.json").read_text())["records_error"] == said[-1].split(": ", 1)[1]


def test_a_start_refused_on_a_full_disk_still_removes_what_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator trial: a master started on a full disk was refused its checkpoint, then the close of
    its log's handler (a flush) raised, seven chained tracebacks followed the one line, and the log and
    the checkpoint's lock file were left.  The handler's close may fail; what the start made still goes."""
    log, checkpoint = tmp_path / "o" / "aiodq.log", tmp_path / "ck.npz"
    missing = found(log, str(checkpoint))
    log.parent.mkdir()
    checkpoint_file.lock(checkpoint).release()
    handler = logging.FileHandler(log)
    logger = logging.getLogger("aiodq")
    logger.addHandler(handler)

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(handler, "flush", full)
    try:
        undo_refused_start(missing)
    finally:
        logger.removeHandler(handler)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.asyncio
async def test_a_run_its_workers_left_says_its_checkpoint_continues_it(tmp_path: Path) -> None:
    """An operator trial: with --checkpoint, "every worker left, and 0 of 1 came back within 2 s
    (--join-timeout)" did not say that the checkpoint could continue the run, as a SIGTERM's message does
    (the checkpoint holds the run unfinished: --resume continues it)."""
    path = tmp_path / "run.ckpt"
    training = ("--data", str(DATA), "--epochs", "500", "--step", "0.01")
    master = Process(
        tmp_path, "master", "master", "--listen", "127.0.0.1:0", "--workers", "1", *training,
        "--join-timeout", "2", "--checkpoint", str(path), "--checkpoint-interval", "0.2",
    )  # fmt: skip
    worker = None
    try:
        text = await wait_for_text(lambda: master.stdout, "waiting for", 60)
        address = text.split("listening on ")[1].split(",")[0]
        worker = Process(
            tmp_path, "worker", "worker", "--connect", address, "--shard", "0/1", "--data", str(DATA)
        )
        await wait_until(lambda: (resumable(path) or (0, 0))[0] >= 2, 60, "two epochs checkpointed")
        worker.kill()  # SIGKILL: the master waits --join-timeout for it, then fails
        assert await master.exited(60) == 1
    finally:
        for process in (master, worker):
            if process is not None:
                process.kill()
    stood = resumable(path)
    assert stood is not None, "the checkpoint says the run finished"
    said = master.stderr.strip().splitlines()[-1]
    assert said == (
        "aiodq master: every worker left, and 0 of 1 came back within 2 s (--join-timeout); the checkpoint "
        f"{path} holds the run as it stood (epoch {stood[0]}, version {stood[1]}): resume it to continue "
        "(the same options with --resume; resume=True from Python)"
    ), master.stderr


def test_checkpoint_paths_that_cannot_serve_say_why(tmp_path: Path) -> None:
    """An operator trial: a checkpoint under a file said "File exists", and --resume of a model.npz did not
    name the file it refused."""
    (tmp_path / "afile").write_text("")
    listen = ("master", "--listen", "127.0.0.1:0", "--workers", "1", "--data", str(DATA), "--epochs", "1")
    under = aiodq_command(*listen, "--checkpoint", str(tmp_path / "afile" / "ck.npz"))
    assert under.returncode == 1
    said = f"cannot write the checkpoint {tmp_path / 'afile' / 'ck.npz'}: a file is where a folder must be"
    assert under.stderr.strip() == f"aiodq master: {said}"
    model = tmp_path / "model.npz"
    checkpoint_file.save(model, Checkpoint({"model": np.zeros(3)}, {"kind": checkpoint_file.MODEL_KIND}))
    resumed = aiodq_command(*listen, "--checkpoint", str(model), "--resume")
    assert resumed.returncode == 1
    said = f"{model}: the file is not the checkpoint of a run (a model or records file?)"
    assert resumed.stderr.strip() == f"aiodq master: {said}"


def test_results_that_cannot_be_written_in_their_folder_are_rescued_to_the_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An audit: a folder that could not take the results at the end of a run (removed and replaced
    by a file, or its files in the way) lost the trained model.  Now what cannot be written there is
    written to a new aiodq-rescued-* folder of the temporary directory, and the error says where."""
    result = asyncio.run(aiodq.run_local(aiodq.TrainConfig(epochs=1), DATA, workers=1))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    blocked = tmp_path / "blocked"
    (blocked / "result.json").mkdir(parents=True)
    (blocked / "model.npz").mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for out, rescued in ((blocked, "model.npz and result.json"), (a_file, "model.npz and result.json")):
        with pytest.raises(RunError) as info:
            write_results(result, out)
        (folder,) = [path for path in temporary.iterdir() if path.name.startswith("aiodq-rescued-")]
        assert str(info.value).endswith(f"; rescued {rescued} in {folder}"), str(info.value)
        model, meta = aiodq.load_model(folder / "model.npz")
        assert np.array_equal(model, result.model)
        assert meta["provenance"] == result.to_json()["provenance"]
        assert json.loads((folder / "result.json").read_text())["trace"] == result.to_json()["trace"]
        assert sorted(path.name for path in folder.iterdir()) == ["model.npz", "result.json"]
        shutil.rmtree(folder)
    assert a_file.read_text() == "not a folder"
    # Only what could not be written is rescued: a result.json in the way leaves the model in its folder.
    (blocked / "model.npz").rmdir()
    with pytest.raises(RunError) as info:
        write_results(result, blocked)
    (folder,) = list(temporary.iterdir())
    assert str(info.value).endswith(f"; rescued result.json in {folder}"), str(info.value)
    assert sorted(path.name for path in folder.iterdir()) == ["result.json"]
    assert np.array_equal(aiodq.load_model(blocked / "model.npz")[0], result.model)


def test_a_finished_runs_checkpoint_and_results_are_kept_whatever_the_next_start_does(tmp_path: Path) -> None:
    """A durability audit lost a finished run's results two ways. Killed between its last checkpoint and its
    results, a start afresh overwrote the only copy (the checkpoint): it is moved aside now, and --resume
    of it gives them. And where the last checkpoint could not be written (a full disk), --resume of the one
    before trained the run again over its finished results: refused now."""
    out, ckpt = tmp_path / "out", tmp_path / "run.ckpt"
    common = [
        "--data",
        str(DATA),
        "--workers",
        "2",
        "--epochs",
        "2",
        "--no-progress",
        "--checkpoint",
        str(ckpt),
    ]
    first = aiodq_command("run", *common, "--out", str(out))
    assert first.returncode == 0, first.stderr
    finished = json.loads((out / "result.json").read_text())
    # The results lost (a kill before they were written): a new start keeps the checkpoint aside.
    for name in ("result.json", "model.npz"):
        (out / name).unlink()
    again = aiodq_command("run", *common, "--out", str(out))
    assert again.returncode == 0, again.stderr
    kept = tmp_path / "run.ckpt.earlier"
    moved = f"aiodq run: moved the checkpoint {ckpt} of a finished run whose results are not in --out {out} "
    said = moved + f"aside to {kept} (--checkpoint {kept} --resume gives them)"  # (its folder too: a review)
    assert said in again.stderr.splitlines(), again.stderr
    back = aiodq_command("run", *common[:-1], str(kept), "--resume", "--out", str(tmp_path / "back"))
    assert back.returncode == 0, back.stderr
    assert json.loads((tmp_path / "back" / "result.json").read_text())["trace"] == finished["trace"]
    # The second run finished with its results; its checkpoint as if its last write failed part way.
    saved = checkpoint_file.load(ckpt)
    assert saved.meta["phase"] == "done"
    checkpoint_file.save(ckpt, Checkpoint(saved.arrays, {**saved.meta, "phase": "inner"}))
    epoch, results = saved.meta["state"]["epoch"], (out / "result.json").read_text()
    stale = aiodq_command("run", *common, "--resume", "--out", str(out))
    assert stale.returncode == 1, stale.stderr
    holds = f"aiodq run: --out {out} holds this run's finished results, and the checkpoint {ckpt} the run at "
    assert stale.stderr.strip().splitlines()[-1] == holds + (
        f"epoch {epoch} (its last write failed): --resume would train it again over them; remove the "
        "checkpoint (or move the results) first"
    )
    assert (out / "result.json").read_text() == results  # not trained again, nor replaced


def test_only_a_cleanly_finished_runs_checkpoint_is_moved_aside_where_a_link_names_it_unless_in_use(
    tmp_path: Path,
) -> None:
    """A review of the moving aside: a diverged run's checkpoint ("done", with a failure) was moved too, as
    a finished run's; a linked checkpoint's link was moved, and the next run wrote a file beside it; one
    another run held was moved before the start was refused."""
    from aiodq.cli.outfolder import checkpoint_beside_results  # noqa: PLC0415

    out, ckpt = tmp_path / "out", tmp_path / "store" / "run.ckpt"
    out.mkdir()
    ckpt.parent.mkdir()
    meta = {"phase": "done", "run": "r1", "state": {"epoch": 2, "version": 9}}
    checkpoint_file.save(ckpt, Checkpoint({"x": np.zeros(2)}, {**meta, "failure": "diverged"}))
    assert checkpoint_beside_results(str(ckpt), out, resume=False) == "" and ckpt.exists()
    checkpoint_file.save(ckpt, Checkpoint({"x": np.zeros(2)}, {**meta, "failure": None}))
    held = checkpoint_file.lock(ckpt)
    try:
        assert checkpoint_beside_results(str(ckpt), out, resume=False) == "" and ckpt.exists()  # in use
    finally:
        held.release()
    link = tmp_path / "link.ckpt"
    link.symlink_to(ckpt)
    said = checkpoint_beside_results(str(link), out, resume=False)
    aside = tmp_path / "store" / "run.ckpt.earlier"
    assert said.endswith(f"aside to {aside} (--checkpoint {aside} --resume gives them)"), said
    assert link.is_symlink() and not ckpt.exists() and checkpoint_file.load(aside).meta["run"] == "r1"
