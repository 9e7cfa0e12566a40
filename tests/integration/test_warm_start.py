"""A warm start (``--start-from``, ``start_from=``): a new run from a trained model, or from any vector.

The expected losses are computed here from the objective itself: F(x) = (1/n) sum f_i(x) +
(l2 / 2) ||x||^2 at the vector the run starts from, which its first snapshot phase evaluates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import aiodq
from aiodq.errors import UsageError
from aiodq.launch.models import read_start
from aiodq.launch.results import save_records
from aiodq.net import checkpoint as checkpoint_file
from aiodq.protocol.algorithms import MODEL_LIMIT, TrainConfig
from aiodq.protocol.dataset import Dataset
from aiodq.protocol.recovery import Checkpoint
from aiodq.protocol.start import starting_point

from .cluster import A9A_HEAD
from .cluster import aiodq as run_aiodq


def full_loss(data: Dataset, x: np.ndarray, l2: float) -> float:
    """F(x) for logistic regression on ``data``, from the objective's own sum."""
    loss, _ = aiodq.LogisticRegression(data.features, data.labels).loss_grad(x)
    return float(loss) / data.samples + 0.5 * l2 * float(x @ x)


def head() -> Dataset:
    return aiodq.load_dataset(str(A9A_HEAD))


def head_dim() -> int:
    data = head()
    return aiodq.LogisticRegression(data.features, data.labels).dim


def test_a_run_started_from_a_model_npz_begins_where_that_run_ended(tmp_path: Path) -> None:
    """The second run's first loss is F at the first run's model (its last loss), and it trains on."""
    first, second = tmp_path / "first", tmp_path / "second"
    common = ("--data", str(A9A_HEAD), "--workers", "2", "--no-progress")
    result = run_aiodq("run", *common, "--epochs", "2", "--out", str(first))
    assert result.returncode == 0, result.stderr
    result = run_aiodq(
        "run", *common, "--epochs", "2", "--out", str(second), "--start-from", str(first / "model.npz")
    )
    assert result.returncode == 0, result.stderr
    before = json.loads((first / "result.json").read_text())
    after = json.loads((second / "result.json").read_text())
    model, _ = aiodq.load_model(first / "model.npz")
    expected = full_loss(head(), model, after["config"]["l2"])
    assert after["trace"][0]["loss"] == pytest.approx(expected, rel=1e-12)
    assert after["trace"][0]["loss"] == pytest.approx(before["trace"][-1]["loss"], rel=1e-12)
    # x_0 = 0 gives log 2; the warm start is far below it and still goes down.
    assert after["trace"][0]["loss"] < 0.9 * np.log(2)
    assert after["trace"][-1]["loss"] <= after["trace"][0]["loss"]
    assert after["provenance"]["command"][-2:] == ["--start-from", str(first / "model.npz")]
    # x_0's digest: BLAKE2b-128 of its float64 values, little-endian (docs/api.md), computed here.
    digest = hashlib.blake2b(model.astype("<f8").tobytes(), digest_size=16).hexdigest()
    assert after["provenance"]["start_from"] == f"blake2b:{digest}"
    assert "start_from" not in before["provenance"]


@pytest.mark.asyncio
async def test_run_local_starts_from_a_npy_vector(tmp_path: Path) -> None:
    """A .npy vector (weights from elsewhere) is x_0; the trace's first loss is F there."""
    data = head()
    x0 = np.random.default_rng(5).normal(scale=0.1, size=head_dim())
    path = tmp_path / "weights.npy"
    np.save(path, x0)
    config = TrainConfig(epochs=1)
    result = await aiodq.run_local(config, data=A9A_HEAD, workers=2, start_from=path, timeout=120)
    assert result.ok, result.failure
    # The snapshot travels as float32 (docs/algorithms.md: "Full precision is float32 on the wire"):
    # the workers evaluate F at x_0 so rounded.
    at = x0.astype(np.float32).astype(np.float64)
    assert result.trace[0].loss == pytest.approx(full_loss(data, at, config.l2), rel=1e-12)
    # write_results takes a folder's path as text too (it took only a Path: AttributeError on mkdir).
    paths = aiodq.write_results(result, str(tmp_path / "written"))
    assert {path.name for path in paths} >= {"result.json", "model.npz"}


@pytest.mark.asyncio
async def test_run_local_refuses_a_vector_of_another_size_before_any_worker_starts() -> None:
    config = TrainConfig(epochs=1)
    with pytest.raises(UsageError, match="the model to start from has 3 parameters; LogisticRegression has"):
        await aiodq.run_local(config, data=A9A_HEAD, workers=2, start_from=np.zeros(3), timeout=120)
    with pytest.raises(
        UsageError, match=r"start_from must be a vector of numbers \(floats or integers\), not <U1"
    ):
        await aiodq.run_local(config, data=A9A_HEAD, workers=2, start_from=["a"] * head_dim(), timeout=120)
    with pytest.raises(UsageError, match="start_from starts a new run; resume continues"):
        await aiodq.run_local(config, data=A9A_HEAD, start_from=np.zeros(3), checkpoint="c", resume=True)
    # A Master reads no file (run_local does): a path said "not object values" (an API audit).
    objective = aiodq.make_objective("logistic", np.eye(3), np.array([1.0, -1.0, 1.0]))
    for path in (Path("model.npz"), "model.npz"):
        with pytest.raises(TypeError, match=r"^start_from must be a vector of numbers, not a path: read the"):
            aiodq.Master(config, objective, workers=1, start_from=path)


class NoInitial:
    """An objective whose ``initial`` must not be called: a warm start replaces it."""

    dim, samples = 2, 2

    def initial(self, rng: np.random.Generator) -> np.ndarray:
        raise AssertionError("initial() called")

    def loss_grad(self, x: np.ndarray, rows: object = None) -> tuple[float, np.ndarray]:
        count = 2 if rows is None else len(rows)  # type: ignore[arg-type]
        return 0.5 * count * float(x @ x), count * x


def test_starting_point_takes_start_from_in_place_of_initial() -> None:
    config = TrainConfig()
    np.testing.assert_array_equal(starting_point(config, NoInitial(), [1.0, -2.0]), [1.0, -2.0])
    with pytest.raises(ValueError, match="has 3 parameters; NoInitial has 2"):
        starting_point(config, NoInitial(), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite values, got 1 of them NaN"):
        starting_point(config, NoInitial(), [1.0, np.nan])
    with pytest.raises(ValueError, match=r"beyond .* more than a MODEL carries"):
        starting_point(config, NoInitial(), [1.0, 2 * MODEL_LIMIT])
    with pytest.raises(TypeError, match="start_from needs an Objective"):
        starting_point(config, [0.0, 0.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="takes x_0 from it"):
        aiodq.Master(config, NoInitial(), workers=1, checkpoint="c", resume=True, start_from=[1.0, 2.0])


def _npy_header(path: Path, header: str) -> None:
    """A .npy file of version 1.0 with this header (padded as numpy pads it) and no data."""
    text = header + " " * (-(len(header) + 11) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1"))


def test_read_start_reads_model_files_and_vectors_and_says_what_is_wrong(tmp_path: Path) -> None:
    config = TrainConfig()
    np.save(tmp_path / "v.npy", np.arange(4.0))
    np.testing.assert_array_equal(read_start(tmp_path / "v.npy", config, 4), np.arange(4.0))
    np.save(tmp_path / "ints.npy", np.arange(4, dtype=np.int16))
    assert read_start(tmp_path / "ints.npy", config, 4).dtype == np.float64
    with pytest.raises(UsageError, match=r"v.npy holds 4 parameters; --model logistic on this data has 5"):
        read_start(tmp_path / "v.npy", config, 5)
    with pytest.raises(UsageError, match=r"^start_from .*v.npy holds 4"):  # (the API's own name)
        read_start(tmp_path / "v.npy", config, 5, option="start_from")
    # Anything but floats and integers: numpy would convert most of them (complex dropping its imaginary
    # part, "1.5" as 1.5, dates as seconds), and train from it.
    for name, values in {
        "complex": np.ones(4, complex),
        "text": np.array(["1.5"] * 4),
        "bool": np.ones(4, bool),
        "dates": np.zeros(4, "datetime64[s]"),
        "record": np.zeros(4, [("a", "<f8")]),
    }.items():
        np.save(tmp_path / f"{name}.npy", values)
        with pytest.raises(UsageError, match=r"must be one vector of numbers \(floats or integers\), not"):
            read_start(tmp_path / f"{name}.npy", config, 4)
    np.save(tmp_path / "objects.npy", np.array([{}], dtype=object))
    with pytest.raises(
        UsageError,
        match=r"objects.npy: not a readable \.npy file \(its array holds Python objects, not numbers\)",
    ):
        read_start(tmp_path / "objects.npy", config)
    np.save(tmp_path / "matrix.npy", np.zeros((2, 2)))
    with pytest.raises(UsageError, match=r"not shape \(2, 2\)"):
        read_start(tmp_path / "matrix.npy", config)
    # The header is read first: a claim of 10**12 values is refused without reading (or allocating) them,
    # and a header that does not parse is one line.
    _npy_header(
        tmp_path / "claims.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    )
    with pytest.raises(
        UsageError, match=r"claims.npy: not a readable \.npy file \(shorter than its header says: cut off\?\)"
    ):
        read_start(tmp_path / "claims.npy", config, 4)
    _npy_header(tmp_path / "parens.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': ((((1,), }")
    with pytest.raises(UsageError, match=r"parens.npy: not a readable \.npy file"):
        read_start(tmp_path / "parens.npy", config, 4)
    (tmp_path / "text.npy").write_text("1 2 3\n")
    with pytest.raises(UsageError, match=r"neither a run's model\.npz nor a \.npy file"):
        read_start(tmp_path / "text.npy", config)
    with pytest.raises(UsageError, match="No such file"):
        read_start(tmp_path / "missing.npz", config)
    # A FIFO waited for a writer for ever (a durability audit); a folder is said to be one.
    os.mkfifo(tmp_path / "fifo.npy")
    with pytest.raises(UsageError, match=r"fifo\.npy: not a regular file \(a device, FIFO or socket\)$"):
        read_start(tmp_path / "fifo.npy", config)
    (tmp_path / "run").mkdir()
    with pytest.raises(UsageError, match=r"run: a folder$"):
        read_start(tmp_path / "run", config)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(UsageError, match=r"an \.npz archive without aiodq's metadata"):
        read_start(tmp_path / "other.npz", config)
    # A checkpoint and a records file are aiodq .npz files too, but not model files: each its own hint.
    checkpoint_file.save(tmp_path / "run.ckpt", Checkpoint({"x": np.zeros(3)}, {"phase": "inner"}))
    with pytest.raises(UsageError, match=r"not an aiodq model file \(a checkpoint is continued with"):
        read_start(tmp_path / "run.ckpt", config)
    save_records([], tmp_path / "records.npz")
    with pytest.raises(UsageError, match=r"not an aiodq model file \(a records file: save one of its models"):
        read_start(tmp_path / "records.npz", config)


def test_a_start_model_of_a_run_that_failed_or_of_other_data_is_taken_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = head()
    x = np.zeros(head_dim())
    meta = {"kind": "aiodq model", "dim": x.size, "config": {"model": "logistic"}, "format": 1}
    for name, extra in (
        ("failed", {"failure": "diverged: the loss grew", "data": data.fingerprint()}),
        ("other", {"failure": None, "dataset": "elsewhere", "data": "blake2b:" + "0" * 32}),
        ("same", {"failure": None, "dataset": data.name, "data": data.fingerprint()}),
    ):
        checkpoint_file.save(tmp_path / f"{name}.npz", Checkpoint({"model": x, "iterate": x}, meta | extra))
    with caplog.at_level(logging.WARNING, logger="aiodq.models"):
        for name in ("failed", "other", "same"):
            read_start(tmp_path / f"{name}.npz", TrainConfig(), head_dim(), data=data)
        x0 = read_start(tmp_path / "same.npz", TrainConfig(model="my_models:Linear"), head_dim(), data=data)
    np.testing.assert_array_equal(x0, x)
    said = [record.getMessage() for record in caplog.records]
    failed, other, same = tmp_path / "failed.npz", tmp_path / "other.npz", tmp_path / "same.npz"
    assert said == [
        f"--start-from {failed} is the model of a run that did not finish (diverged: the loss grew)",
        f"--start-from {other} was trained on other data (elsewhere) than this run's {data.name}",
        f"--start-from {same} was trained as --model logistic; this run trains my_models:Linear",
    ]


def test_a_size_set_by_other_options_says_which(tmp_path: Path) -> None:
    """A start model whose run had another --bias or --hidden: the size message names the option."""
    meta = {"kind": "aiodq model", "format": 1, "failure": None}
    for name, trained, size in (
        ("plain", {"model": "logistic", "bias": False, "hidden": 100}, 117),
        ("small", {"model": "mlp", "bias": False, "hidden": 4}, 482),
    ):
        x = np.zeros(size)
        checkpoint_file.save(
            tmp_path / f"{name}.npz",
            Checkpoint({"model": x, "iterate": x}, meta | {"dim": size, "config": trained}),
        )
    with pytest.raises(
        UsageError, match=r"holds 117 parameters .*has 118 \(its run trained it without --bias\)$"
    ):
        read_start(tmp_path / "plain.npz", TrainConfig(bias=True), 118)
    with pytest.raises(
        UsageError, match=r"holds 482 parameters .*has 12,002 \(its run trained it with --hidden 4\)$"
    ):
        read_start(tmp_path / "small.npz", TrainConfig(model="mlp"), 12_002)
    with pytest.raises(UsageError, match=r"has 12,002$"):  # another model: no hint
        read_start(tmp_path / "plain.npz", TrainConfig(model="mlp"), 12_002)


def test_the_command_refuses_start_from_with_resume_and_a_wrong_size_before_writing(tmp_path: Path) -> None:
    """aiodq run and aiodq master share these checks (cli.commands): each is tried with one of them."""
    out = tmp_path / "out"
    np.save(tmp_path / "three.npy", np.zeros(3))
    start = ("--start-from", str(tmp_path / "three.npy"))
    master = ("--listen", "127.0.0.1:0", "--workers", "1")
    for command, extra, expected in (
        ("run", ("--checkpoint", str(tmp_path / "c"), "--resume"), "--start-from starts a new run; --resume"),
        ("master", master, f"three.npy holds 3 parameters; --model logistic on this data has {head_dim()}"),
    ):
        result = run_aiodq(command, "--data", str(A9A_HEAD), "--out", str(out), *start, *extra)
        assert result.returncode == 2, (command, result.stderr)
        assert expected in result.stderr, (command, result.stderr)
        assert not out.exists()
    # The model.npz this run's --out would replace: refused (the newcomer's README command overwrote it).
    kept = tmp_path / "kept"
    model = Checkpoint(
        {"model": np.zeros(head_dim()), "iterate": np.zeros(head_dim())},
        {"kind": checkpoint_file.MODEL_KIND, "dim": head_dim(), "config": {}},
    )
    checkpoint_file.save(kept / "model.npz", model, what="model file", private=False)
    planted = (kept / "model.npz").read_bytes()
    result = run_aiodq(
        "run", "--data", str(A9A_HEAD), "--out", str(kept), "--start-from", str(kept / "model.npz")
    )
    assert result.returncode == 2, result.stderr
    expected = f"the run writes its model.npz there (--out {kept}): copy it elsewhere first, or give another"
    assert expected in result.stderr, result.stderr
    assert [path.name for path in kept.iterdir()] == ["model.npz"]
    assert (kept / "model.npz").read_bytes() == planted
    # What the file is comes first (a newcomer trial: its result.json was to be copied elsewhere, then
    # refused as no model there).
    (kept / "result.json").write_text("{}")
    result = run_aiodq(
        "run", "--data", str(A9A_HEAD), "--out", str(kept), "--start-from", str(kept / "result.json")
    )
    assert result.returncode == 2 and "copy it elsewhere" not in result.stderr, result.stderr


@pytest.mark.asyncio
async def test_the_start_digest_survives_a_checkpoint_and_its_resume(tmp_path: Path) -> None:
    """A run started from a vector and resumed from its checkpoint still names x_0 in its provenance."""
    data = head()
    objective = aiodq.LogisticRegression(data.features, data.labels)
    x0 = np.linspace(-0.1, 0.1, objective.dim)
    expected = "blake2b:" + hashlib.blake2b(x0.astype("<f8").tobytes(), digest_size=16).hexdigest()
    path = tmp_path / "run.ckpt"
    config = TrainConfig(epochs=1)
    async with aiodq.Master(config, objective, workers=1, checkpoint=path, start_from=x0) as master:
        assert master.result().summary["provenance"]["start_from"] == expected
    async with aiodq.Master(config, objective, workers=1, checkpoint=path, resume=True) as master:
        assert master.result().summary["provenance"]["start_from"] == expected
        assert master.coordinator is not None
        np.testing.assert_array_equal(master.coordinator.state.x, x0)


@pytest.mark.asyncio
async def test_a_start_model_trained_with_another_module_is_taken_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A torch audit: a warm start from a model trained against other frozen weights began as if untrained
    (loss 2.26 against 2.04), with no word, where --resume refuses it. The module's fingerprint (an
    objective's fingerprint(): layers, loss, frozen parameters, buffers) is in result.json and model.npz;
    a warm start with another warns, as one from other data does."""
    rng = np.random.default_rng(0)
    features, labels = rng.standard_normal((40, 3)), rng.standard_normal(40)

    class Frozen:  # least squares through a frozen scale: the fingerprint says which
        def __init__(self, a: np.ndarray, b: np.ndarray, scale: float) -> None:
            self.a, self.b, self.scale = a, b, scale
            self.samples, self.dim = a.shape

        def initial(self, rng: np.random.Generator) -> np.ndarray:
            return np.zeros(self.dim)

        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            a, b = (self.a, self.b) if rows is None else (self.a[rows], self.b[rows])
            residual = self.scale * (a @ x) - b
            return 0.5 * float(residual @ residual), self.scale * (a.T @ residual)

        def fingerprint(self) -> str:
            return f"scale {self.scale}"

    config = aiodq.TrainConfig(model="frozen", epochs=1, step=0.05)
    async with aiodq.Master(config, Frozen(features, labels, 2.0), workers=1) as master:
        await aiodq.run_worker(*master.address, objective=Frozen(features, labels, 2.0))
        result = await master.wait(timeout=60)
    assert result.ok and result.summary["fixed"] == "scale 2.0"
    aiodq.write_results(result, tmp_path)
    assert aiodq.load_model(tmp_path / "model.npz")[1]["fixed"] == "scale 2.0"
    caplog.clear()  # (the master's lines: only aiodq.models' are counted below)
    with caplog.at_level(logging.WARNING, logger="aiodq.models"):
        read_start(tmp_path / "model.npz", config, 3, fixed="scale 2.0")
        assert not [record for record in caplog.records if record.name == "aiodq.models"]  # the same module
        read_start(tmp_path / "model.npz", config, 3, fixed="scale 3.0")
    assert [record.getMessage() for record in caplog.records if record.name == "aiodq.models"] == [
        f"--start-from {tmp_path / 'model.npz'} was trained with another module than this run's (its layers, "
        "loss, frozen parameters or buffers: fingerprint scale 2.0, this run's scale 3.0): x means something "
        "else there"
    ]
