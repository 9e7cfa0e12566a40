"""Your own model and the model out (#11): a user objective by import path, model.npz, MNIST folders."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import aiodq
from aiodq.data import load_bundled_a9a

from .cluster import LEAST_SQUARES, ROOT, master_and_one_worker, poll_until, wait_until
from .cluster import aiodq as run_aiodq

FIXTURES = ROOT / "tests" / "fixtures"


def least_squares_optimum(features: sp.csr_matrix, labels: np.ndarray, l2: float) -> float:
    """``min (1/n) sum (a_i . x - b_i)^2 / 2 + l2/2 ||x||^2``: (A'A/n + l2 I) x = A'b/n."""
    dense = features.toarray()
    n, d = dense.shape
    x = np.linalg.solve(dense.T @ dense / n + l2 * np.eye(d), dense.T @ labels / n)
    residual = dense @ x - labels
    return 0.5 * float(residual @ residual) / n + 0.5 * l2 * float(x @ x)


def test_user_objective_by_import_path_reaches_the_closed_form_optimum(tmp_path: Path) -> None:
    """aiodq run --model MODULE:NAME trains a least-squares objective of a few lines to within 1 % of F*."""
    (tmp_path / "my_models.py").write_text(LEAST_SQUARES)
    out = tmp_path / "out"
    result = run_aiodq(
        "run",
        "--model",
        "my_models:LeastSquares",
        "--workers",
        "2",
        "--epochs",
        "5",
        "--step",
        "0.05",
        "--out",
        str(out),
        "--no-progress",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "result.json").read_text())
    dataset = load_bundled_a9a()
    best = least_squares_optimum(dataset.features, dataset.labels, summary["config"]["l2"])
    # Measured: 0.49 % above F* after 2 epochs, 0.15 % after 5 (and 0.06 % after 15).
    assert abs(summary["trace"][-1]["loss"] - best) <= 0.01 * best, (summary["trace"][-1]["loss"], best)
    assert summary["measures_accuracy"] is False
    assert "- (the model measures none)" in result.stdout
    # Nor does the master's log give it one (a newcomer read 'accuracy 0.0000' there).
    epochs = [line for line in (out / "aiodq.log").read_text().splitlines() if " epoch " in line]
    assert len(epochs) == 6 and not any("accuracy" in line for line in epochs), epochs
    model, meta = aiodq.load_model(out / "model.npz")
    assert model.shape == (dataset.features_count,)
    assert meta["dim"] == dataset.features_count
    assert meta["config"]["model"] == "my_models:LeastSquares"


def test_simulate_trains_your_own_model_to_the_closed_form_optimum() -> None:
    """An embedding trial: simulate could train only the built-in models (its error said "give your own
    objective", which it had no way to take).  With ``objective=`` it trains a factory's model, the
    master's objective on the whole data and each worker's on its shard, as the launchers do; a
    factory whose objective returns means is refused as the master's start refuses it."""
    namespace: dict[str, object] = {}
    exec(LEAST_SQUARES, namespace)  # the model of the test above, as a user's module defines it
    factory = namespace["LeastSquares"]
    dataset = load_bundled_a9a()
    config = aiodq.TrainConfig(model="squares", epochs=5, step=0.05, l2=1e-4)
    coordinator = aiodq.simulate(config, dataset, 2, objective=factory)  # type: ignore[arg-type]
    best = least_squares_optimum(dataset.features, dataset.labels, config.l2)
    assert coordinator.failure is None and len(coordinator.trace) == 6
    assert abs(coordinator.trace[-1].loss - best) <= 0.01 * best, (coordinator.trace[-1].loss, best)

    class Means(factory):  # type: ignore[misc, valid-type]
        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            loss, grad = super().loss_grad(x, rows)
            count = self.samples if rows is None else len(rows)
            return loss / count, grad / count

    with pytest.raises(ValueError, match="returns the mean over the rows, not the sum"):
        aiodq.simulate(config, dataset, 2, objective=Means)
    with pytest.raises(
        ValueError, match=r"^with objective=, config.model names your model .*not 'logistic'$"
    ):
        aiodq.simulate(aiodq.TrainConfig(), dataset, 2, objective=factory)  # type: ignore[arg-type]


BIG_MODEL = """
import numpy as np

DIM = (1 << 24) + 8  # one more than the default max_dimension, and 8


class Big:
    \"\"\"f_i(x) = ||x - a_i||^2 / 2, a_i = i + 1 broadcast to every coordinate.\"\"\"

    def __init__(self, features, labels):
        self.samples, self.dim = features.shape[0], DIM
        self.a = np.arange(1.0, self.samples + 1)

    def initial(self, rng):
        return np.zeros(self.dim)

    def loss_grad(self, x, rows=None):
        a = self.a if rows is None else self.a[rows]
        n, total = a.shape[0], float(a.sum())
        loss = 0.5 * n * float(x @ x) - total * float(x.sum()) + 0.5 * self.dim * float(a @ a)
        return loss, n * x - total
"""


def test_a_model_above_the_default_dimension_limit_trains_on_the_local_cluster(tmp_path: Path) -> None:
    """The launcher's own master and workers take their limits from the model: 2**24 + 8 parameters
    train (a newcomer trial: ValueError 'above max_dimension 16,777,216' with a traceback, exit 1)."""
    (tmp_path / "big_models.py").write_text(BIG_MODEL)
    out = tmp_path / "out"
    result = run_aiodq(
        "run", "--model", "big_models:Big", "--data", str(FIXTURES / "a9a-head-300"), "--workers", "2",
        "--epochs", "1", "--updates-per-epoch", "2", "--l2", "0", "--step", "0.5", "--no-progress",
        "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model, meta = aiodq.load_model(out / "model.npz")
    assert model.shape == ((1 << 24) + 8,) and meta["dim"] == (1 << 24) + 8
    summary = json.loads((out / "result.json").read_text())
    assert summary["staleness"]["applied"] == 2
    assert summary["trace"][-1]["loss"] < summary["trace"][0]["loss"]


def test_run_local_workers_find_a_model_beside_the_script_run_from_elsewhere(tmp_path: Path) -> None:
    """The master imports MODULE from the script's folder (Python puts it on the path); the worker
    processes start in the current folder and did not find it (a newcomer trial: RunError)."""
    scripts, elsewhere = tmp_path / "scripts", tmp_path / "elsewhere"
    scripts.mkdir()
    elsewhere.mkdir()
    (scripts / "beside_models.py").write_text(LEAST_SQUARES)
    (scripts / "train.py").write_text(
        "import asyncio, aiodq\n"
        "config = aiodq.TrainConfig(model='beside_models:LeastSquares', epochs=1, step=0.05)\n"
        f"data = {str(FIXTURES / 'a9a-head-300')!r}\n"
        "result = asyncio.run(aiodq.run_local(config, data=data, workers=2))\n"
        "print('trained', result.ok, result.final_loss < result.trace[0].loss)\n"
    )
    done = subprocess.run(
        [sys.executable, str(scripts / "train.py")],
        cwd=elsewhere,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "trained True True"


def test_a_model_in_the_running_script_is_refused_with_the_module_name_to_give(tmp_path: Path) -> None:
    """A torch trial: run_local with config.model '__main__:objective' passed the up-front import (the
    master runs in the script) and every worker process failed, each told to restart them: __main__
    is each process's own program.  It is refused before anything starts, naming the module to give."""
    (tmp_path / "train.py").write_text(
        LEAST_SQUARES + "\nimport asyncio, aiodq\n"
        "config = aiodq.TrainConfig(model='__main__:LeastSquares', epochs=1, step=0.05)\n"
        f"data = {str(FIXTURES / 'a9a-head-300')!r}\n"
        "try:\n"
        "    asyncio.run(aiodq.run_local(config, data=data, workers=2))\n"
        "except aiodq.UsageError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "--model __main__:LeastSquares: worker processes import the model by its module's name, and __main__ "
        "is each process's own program: name the module that defines it (here: train:LeastSquares)"
    )


def test_a_model_s_module_that_trains_when_imported_is_refused_not_left_waiting(tmp_path: Path) -> None:
    """A newcomer trial: the script that defines the model trains at module level, without
    ``if __name__ == '__main__'``, and names itself as the model (as the __main__ refusal says).  Importing
    it for the objective started a second run, which imported it again from another thread, behind the
    first import's lock: nothing was said until the trial's timeout killed it.  It is one refusal now."""
    (tmp_path / "train.py").write_text(
        LEAST_SQUARES + "\nimport asyncio, aiodq\n"
        "config = aiodq.TrainConfig(model='train:LeastSquares', epochs=1, step=0.05)\n"
        f"data = {str(FIXTURES / 'a9a-head-300')!r}\n"
        "asyncio.run(aiodq.run_local(config, data=data, workers=2))\n"
    )
    done = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.splitlines()[-1] == (
        "aiodq.errors.UsageError: the model's module train starts a run when it is imported, and every "
        "process of a run imports it: put the code that trains under if __name__ == '__main__'"
    ), done.stderr


#: A user objective that writes 300 kB to stderr in its first three calls (a pipe holds 64 KiB).
CHATTY = (
    LEAST_SQUARES
    + """
import sys

class Chatty(LeastSquares):
    calls = 0

    def loss_grad(self, x, rows=None):
        Chatty.calls += 1
        if Chatty.calls <= 3:
            for line in range(100):
                sys.stderr.write(f"chatty call {Chatty.calls} line {line} " + "x" * 1000 + "\\n")
            print(f"chatty print {Chatty.calls}")  # stdout: logged too
        return super().loss_grad(x, rows)
"""
)


def test_a_step_too_large_ends_the_run_as_diverged(tmp_path: Path) -> None:
    """Least squares at step 0.5 with three workers (newcomer trial): the loss passes 10^6 times the
    first epoch's; the run ends as diverged, with its results, instead of training on for ever (the
    reports, alike, were no outliers of each other, and their float32 norms then overflowed)."""
    (tmp_path / "my_models.py").write_text(LEAST_SQUARES)
    out = tmp_path / "out"
    result = run_aiodq(
        "run", "--model", "my_models:LeastSquares", "--data", str(ROOT / "tests" / "fixtures" / "a9a-head-300"),  # noqa: E501
        "--workers", "3", "--epochs", "30", "--step", "0.5", "--l2", "0", "--out", str(out), "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    summary = json.loads((out / "result.json").read_text())
    last, first = summary["trace"][-1], summary["trace"][0]
    assert last["loss"] > 1e6 * max(first["loss"], 1.0) and last["epoch"] < 30
    assert summary["failure"] == (
        f"the training objective at epoch {last['epoch']} is {last['loss']:.4g}, over 1e+06 times the first "
        f"epoch's {first['loss']:.4g}: the run diverged (is the step size too large?)"
    )
    hint = "; the step was 0.5: a smaller --step may train"  # (the line names the step: a newcomer trial)
    assert result.stderr.strip().endswith(f"aiodq run: {summary['failure']}{hint}")


def test_a_worker_whose_model_differs_from_the_masters_is_not_restarted(tmp_path: Path) -> None:
    """An objective's fingerprint() differs in each process (a torch trial: frozen layers drawn without a
    seed): each worker refuses CONFIG and exits 2 (it cannot train this run); the launcher starts none
    in its place, however many restarts it may, and offers none."""
    (tmp_path / "my_models.py").write_text(
        LEAST_SQUARES + "\nimport os\n\nclass Drawn(LeastSquares):\n    def fingerprint(self):\n"
        "        return f'process {os.getpid()}'\n"
    )
    out = tmp_path / "out"
    result = run_aiodq(
        "run", "--model", "my_models:Drawn", "--data", str(ROOT / "tests" / "fixtures" / "a9a-head-300"),
        "--workers", "2", "--step", "0.05", "--max-restarts", "3", "--out", str(out), "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    said = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"aiodq run: worker process [01]/2 exited with status 2: aiodq worker: the session ended: "
        r"INVALID_CONFIG: this worker's model holds other values than the master's where x does not reach "
        r"\(layers, loss, frozen parameters or buffers: fingerprint process \d+, the master's "
        r"process \d+\): build it alike in every process \(seed torch, or load the same weights; buffers "
        r"computed from a process's own samples, or with another number of threads, differ too: compute "
        r"them once, save them and load them in every process\)",
        said,
    ), said
    assert "restarting it" not in (out / "aiodq.log").read_text()


def test_a_worker_whose_objective_failed_once_is_restarted(tmp_path: Path) -> None:
    """A review: with the exit status 2 of a worker that cannot train the run, a worker whose objective
    failed once (a MemoryError, say) exited 2 too and was not restarted, whatever --max-restarts said.
    Such a worker exits 1 and is started again; the run trains."""
    claim = tmp_path / "failed-once"
    (tmp_path / "my_models.py").write_text(
        LEAST_SQUARES
        + f"""
import os

class Flaky(LeastSquares):
    batches, failing = 0, False

    def loss_grad(self, x, rows=None):
        if rows is not None and len(rows) > 2:  # a mini-batch: only workers take those
            Flaky.batches += 1
            if Flaky.batches == 5:  # the first worker here fails (a step prepared ahead is taken again)
                try:
                    os.close(os.open({str(claim)!r}, os.O_CREAT | os.O_EXCL))
                    Flaky.failing = True
                except FileExistsError:
                    pass
            if Flaky.failing and Flaky.batches <= 8:
                raise MemoryError("a transient allocation failure")
        return super().loss_grad(x, rows)
"""
    )
    out = tmp_path / "out"
    result = run_aiodq(
        "run", "--model", "my_models:Flaky", "--data", str(ROOT / "tests" / "fixtures" / "a9a-head-300"),
        "--workers", "2", "--epochs", "300", "--step", "0.01", "--max-restarts", "1", "--out", str(out),
        "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert claim.exists()  # one worker's objective did fail, once
    log = (out / "aiodq.log").read_text()
    assert re.search(r"worker process [01]/2 exited with status 1; restarting it \(1 of 1\)", log), log[
        -3000:
    ]


def test_a_worker_writing_much_to_stderr_trains_and_its_lines_reach_the_log(tmp_path: Path) -> None:
    """A worker's stderr is read as it comes: 300 kB of it stall nothing, and every line is logged, its
    print()s too (a review found a worker's standard output thrown away)."""
    (tmp_path / "my_models.py").write_text(CHATTY)
    out = tmp_path / "out"
    result = run_aiodq(
        "run", "--model", "my_models:Chatty", "--workers", "2", "--epochs", "2", "--step", "0.05",
        "--timeout", "60", "--out", str(out), "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    log = (out / "aiodq.log").read_text()
    for worker in (0, 1):
        for call in (1, 2, 3):
            assert log.count(f"aiodq.launch INFO worker process {worker}/2: chatty call {call} line ") == 100
            assert log.count(f"aiodq.launch INFO worker process {worker}/2: chatty print {call}\n") == 1


def test_run_writes_the_trained_model_and_provenance(tmp_path: Path) -> None:
    """model.npz holds the model (the last snapshot: its loss is the trace's last) and the iterate."""
    out = tmp_path / "out"
    result = run_aiodq("run", "--workers", "2", "--epochs", "2", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "result.json").read_text())
    with np.load(out / "model.npz") as archive:
        model, iterate = archive["model"], archive["iterate"]
    assert model.shape == iterate.shape == (123,)
    data = load_bundled_a9a()
    objective = aiodq.LogisticRegression(data.features, data.labels)
    loss, _ = objective.loss_grad(model)
    regulariser = 0.5 * summary["config"]["l2"] * float(model @ model)
    assert abs(loss / data.samples + regulariser - summary["trace"][-1]["loss"]) < 1e-9
    provenance = summary["provenance"]
    assert provenance["aiodq"] == aiodq.__version__
    assert {"command", "started", "host", "python", "numpy"} <= set(provenance)
    assert provenance["command"][-1] == "--no-progress"
    test = summary["test"]
    assert test["test_set"] == "a9a.t"
    assert test["test_samples"] == 16_281
    assert 0.8 < test["test_accuracy"] < 0.9


def test_mlp_default_step_trains_on_an_mnist_folder(tmp_path: Path) -> None:
    """An MNIST-format folder trains on train-*, tests on t10k-*; the MLP's default step learns."""
    out = tmp_path / "out"
    result = run_aiodq(
        "run",
        "--model",
        "mlp",
        "--data",
        str(FIXTURES / "mnist-small"),
        "--workers",
        "2",
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "result.json").read_text())
    assert summary["dataset"] == "mnist-small"
    assert summary["trace"][-1]["samples"] == 800
    assert summary["trace"][-1]["accuracy"] >= 0.85
    assert summary["test"]["test_set"] == "mnist-small-test"
    assert summary["test"]["test_samples"] == 200


def test_test_files_alone_are_refused(tmp_path: Path) -> None:
    """A folder holding only t10k-* is never trained on: one line says so."""
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((FIXTURES / "mnist-small" / name).read_bytes())
    result = run_aiodq(
        "run", "--model", "mlp", "--data", str(tmp_path), "--no-progress", "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2
    assert "no training data" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


class _Squares:
    """Least squares as above, importable from this module (in-process workers need no import path)."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a, self.b = a, b
        self.samples, self.dim = a.shape

    def initial(self, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(self.dim)

    def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        a, b = (self.a, self.b) if rows is None else (self.a[rows], self.b[rows])
        residual = a @ x - b
        return 0.5 * float(residual @ residual), a.T @ residual


class _Printed(_Squares):
    """_Squares with a fingerprint of its shape, as a torch module's holds its parameters' shapes."""

    def fingerprint(self) -> str:
        return f"squares of {self.dim}"


@pytest.mark.asyncio
async def test_a_worker_of_another_dimension_is_told_so_before_its_fingerprint() -> None:
    """A torch user's audit: hidden 17 on a worker, 16 on the master, was refused as "holds other values
    than the master's where x does not reach" (the fingerprint holds the shapes, and was checked first),
    where usage.md promises the two sizes."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((200, 5)), rng.standard_normal(200)
    config = aiodq.TrainConfig(model="mine:Printed", epochs=1, step=0.02)
    async with aiodq.Master(config, _Printed(a, b), workers=1) as master:
        host, port = master.address
        narrow = await aiodq.run_worker(host, port, objective=_Printed(a[:, :4], b), model="mine:Printed")
        good = await aiodq.run_worker(host, port, objective=_Printed(a, b), model="mine:Printed")
        await master.wait(timeout=60)
    assert narrow.code == aiodq.ErrorCode.INVALID_CONFIG
    assert narrow.reason == "this worker's model _Printed has 4 parameters, the master's mine:Printed has 5"
    assert good.ok, good


@pytest.mark.asyncio
async def test_workers_without_the_model_or_with_another_dimension_are_refused() -> None:
    """INVALID_CONFIG and one clear line: no --model for a user model, the wrong d, or another model of
    the same d; then one trains."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((200, 5)), rng.standard_normal(200)
    config = aiodq.TrainConfig(model="mine:Squares", epochs=1, step=0.02)
    async with aiodq.Master(config, _Squares(a, b), workers=1) as master:
        host, port = master.address
        bare = await aiodq.run_worker(host, port, a, b)
        assert bare.code == aiodq.ErrorCode.INVALID_CONFIG
        assert bare.reason == (
            "the master trains the model 'mine:Squares': start this worker with it "
            "(aiodq worker --model mine:Squares; in Python, run_worker(objective=..., model='mine:Squares'))"
        )
        narrow = await aiodq.run_worker(host, port, objective=_Squares(a[:, :4], b))
        assert narrow.code == aiodq.ErrorCode.INVALID_CONFIG
        assert narrow.reason == (
            "this worker's model _Squares has 4 parameters, the master's mine:Squares has 5"
        )
        # Another model of the same dimension, named by where it was loaded from (a newcomer trial:
        # it trained, and the run's loss was that other model's).
        other = await aiodq.run_worker(host, port, objective=_Squares(a, b), model="theirs:Squares")
        assert other.code == aiodq.ErrorCode.INVALID_CONFIG
        assert other.reason == "the master trains 'mine:Squares', this worker's objective is 'theirs:Squares'"
        good = await aiodq.run_worker(host, port, objective=_Squares(a, b), model="mine:Squares")
        result = await master.wait(timeout=60)
    assert good.ok, good
    assert result.ok
    assert result.final_loss < result.trace[0].loss


@pytest.mark.asyncio
async def test_a_master_objective_without_a_name_is_not_trained_as_the_built_in_model_config_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A review: a master given least squares without a name, under TrainConfig's default model
    (logistic), had a worker that builds its model from CONFIG (aiodq worker, run_worker with samples)
    train logistic regression against it, and both ended ok.  Such a worker is refused; a worker given
    the same objective trains; the master warns that the run is recorded as the built-in model."""
    data = aiodq.load_bundled_a9a().rows(np.arange(300))
    a, b = data.features.toarray(), np.asarray(data.labels, dtype=np.float64)  # (labels -1/+1: logistic's)
    config = aiodq.TrainConfig(epochs=1, step=0.02)
    assert config.model == "logistic"
    with caplog.at_level(logging.WARNING, logger="aiodq.master"):
        master = aiodq.Master(config, _Squares(a, b), workers=1)
    assert (
        "_Squares is not the built-in model 'logistic' that TrainConfig.model names, as which the run is "
        "recorded; a worker that would build that refuses it" in caplog.text
    )
    async with master:
        host, port = master.address
        built_in = await aiodq.run_worker(host, port, a, b)
        assert built_in.code == aiodq.ErrorCode.INVALID_CONFIG
        assert built_in.reason == (
            "the master trains its own objective (_Squares), not the built-in logistic that CONFIG names: "
            "give this worker the same (run_worker(objective=...))"
        )
        own = await aiodq.run_worker(host, port, objective=_Squares(a, b))
        result = await master.wait(timeout=60)
    assert own.ok, own
    assert result.ok and result.final_loss < result.trace[0].loss


def test_a_subclass_of_a_built_in_model_with_its_own_loss_is_not_taken_for_the_built_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A review: a LogisticRegression subclass that overrides loss_grad inherits the name "logistic", and
    workers that build logistic regression trained against it.  Any subclass is the master's own
    objective (it may compute otherwise through any method); the built-in class is not."""
    from aiodq.net.arguments import own_objective  # noqa: PLC0415

    data = aiodq.load_bundled_a9a().rows(np.arange(100))
    features, labels = data.features, np.asarray(data.labels, dtype=np.float64)

    class Hinge(aiodq.LogisticRegression):
        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            return super().loss_grad(x, rows)  # (another loss, as far as the check can tell)

    class Scaled(aiodq.LogisticRegression):  # (a review: its loss_grad and grad_difference are the parent's)
        def _scores(self, x: np.ndarray, block: Any) -> Any:
            return 10 * super()._scores(x, block)

    config = aiodq.TrainConfig()
    with caplog.at_level(logging.WARNING, logger="aiodq.master"):
        assert own_objective(config, Hinge(features, labels)) == "Hinge"
        assert own_objective(config, Scaled(features, labels)) == "Scaled"
        assert own_objective(config, aiodq.LogisticRegression(features, labels)) is None
        assert own_objective(config, np.zeros(123)) is None  # x_0 itself: the workers' model trains
        softmax = aiodq.TrainConfig(model="softmax")
        assert own_objective(softmax, aiodq.LogisticRegression(features, labels)) == "LogisticRegression"
        # The class is not enough (a review): the workers build the config's layers and intercept, and
        # a method replaced on the instance is the master's own computation.
        mlp = aiodq.TrainConfig(model="mlp", hidden=2)
        assert (
            own_objective(mlp, aiodq.MLP(features, labels, (123, 1, 32, 2))) == "MLP"
        )  # 254, as (123, 2, 2)
        assert own_objective(mlp, aiodq.MLP(features, labels, (123, 2, 2))) is None
        assert (
            own_objective(config, aiodq.LogisticRegression(features, labels, bias=True))
            == "LogisticRegression"
        )
        patched = aiodq.LogisticRegression(features, labels)
        patched.loss_grad = Hinge(features, labels).loss_grad  # type: ignore[method-assign]
        assert own_objective(config, patched) == "LogisticRegression"
    assert [record.getMessage().split(" is not ")[0] for record in caplog.records] == [
        "Hinge", "Scaled", "LogisticRegression", "MLP", "LogisticRegression", "LogisticRegression"
    ]  # fmt: skip


class _FailsOnTheWorker(_Squares):
    def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        if rows is not None and len(rows) > 2:  # (the master's start checks rows [0], [1] and [0, 1])
            raise RuntimeError("boom")  # the line the worker's reason names
        return super().loss_grad(x, rows)


@pytest.mark.asyncio
async def test_a_worker_whose_objective_fails_says_where() -> None:
    """The worker's INTERNAL_ERROR names the line of the objective that raised (a newcomer's said only
    'cannot answer MODEL: RuntimeError: boom in loss_grad', with no file and line anywhere)."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((200, 5)), rng.standard_normal(200)
    config = aiodq.TrainConfig(model="mine:Squares", epochs=1, step=0.02, batch=8)
    line = next(
        number
        for number, text in enumerate(Path(__file__).read_text().splitlines(), 1)
        if "the line the worker" in text
    )
    async with aiodq.Master(config, _Squares(a, b), workers=1) as master:
        host, port = master.address
        failed = await aiodq.run_worker(host, port, objective=_FailsOnTheWorker(a, b), model="mine:Squares")
        master.stop_training()
    assert failed.code == aiodq.ErrorCode.INTERNAL_ERROR
    assert failed.reason.endswith(f": RuntimeError: boom (at {__file__}:{line})"), failed.reason


#: A user model whose ``name`` and ``initial()`` the cases below set (a newcomer trial: they were tracebacks).
_OBJECTIVE = """
import numpy as np

class Model:
    {name}

    def __init__(self, features, labels):
        self.samples, self.dim = features.shape

    def initial(self, rng):
        return {initial}

    def loss_grad(self, x, rows=None):
        return 0.0, np.zeros(self.dim)
"""


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def broken(:\n", "cannot import bad_model: SyntaxError: "),
        ("raise RuntimeError('needs a GPU')\n", "cannot import bad_model: RuntimeError: needs a GPU (at "),
        ("def Model(features, labels):\n    return {}['weights']\n", "KeyError: 'weights' (at "),
        ("class Model:\n    def __init__(self, f, l):\n        raise OSError('gone')\n", "OSError: gone"),
        (
            _OBJECTIVE.format(name="name = 'other'", initial="np.zeros(self.dim)"),
            "the objective names itself 'other' (its name attribute) but the run trains 'bad_model:Model' "
            "(TrainConfig.model, --model): the two must agree",
        ),
        (
            _OBJECTIVE.format(name="", initial="np.zeros(self.dim + 1)"),
            "Model.initial() must give 123 finite values, got shape (124,)",
        ),
        (_OBJECTIVE.format(name="", initial="{}['seed']"), "KeyError: 'seed' (at "),
        (
            _OBJECTIVE.format(name="", initial="np.full(self.dim, np.nan)"),
            "Model.initial() must give 123 finite values, got 123 of them NaN or infinite",
        ),
        # (a review: exit 3 and not a word from aiodq; SystemExit is no Exception)
        (
            _OBJECTIVE.format(
                name="def __setattr__(self, key, value):\n"
                "        object.__setattr__(self, key, 5 if key == 'samples' else value)",
                initial="np.zeros(self.dim)",
            ),
            "its samples is 5, but it was given 32561 rows",  # (a review: the master's refusals took 68 s)
        ),
        ("import sys\nsys.exit(3)\n", "importing bad_model called sys.exit(3) (at "),
        (
            "import sys\ndef Model(features, labels):\n    sys.exit('no GPU')\n",
            "it called sys.exit('no GPU') (at ",
        ),
    ],
    ids=[
        "syntax-error",
        "raises-at-import",
        "factory-keyerror",
        "factory-oserror",
        "another-name",
        "initial-too-long",
        "initial-raises",
        "initial-nan",
        "wrong-samples",
        "exits-at-import",
        "factory-exits",
    ],
)
def test_a_user_model_whose_code_fails_is_one_line(tmp_path: Path, source: str, expected: str) -> None:
    """usage.md: an import that fails or a factory that raises: one line saying where, exit status 2."""
    (tmp_path / "bad_model.py").write_text(source)
    result = run_aiodq("run", "--model", "bad_model:Model", "--no-progress", "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aiodq run: --model bad_model:Model: "), lines
    assert expected in lines[0]


def test_a_model_module_that_cannot_be_found_says_how_to_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer trial: --model mynets.py:small, and a module outside the current folder, said only
    what Python says.  A module found whose own import fails says no more than Python."""
    from aiodq.errors import UsageError  # noqa: PLC0415
    from aiodq.launch.models import load_factory  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "mynets.py").write_text("def small(features, labels):\n    return None\n")
    (tmp_path / "needsdep.py").write_text("import aiodq_no_such_dependency\n")
    for spec, said in (
        ("mynets.py:small", "; name the module without .py: --model mynets:small"),
        (
            "aiodq_no_such_module:x",
            f"; modules are imported from {tmp_path} (the current folder) and PYTHONPATH",
        ),
        ("needsdep:x", "No module named 'aiodq_no_such_dependency'"),
    ):
        with pytest.raises(UsageError) as info:
            load_factory(spec)
        assert str(info.value).endswith(said), str(info.value)


SLOW_IMPORT = """
import pathlib, threading
pathlib.Path("importing").write_text("")
threading.Event().wait(60)  # a model module slow to import (torch's import takes seconds)
"""


def test_a_sigterm_while_a_models_module_is_imported_stops_the_command_as_such(tmp_path: Path) -> None:
    """A review: SIGTERM's handler for the whole command raised an Exception, which the import of the
    user's model caught as its own failure ('cannot import slowmod: StoppedError: SIGTERM', exit 2: a
    worker stopped while it imported torch said it could not train).  It is a stop: exit 143."""
    (tmp_path / "slowmod.py").write_text(SLOW_IMPORT)
    command = [sys.executable, "-m", "aiodq", "run", "--model", "slowmod:Model", "--no-progress"]
    run = subprocess.Popen(
        [*command, "--out", str(tmp_path / "out")], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    try:
        poll_until(lambda: (tmp_path / "importing").exists() or run.poll() is not None, 60, "the import")
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "aiodq run: stopped by SIGTERM", stderr


@pytest.mark.parametrize("command", ["run", "master"])
def test_a_model_whose_factory_edits_its_data_in_place_trains(tmp_path: Path, command: str) -> None:
    """A review of 68b81f8: with the local master naming its data's fingerprint, a factory that changes the
    labels it is given in place (-1 to 0, say) made the master's fingerprint differ from the workers' (taken
    before theirs), and every run was refused as "other data".  The fingerprint is taken before the
    factory, on the master as on the workers."""
    (tmp_path / "my_models.py").write_text(
        LEAST_SQUARES.replace(
            "    def __init__(self, features, labels):\n",
            "    def __init__(self, features, labels):\n        labels[labels < 0] = 0  # in place\n",
        )
    )
    out = tmp_path / "out"
    common = ("--model", "my_models:LeastSquares", "--epochs", "1", "--step", "0.05", "--out", str(out))
    if command == "run":
        result = run_aiodq("run", "--workers", "2", *common, "--no-progress", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    else:
        status, worker = master_and_one_worker(
            list(common), ["--model", "my_models:LeastSquares"], tmp_path / "master.err", cwd=tmp_path
        )
        assert (status, worker.returncode) == (0, 0), worker.stderr
    written = json.loads((out / "result.json").read_text())
    assert written["failure"] is None
    # result.json and model.npz name the data as it was read, not as the factory left it (a warm start
    # from model.npz on that file was said to be on other data).
    untouched = load_bundled_a9a().fingerprint()
    assert written["data"] == untouched
    assert aiodq.load_model(out / "model.npz")[1]["data"] == untouched
    if command == "run":  # a warm start from it on the same data is not said to be on other data (a review)
        again = tmp_path / "again"
        result = run_aiodq(
            "run", "--workers", "1", *common[:-1], str(again), "--start-from", str(out / "model.npz"),
            "--no-progress", cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "other data" not in (again / "aiodq.log").read_text()


@pytest.mark.asyncio
async def test_a_worker_refusing_the_run_after_training_began_leaves_its_shard_out_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A newcomer's audit: a worker whose model has another size, joining last, refused the run's CONFIG;
    the master trained on the other worker's half alone, said nothing in library use, and aiodq master
    exited 0. The master knows n (the objective's samples): every epoch line says the loss is over half
    of them, as a warning; the result's missing_samples says so too (and the command exits 1: finish)."""
    namespace: dict[str, Any] = {}
    exec(LEAST_SQUARES, namespace)
    squares = namespace["LeastSquares"]
    rng = np.random.default_rng(0)
    features = rng.standard_normal((200, 6))
    labels = features @ rng.standard_normal(6)
    config = aiodq.TrainConfig(model="squares", epochs=2, step=0.02)
    caplog.set_level(logging.INFO, logger="aiodq.master")
    async with aiodq.Master(config, squares(features, labels), workers=2) as master:
        host, port = master.address
        first = asyncio.create_task(
            aiodq.run_worker(host, port, objective=squares(features[:100], labels[:100]))
        )
        await wait_until(
            lambda: master.coordinator is not None and master.coordinator.live_workers >= 1, 30, "a join"
        )
        other = squares(features[100:, :5], labels[100:])  # another size: 5 parameters, not 6
        refused, _ = await asyncio.gather(aiodq.run_worker(host, port, objective=other), first)
        result = await master.wait(timeout=60)
    assert refused.code == aiodq.ErrorCode.INVALID_CONFIG, refused
    assert result.ok and result.missing_samples == 100, (result.failure, result.missing_samples)
    epochs = [r for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epochs) == 3 and all(r.levelno == logging.WARNING for r in epochs), epochs
    assert all(" over 100 of 200 samples, " in r.getMessage() for r in epochs), epochs


@pytest.mark.asyncio
async def test_a_shard_without_the_highest_class_is_told_to_give_the_whole_datasets_classes() -> None:
    """A newcomer's audit: in-memory softmax shards, one without the rarest (highest) class, were refused
    with a bare parameter count ("24 parameters, the master's softmax has 32"); the refusal now says
    what to give. With classes= the same shard trains."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    labels[0] = 3  # class 3 in the first shard only
    features = rng.standard_normal((60, 8)) + labels[:, None]
    config = aiodq.TrainConfig(model="softmax", epochs=1)
    for classes in (None, 4):
        async with aiodq.Master(config, aiodq.SoftmaxRegression(features, labels), workers=2) as master:
            host, port = master.address
            parts = [aiodq.shard(60, 2, i) for i in range(2)]
            assert 3 not in labels[parts[1]]
            if classes is None:  # (the shard without it alone: CONFIG comes as it joins)
                refused = await aiodq.run_worker(host, port, features[parts[1]], labels[parts[1]])
                said = (
                    "this worker's model softmax has 24 parameters, the master's softmax has 32 (this worker "
                    "counted the classes in its own labels: give run_worker the whole dataset's, classes= or "
                    "label_values=)"
                )
                assert refused.code == aiodq.ErrorCode.INVALID_CONFIG and refused.reason == said, refused
                # Every class but a feature short: no such hint (a review).
                narrow = await aiodq.run_worker(host, port, features[parts[0]][:, 1:], labels[parts[0]])
                assert (
                    narrow.reason
                    == "this worker's model softmax has 28 parameters, the master's softmax has 32"
                )
            else:
                results = await asyncio.gather(
                    *(aiodq.run_worker(host, port, features[p], labels[p], classes=classes) for p in parts)
                )
                assert (await master.wait(timeout=60)).ok and all(not r.failed for r in results), results
