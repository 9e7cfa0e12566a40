"""aiodq.torch: TorchObjective against a hand-written numpy network, its sums, its vector, its errors.

The reference is a Linear-ReLU-Linear network with cross-entropy written out in numpy (forward
and backpropagation by hand, float64): torch computes none of the expected values.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="aiodq.torch needs PyTorch (the extra aiodq[torch])")

from aiodq.codec.lowp import make_rng  # noqa: E402
from aiodq.errors import CheckpointError  # noqa: E402
from aiodq.net.checkpoint import check_data  # noqa: E402
from aiodq.protocol.algorithms import TrainConfig, WorkerState  # noqa: E402
from aiodq.protocol.dataset import Dataset  # noqa: E402
from aiodq.protocol.objectives import Objective, check_objective  # noqa: E402
from aiodq.protocol.simulate import simulate  # noqa: E402
from aiodq.torch import TorchObjective  # noqa: E402

nn = torch.nn
ROOT = Path(__file__).resolve().parents[2]

SAMPLES, FEATURES, HIDDEN, CLASSES = 20, 5, 7, 3
# float32 inside torch: a sum of 20 per-sample gradients of order 1 carries rounding errors of
# about 20 * 6e-8 * |g|, far below 1e-5; a wrong sign, factor or term is of order 1e-1.
TOL = 1e-5


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    """One torch thread: torch's default, one per core, slows small ops down on a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(SAMPLES, FEATURES)), rng.integers(0, CLASSES, SAMPLES)


def _network(seed: int = 0, dtype: Any = None) -> Any:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))
    return net if dtype is None else net.to(dtype)


def _unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x in module.parameters() order: W1 (HIDDEN x FEATURES, row-major), b1, W2 (CLASSES x HIDDEN), b2."""
    sizes = np.cumsum([HIDDEN * FEATURES, HIDDEN, CLASSES * HIDDEN])
    w1, b1, w2, b2 = np.split(x, sizes)
    return w1.reshape(HIDDEN, FEATURES), b1, w2.reshape(CLASSES, HIDDEN), b2


def numpy_loss_grad(x: np.ndarray, features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Sum over the rows of cross-entropy(W2 relu(W1 a + b1) + b2, y) and its gradient, by hand."""
    w1, b1, w2, b2 = _unpack(x)
    pre = features @ w1.T + b1
    hidden = np.maximum(pre, 0.0)
    scores = hidden @ w2.T + b2
    top = scores.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scores - top).sum(axis=1)) + top[:, 0]
    index = np.arange(len(labels))
    loss = float((log_norm - scores[index, labels]).sum())
    delta = np.exp(scores - log_norm[:, None])  # softmax
    delta[index, labels] -= 1.0  # d loss / d scores
    grad_w2, grad_b2 = delta.T @ hidden, delta.sum(axis=0)
    back = (delta @ w2) * (pre > 0)  # d loss / d pre-activations
    grad_w1, grad_b1 = back.T @ features, back.sum(axis=0)
    return loss, np.concatenate([grad_w1.ravel(), grad_b1, grad_w2.ravel(), grad_b2])


def _objective(**options: Any) -> TorchObjective:
    features, labels = _data()
    return TorchObjective(_network(), nn.CrossEntropyLoss(), features, labels, **options)


def _point(objective: TorchObjective, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=0.5, size=objective.dim)


# -- the gradient against numpy -----------------------------------------------------------------


def test_gradient_equals_the_hand_written_numpy_gradient() -> None:
    objective = _objective()
    features, labels = _data()
    assert objective.dim == HIDDEN * FEATURES + HIDDEN + CLASSES * HIDDEN + CLASSES
    for seed in range(3):
        x = _point(objective, seed)
        rows = np.random.default_rng(seed).integers(0, SAMPLES, 8)
        loss, grad = objective.loss_grad(x, rows)
        expected_loss, expected_grad = numpy_loss_grad(x, features[rows], labels[rows])
        assert grad.dtype == np.float64 and grad.shape == (objective.dim,)
        assert loss == pytest.approx(expected_loss, rel=TOL)
        np.testing.assert_allclose(grad, expected_grad, rtol=TOL, atol=TOL)
        full_loss, full_grad = objective.loss_grad(x)
        expected_loss, expected_grad = numpy_loss_grad(x, features, labels)
        assert full_loss == pytest.approx(expected_loss, rel=TOL)
        np.testing.assert_allclose(full_grad, expected_grad, rtol=TOL, atol=TOL)


def test_a_float64_module_agrees_to_rounding() -> None:
    """With float64 parameters nothing is rounded to float32: agreement to 1e-12."""
    features, labels = _data()
    objective = TorchObjective(_network(dtype=torch.float64), nn.CrossEntropyLoss(), features, labels)
    x = _point(objective)
    loss, grad = objective.loss_grad(x)
    expected_loss, expected_grad = numpy_loss_grad(x, features, labels)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_full_precision_worker_snapshot_and_inner_step_match_numpy() -> None:
    """One worker in full precision (AsyFPG): the snapshot sums and alpha are numpy's."""
    features, labels = _data()
    objective = _objective()
    config = TrainConfig(algorithm="asyfpg", batch=6, l2=0.0, model="torch")
    worker = WorkerState(config, objective, 0)
    snapshot = _point(objective, 2)
    loss, grad, correct = worker.snapshot_phase(snapshot)
    expected_loss, expected_grad = numpy_loss_grad(snapshot, features, labels)
    assert loss == pytest.approx(expected_loss, rel=TOL)
    np.testing.assert_allclose(grad, expected_grad, rtol=TOL, atol=TOL)
    w1, b1, w2, b2 = _unpack(snapshot)
    scores = np.maximum(features @ w1.T + b1, 0) @ w2.T + b2
    assert correct == int((scores.argmax(axis=1) == labels).sum())
    # alpha = (grad f_B(x_hat) - grad f_B(x_snap)) / B on the worker's own draw of B rows.
    x_hat = snapshot + np.random.default_rng(3).normal(scale=0.1, size=objective.dim)
    rows = make_rng([config.seed, 0x5EED, 0]).integers(0, SAMPLES, size=config.batch)  # WorkerState's
    from aiodq.codec.vectors import RawVector  # noqa: PLC0415

    alpha = worker.variance_reduced(RawVector(x_hat.astype(np.float32)), False)
    x_hat32 = x_hat.astype(np.float32).astype(np.float64)
    expected = (
        numpy_loss_grad(x_hat32, features[rows], labels[rows])[1]
        - numpy_loss_grad(snapshot, features[rows], labels[rows])[1]
    ) / config.batch
    np.testing.assert_allclose(alpha, expected, rtol=TOL, atol=TOL)


# -- sums: repeated rows, chunks ------------------------------------------------------------------


def test_repeated_rows_count_as_often_as_they_appear() -> None:
    objective = _objective()
    x = _point(objective)
    rows = np.array([3, 3, 3, 11, 0, 11])
    loss, grad = objective.loss_grad(x, rows)
    parts = [objective.loss_grad(x, np.array([row])) for row in (3, 11, 0)]
    assert loss == pytest.approx(3 * parts[0][0] + 2 * parts[1][0] + parts[2][0], rel=TOL)
    np.testing.assert_allclose(grad, 3 * parts[0][1] + 2 * parts[1][1] + parts[2][1], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 19, 20, 1024])
def test_chunks_give_the_sums_of_one_batch(chunk_size: int) -> None:
    whole = _objective()
    chunked = _objective(chunk_size=chunk_size)
    x = _point(whole)
    loss, grad = whole.loss_grad(x, np.arange(SAMPLES))  # one batch of every row
    for rows in (None, np.arange(SAMPLES)):
        chunk_loss, chunk_grad = chunked.loss_grad(x, rows)
        assert chunk_loss == pytest.approx(loss, rel=TOL)
        np.testing.assert_allclose(chunk_grad, grad, rtol=TOL, atol=TOL)
    many = np.random.default_rng(4).integers(0, SAMPLES, 50)  # more rows than a chunk, repeated
    np.testing.assert_allclose(chunked.loss_grad(x, many)[1], whole.loss_grad(x, many)[1], rtol=TOL, atol=TOL)


def test_each_call_starts_from_zero_and_returns_a_new_array() -> None:
    objective = _objective()
    x = _point(objective)
    rows = np.array([1, 2, 3])
    first = objective.loss_grad(x, rows)[1]
    second = objective.loss_grad(x, rows)[1]  # the same rows object: the gathered batch is reused
    np.testing.assert_array_equal(first, second)
    assert first is not second and not np.shares_memory(first, second)
    objective.module.zero_grad()  # sets .grad to None: the adapter re-attaches its views
    np.testing.assert_array_equal(objective.loss_grad(x, rows)[1], first)
    objective.module.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(objective.loss_grad(x, rows.copy())[1], first)


# -- the vector and the module --------------------------------------------------------------------


def test_round_trip_between_the_vector_and_the_parameters() -> None:
    net = _network()
    before = np.concatenate([p.detach().numpy().ravel() for p in net.parameters()]).astype(np.float64)
    features, labels = _data()
    objective = TorchObjective(net, nn.CrossEntropyLoss(), features, labels)
    np.testing.assert_array_equal(objective.initial(np.random.default_rng(0)), before)
    np.testing.assert_array_equal(objective.read_parameters(), before)
    x = _point(objective)
    objective.write_parameters(x)
    rounded = x.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(objective.read_parameters(), rounded)
    in_module = np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])
    np.testing.assert_array_equal(in_module, rounded)
    w1, _, _, b2 = _unpack(rounded)
    np.testing.assert_array_equal(net[0].weight.detach().numpy(), w1.astype(np.float32))
    np.testing.assert_array_equal(net[2].bias.detach().numpy(), b2.astype(np.float32))
    objective.loss_grad(_point(objective, 5))
    # initial() is x_0 as built, whatever was written since, and a fresh copy each time.
    first = objective.initial(np.random.default_rng(1))
    np.testing.assert_array_equal(first, before)
    first[:] = 0
    np.testing.assert_array_equal(objective.initial(np.random.default_rng(1)), before)


def test_parameters_moved_out_of_the_buffer_are_said_at_every_use() -> None:
    """A review: after ``module.double()``, or a second TorchObjective built on the same module (a master
    and a worker in one program), write_parameters wrote the trained model where the module no longer
    read it, and read_parameters said it had: now each use raises, naming both causes."""
    features, labels = _data()
    doubled = _network()
    objective = TorchObjective(doubled, nn.CrossEntropyLoss(), features, labels)
    doubled.double()
    shared = _network()
    first = TorchObjective(shared, nn.CrossEntropyLoss(), features, labels)
    TorchObjective(shared, nn.CrossEntropyLoss(), features, labels)
    for moved in (objective, first):
        x = _point(moved)
        for method, args in (("write_parameters", (x,)), ("read_parameters", ()), ("loss_grad", (x,))):
            with pytest.raises(
                RuntimeError, match=r"\.double\(\), assigning \.data, or another TorchObjective"
            ):
                getattr(moved, method)(*args)


def test_frozen_parameters_are_not_in_the_vector() -> None:
    net = _network()
    net[0].weight.requires_grad_(False)
    features, labels = _data()
    objective = TorchObjective(net, nn.CrossEntropyLoss(), features, labels)
    assert objective.dim == HIDDEN + CLASSES * HIDDEN + CLASSES
    x = np.concatenate([net[0].weight.detach().numpy().ravel(), _point(objective)])
    np.testing.assert_allclose(
        objective.loss_grad(x[HIDDEN * FEATURES :])[1],
        numpy_loss_grad(x, features, labels)[1][HIDDEN * FEATURES :],
        rtol=TOL,
        atol=TOL,
    )


def _frozen(seed: int, features: Any = None, labels: Any = None) -> TorchObjective:
    """The test network with its first layer frozen and a buffer, built after torch.manual_seed(seed)."""
    net = _network(seed)
    net[0].weight.requires_grad_(False)
    net.register_buffer("scale", torch.ones(3))
    if features is None:
        features, labels = _data()
    return TorchObjective(net, nn.CrossEntropyLoss(), features, labels, name="mine:frozen")


def test_the_fingerprint_is_the_frozen_parameters_and_buffers() -> None:
    """fingerprint(): BLAKE2b-128 over the module's and the loss's repr, each parameter's
    "name:shape:trainable;", then each frozen parameter and each buffer as "name:dtype:shape;" and its
    bytes; x (the trainable parameters' values) is not in it."""
    a, b = _frozen(0), _frozen(0)
    digest = hashlib.blake2b(digest_size=16)
    plain = (bool, int, float, str, type(None))
    held = vars(a.loss_fn).items()  # (the loss as given)
    settings = sorted((k, v) for k, v in held if not k.startswith("_") and isinstance(v, plain))
    assert ("label_smoothing", 0.0) in settings and ("reduction", "mean") in settings
    digest.update(f"{a.module!r};CrossEntropyLoss(){settings};".encode())
    for name, param in a.module.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)}:{param.requires_grad};".encode())
    weight = a.module[0].weight.detach()
    digest.update(f"0.weight:torch.float32:{tuple(weight.shape)};".encode() + weight.numpy().tobytes())
    digest.update(b"scale:torch.float32:(3,);" + np.ones(3, np.float32).tobytes())
    assert a.fingerprint() == digest.hexdigest() == b.fingerprint()
    b.write_parameters(_point(b))
    assert b.fingerprint() == a.fingerprint()  # x moved: the same
    assert _frozen(1).fingerprint() != a.fingerprint()  # other frozen weights
    b.module.scale[1] = 2.0
    assert b.fingerprint() != a.fingerprint()  # another buffer value


def test_the_fingerprint_tells_modules_of_the_same_size_apart() -> None:
    """A newcomer trial: a run resumed after its module's Tanh became a ReLU (the same parameters) trained
    on without a word.  The layers and the loss are in the fingerprint, which a checkpoint keeps: such a
    run is refused; the same module built again is not."""
    features, labels = _data()

    def built(activation: Any, loss: Any = None) -> TorchObjective:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(FEATURES, HIDDEN), activation, nn.Linear(HIDDEN, CLASSES))
        return TorchObjective(net, loss or nn.CrossEntropyLoss(), features, labels)

    relu = built(nn.ReLU()).fingerprint()
    assert built(nn.ReLU()).fingerprint() == relu
    assert built(nn.Tanh()).fingerprint() != relu
    assert built(nn.ReLU(), nn.CrossEntropyLoss(label_smoothing=0.1)).fingerprint() != relu

    class Weighted(nn.Module):  # a loss of one's own holding a figure of its process's samples
        def __init__(self, share: float) -> None:
            super().__init__()
            self.share = share

        def forward(self, outputs: Any, targets: Any) -> Any:
            return nn.functional.cross_entropy(outputs, targets, reduction="sum")

    # Its attributes may differ from process to process (a review: every worker refused the run).
    assert built(nn.ReLU(), Weighted(0.25)).fingerprint() == built(nn.ReLU(), Weighted(0.75)).fingerprint()
    meta = {"fixed": relu}
    check_data("run.ckpt", meta, None, relu)  # the same: resumed
    check_data("run.ckpt", {}, None, relu)  # an earlier version's checkpoint names none: not checked
    with pytest.raises(
        CheckpointError, match=r"^the checkpoint run.ckpt was written by a run of another model "
    ):
        check_data("run.ckpt", meta, None, built(nn.Tanh()).fingerprint())


def test_workers_whose_frozen_parameters_differ_from_the_masters_refuse_the_run() -> None:
    """A torch trial: a model whose frozen layer each process drew without a seed trained to 0.52 test
    accuracy (0.90 seeded) and exit 0, and model.npz cannot rebuild it.  The master sends its objective's
    fingerprint in CONFIG; a worker whose own differs ends its session with INVALID_CONFIG, saying so."""
    features, labels = _data()
    seeds = iter(range(10))
    config = TrainConfig(model="mine:frozen", epochs=1, step=0.05, updates_per_epoch=4)

    def unseeded(part_features: Any, part_labels: Any) -> TorchObjective:
        return _frozen(next(seeds), part_features, part_labels)  # the master's, then each worker's

    refused = simulate(config, Dataset(features, labels), 2, objective=unseeded)
    assert refused.trace == [] and not refused.done
    said = [(code, side) for _, code, reason, side, _ in refused.errors if "fingerprint" in reason]
    assert said == [("INVALID_CONFIG", "worker")] * 2, refused.errors
    seeded = simulate(config, Dataset(features, labels), 2, objective=lambda f, y: _frozen(0, f, y))
    assert seeded.done and seeded.failure is None


def test_batch_norm_whose_statistics_were_never_estimated_is_warned_of() -> None:
    """A torch trial: a CNN's batch norm ran, in evaluation mode, on running statistics nothing had
    estimated (mean 0, variance 1), and nothing said so.  Once estimated, nothing is said."""
    features, labels = _data()
    net = nn.Sequential(
        nn.Linear(FEATURES, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)
    )
    with pytest.warns(UserWarning, match=r"^batch norm 1: running statistics never estimated \(mean 0, "):
        TorchObjective(net, nn.CrossEntropyLoss(), features, labels)
    net.train()
    net(torch.as_tensor(features, dtype=torch.float32))  # one pass in training mode estimates them
    TorchObjective(net, nn.CrossEntropyLoss(), features, labels)  # (warnings are errors here)


def test_the_objective_protocol_accepts_it() -> None:
    objective = _objective(name="mine")
    assert check_objective(objective) is objective
    assert isinstance(objective, Objective)
    assert objective.samples == SAMPLES and objective.name == "mine"
    assert _objective().name is None


def test_the_module_runs_in_evaluation_mode() -> None:
    features, labels = _data()
    net = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.Dropout(0.5), nn.Linear(HIDDEN, CLASSES))
    objective = TorchObjective(net, nn.CrossEntropyLoss(), features, labels)
    assert not net.training
    x = _point(objective)
    np.testing.assert_array_equal(objective.loss_grad(x)[1], objective.loss_grad(x)[1])  # no dropout draw


# -- losses ---------------------------------------------------------------------------------------


def test_loss_modules_are_summed_whatever_their_reduction() -> None:
    features, labels = _data()
    x = _point(_objective())
    mean = nn.CrossEntropyLoss()
    expected = numpy_loss_grad(x, features, labels)
    for loss_fn in (
        mean,
        nn.CrossEntropyLoss(reduction="sum"),
        nn.CrossEntropyLoss(reduction="none"),
        lambda out, y: torch.nn.functional.cross_entropy(out, y, reduction="sum"),
        lambda out, y: torch.nn.functional.cross_entropy(out, y, reduction="none"),  # one per sample
    ):
        loss, grad = TorchObjective(_network(), loss_fn, features, labels).loss_grad(x)
        assert loss == pytest.approx(expected[0], rel=TOL)
        np.testing.assert_allclose(grad, expected[1], rtol=TOL, atol=TOL)
    assert mean.reduction == "mean"  # the caller's module is unchanged


def test_binary_outputs_score_by_sign() -> None:
    rng = np.random.default_rng(6)
    features = rng.normal(size=(30, FEATURES))
    labels = (rng.random(30) < 0.5).astype(np.float64)
    net = nn.Sequential(nn.Linear(FEATURES, 1), nn.Flatten(0))
    objective = TorchObjective(net, nn.BCEWithLogitsLoss(), features, labels)
    x = rng.normal(size=objective.dim)
    margins = features @ x[:FEATURES] + x[FEATURES]
    assert objective.correct(x) == int(((margins > 0) == (labels > 0)).sum())
    # sum over samples of log(1 + exp(-y' m)) with y' = 2 y - 1, written apart
    expected = np.logaddexp(0.0, -(2 * labels - 1) * margins).sum()
    assert objective.loss_grad(x)[0] == pytest.approx(expected, rel=TOL)


def test_regression_outputs_have_no_accuracy() -> None:
    rng = np.random.default_rng(7)
    objective = TorchObjective(
        nn.Linear(FEATURES, 3), nn.MSELoss(), rng.normal(size=(9, FEATURES)), rng.normal(size=(9, 3))
    )
    assert objective.correct(objective.initial(rng)) == 0
    assert objective.measures_accuracy is False  # the master then reports no accuracy
    classifier = TorchObjective(_network(), nn.CrossEntropyLoss(), *_data())
    assert classifier.measures_accuracy is True
    # One output against real targets is a regression too (a newcomer trial's nn.Linear(20, 1) with
    # MSELoss showed an "accuracy" of 0.99); against 0/1 or -1/+1 labels, a binary classifier.
    features, targets = rng.normal(size=(9, FEATURES)), rng.normal(size=(9, 1))
    one_output = TorchObjective(nn.Linear(FEATURES, 1), nn.MSELoss(), features, targets)
    assert one_output.measures_accuracy is False and one_output.correct(one_output.initial(rng)) == 0
    signs = np.where(targets > 0, 1.0, -1.0)
    assert TorchObjective(nn.Linear(FEATURES, 1), nn.MSELoss(), features, signs).measures_accuracy is True


# -- bad inputs -----------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors() -> None:
    features, labels = _data()
    loss = nn.CrossEntropyLoss()
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        TorchObjective(lambda t: t, loss, features, labels)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        TorchObjective(_network(), "cross-entropy", features, labels)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one label per row"):
        TorchObjective(_network(), loss, features, labels[:-1])
    with pytest.raises(ValueError, match="at least one sample"):
        TorchObjective(_network(), loss, features[:0], labels[:0])
    with pytest.raises(ValueError, match="no trainable parameters"):
        TorchObjective(nn.ReLU(), loss, features, labels)
    mixed = _network()
    mixed[2].double()
    with pytest.raises(TypeError, match="one dtype"):
        TorchObjective(mixed, loss, features, labels)
    with pytest.raises(TypeError, match="must be numbers"):
        TorchObjective(_network(), loss, np.array([["a"] * FEATURES] * SAMPLES), labels)
    brain = _network(dtype=torch.bfloat16)  # numpy has no bfloat16: refused before the module is touched
    pointers = [p.data_ptr() for p in brain.parameters()]
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        TorchObjective(brain, loss, features, labels)
    assert [p.data_ptr() for p in brain.parameters()] == pointers
    untouched = _network()
    pointer = untouched[0].weight.data_ptr()
    with pytest.raises(ValueError, match="fail on features of shape"):
        TorchObjective(untouched, loss, features[:, :3], labels)
    assert untouched.training and untouched[0].weight.data_ptr() == pointer  # left as it was
    # Token ids for an nn.Embedding arrive as floats: the error says what to do (a newcomer trial).
    embedding = nn.Sequential(nn.Embedding(10, 2), nn.Flatten(), nn.Linear(2 * FEATURES, CLASSES))
    ids = np.random.default_rng(0).integers(0, 10, (SAMPLES, FEATURES))
    with pytest.raises(ValueError, match=r"indices.*token ids need x\.long\(\) in forward\)$"):
        TorchObjective(embedding, loss, ids, labels)
    with pytest.raises(ValueError, match="chunk_size"):
        TorchObjective(_network(), loss, features, labels, chunk_size=0)
    with pytest.raises(ValueError, match="summed loss"):
        TorchObjective(_network(), lambda out, y: out, features, labels)

    objective = TorchObjective(_network(), loss, features, labels)
    with pytest.raises(ValueError, match=f"vector of {objective.dim} values"):
        objective.loss_grad(np.zeros(objective.dim + 1))
    with pytest.raises(ValueError, match=r"sample indices in \[0, 20\)"):
        objective.loss_grad(np.zeros(objective.dim), np.array([0, SAMPLES]))
    with pytest.raises(ValueError, match=r"sample indices in \[0, 20\)"):
        objective.loss_grad(np.zeros(objective.dim), np.array([-1]))
    with pytest.raises(ValueError, match="1-d array of sample indices"):
        objective.loss_grad(np.zeros(objective.dim), np.array([0.5]))
    objective.module.double()  # replaces the parameters: the adapter notices
    with pytest.raises(RuntimeError, match="replaced"):
        objective.loss_grad(np.zeros(objective.dim))
    # A trial: a new Parameter assigned to a layer was left out of x, its gradient all zeros.
    for change in ("new", "frozen"):
        objective = TorchObjective(_network(), loss, features, labels)
        layer = objective.module[0]
        if change == "new":
            layer.weight = torch.nn.Parameter(torch.zeros_like(layer.weight))
        else:
            layer.weight.requires_grad_(False)
        for use in (objective.loss_grad, objective.correct, objective.write_parameters):
            with pytest.raises(
                RuntimeError, match=r"^the module's parameter 0\.weight changed after the Torch"
            ):
                use(np.zeros(objective.dim))
    # A torch audit: of a tied pair, the place the parameter was found first took a new Parameter unsaid
    # (its gradient outside x); each place is checked now.
    for place in ("0", "2"):
        net = nn.Sequential(
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, CLASSES)
        )
        net[2].weight = net[0].weight  # tied
        objective = TorchObjective(net, loss, np.ones((SAMPLES, HIDDEN)), labels)
        layer = net[int(place)]
        layer.weight = torch.nn.Parameter(torch.zeros_like(layer.weight))
        with pytest.raises(
            RuntimeError, match=rf"^the module's parameter {place}\.weight changed after the Torch"
        ):
            objective.loss_grad(np.zeros(objective.dim))
    # An audit: a parameter unfrozen after the objective was built took gradients outside x, silently.
    net = _network()
    net[0].weight.requires_grad_(False)
    objective = TorchObjective(net, loss, features, labels)
    objective.loss_grad(np.zeros(objective.dim))
    net[0].weight.requires_grad_(True)
    for use in (objective.loss_grad, objective.correct, objective.write_parameters):
        with pytest.raises(
            RuntimeError, match=r"^a parameter frozen when the TorchObjective was built requires"
        ):
            use(np.zeros(objective.dim))


def test_a_loss_that_is_not_a_sum_over_the_samples_is_refused() -> None:
    """nn.Linear(d, 1) and MSELoss against labels of shape (n,): torch broadcasts (B, 1) against (B,)
    and sums every pair, with only a warning (a newcomer trial: 112.46 for two samples whose own
    losses sum to 55.55, and a run that diverged).  A callable averaging over the batch likewise."""
    import warnings  # noqa: PLC0415

    rng = np.random.default_rng(8)
    features, targets = rng.normal(size=(9, FEATURES)), rng.normal(size=9) * 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own warning, the only sign until now
        with pytest.raises(ValueError, match=r"outputs of shape \(2, 1\), labels of shape \(2,\)"):
            TorchObjective(nn.Linear(FEATURES, 1), nn.MSELoss(), features, targets)
    column = TorchObjective(nn.Linear(FEATURES, 1), nn.MSELoss(), features, targets.reshape(-1, 1))
    x = rng.normal(size=column.dim)
    residual = features @ x[:FEATURES] + x[FEATURES] - targets  # (Linear's weight, then its bias)
    assert column.loss_grad(x)[0] == pytest.approx(float(residual @ residual), rel=TOL)
    # A signed loss whose first two samples' losses cancel (+3 and -3) is a sum all the same (a review:
    # float32 noise of 2e-7 against a sum of 0 was refused in 4 seeds of 50).
    for seed in range(50):
        torch.manual_seed(seed)
        linear, inputs = nn.Linear(50, 1), rng.normal(size=(4, 50)).astype(np.float32)
        with torch.no_grad():
            out = linear(torch.from_numpy(inputs)).squeeze(-1).numpy()
        signed = np.array([out[0] - 3.0, out[1] + 3.0, 0.0, 0.0], dtype=np.float32)
        TorchObjective(linear, lambda o, t: o.squeeze(-1) - t, inputs, signed)
    data = _data()
    with pytest.raises(ValueError, match="must sum over the batch, not average"):
        TorchObjective(_network(), torch.nn.functional.cross_entropy, *data)  # (its default: the mean)


def test_read_only_and_float32_vectors_are_accepted() -> None:
    objective = _objective()
    x = _point(objective)
    expected = objective.loss_grad(x)[1]
    frozen = x.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(objective.loss_grad(frozen)[1], expected)
    np.testing.assert_array_equal(objective.loss_grad(x.astype(np.float32))[1], expected)


# -- the example and the benchmark ---------------------------------------------------------------


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("torch_mnist", ROOT / "examples" / "torch_mnist.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("torch_mnist", module)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_times_the_example_network(capsys: pytest.CaptureFixture[str]) -> None:
    from aiodq.lab import bench_torch  # noqa: PLC0415

    example = _example()
    shapes = [tuple(p.shape) for p in example.network().parameters()]
    assert shapes == [tuple(p.shape) for p in bench_torch.network().parameters()]
    rng = np.random.default_rng(0)
    objective = example.objective(rng.random((6, 784)), rng.integers(0, 10, 6))
    assert check_objective(objective).name == example.MODEL
    assert objective.dim == 20_522
    assert bench_torch.main(["--batch", "4", "--repeats", "3", "--samples", "8"]) == 0
    assert "overhead" in capsys.readouterr().out


def test_the_data_are_copied_not_shared() -> None:
    features, labels = _data()
    features32 = features.astype(np.float32)
    objective = TorchObjective(_network(), nn.CrossEntropyLoss(), features32, labels)
    x = _point(objective)
    before = objective.loss_grad(x)
    features32[:] = 0.0
    labels[:] = 0
    np.testing.assert_array_equal(objective.loss_grad(x)[1], before[1])
    reversed_view = _data()[0][::-1]  # negative strides
    TorchObjective(_network(), nn.CrossEntropyLoss(), reversed_view, _data()[1])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_the_masters_start_takes_a_torch_objective_of_every_precision(dtype: str) -> None:
    """starting_point's check that loss_grad sums over rows leaves room for float16's rounding (a review:
    every float16 objective was refused as 'not a sum over the rows', 20 seeds of 20)."""
    from aiodq.protocol.start import starting_point  # noqa: PLC0415

    for seed in range(5):
        features, labels = _data(seed)
        network = _network(seed, dtype=getattr(torch, dtype))
        objective = TorchObjective(network, nn.CrossEntropyLoss(), features, labels, name="mine")
        assert starting_point(TrainConfig(model="mine"), objective).shape == (objective.dim,)


def test_a_half_precision_module_s_blocks_are_summed_beyond_its_range() -> None:
    """A review: a float16 module's gradient over 50,000 rows was inf where the sum was 73,070 (float16
    ends at 65,504).  Here f_i(w) = (8 w)^2 at w = 1: 128 per row, 12,800 per block of 100 rows (exact in
    float16), 256,000 over 2,000 rows: the float64 sum of the blocks, exactly."""
    module = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Flatten(0)).to(torch.float16)  # outputs (B,)
    with torch.no_grad():
        module[0].weight.fill_(1.0)
    features, labels = np.full((2000, 1), 8.0), np.zeros(2000)
    objective = TorchObjective(module, nn.MSELoss(reduction="sum"), features, labels, chunk_size=100)
    loss, gradient = objective.loss_grad(np.ones(1))
    assert loss == 64.0 * 2000
    assert gradient.dtype == np.float64 and gradient.tolist() == [128.0 * 2000]
    _, few = objective.loss_grad(np.ones(1), np.arange(3))
    assert few.tolist() == [384.0]
    # One chunk's own sum beyond float16 (1,024 rows: 131,072): said, with what to do (a review: inf).
    whole = TorchObjective(module, nn.MSELoss(reduction="sum"), features, labels)
    with pytest.raises(
        ValueError, match=r"chunk of up to 1024 samples overflowed float16's range .*smaller chunk_size"
    ):
        whole.loss_grad(np.ones(1))


def test_the_fingerprint_holds_the_losss_class_weights() -> None:
    """A torch user's audit: CrossEntropyLoss(weight=...) with other weights in each process (drawn from
    each one's own labels) trained a different objective in every worker, and the run ended ok: the loss's
    buffers were not in the fingerprint."""
    features, labels = _data()

    def built(weight: Any) -> TorchObjective:
        loss = nn.CrossEntropyLoss(weight=None if weight is None else torch.tensor(weight))
        return TorchObjective(_network(0), loss, features, labels)

    plain, even, skewed = built(None), built([1.0, 1.0, 1.0]), built([1.0, 5.0, 20.0])
    assert even.fingerprint() == built([1.0, 1.0, 1.0]).fingerprint()
    assert len({plain.fingerprint(), even.fingerprint(), skewed.fingerprint()}) == 3


def test_one_probability_per_sample_is_positive_above_one_half() -> None:
    """A torch user's audit: with BCELoss (probabilities, always above 0) every sample counted positive,
    and the accuracy was the share of positive labels (0.307 against 0.992).  Labels here are the sign of
    the first feature, and the network's score is 10 x_0: every sample is classified right, whether the
    output is a probability (sigmoid, BCELoss), a logit (BCEWithLogitsLoss) or a regression of 0/1 or
    -1/+1 labels (MSELoss)."""
    features = _data()[0]
    positive = features[:, 0] > 0
    assert 0 < positive.sum() < SAMPLES

    def accuracy(head: list[Any], loss: Any, labels: np.ndarray, **given: Any) -> int:
        linear = nn.Linear(FEATURES, 1)
        with torch.no_grad():
            linear.weight.zero_()
            linear.weight[0, 0] = 10.0
            linear.bias.zero_()
        net = nn.Sequential(linear, *head, nn.Flatten(0))
        objective = TorchObjective(net, loss, features, labels, **given)
        assert objective.measures_accuracy
        return objective.correct(objective.read_parameters())

    zero_one = positive.astype(np.float32)
    assert accuracy([nn.Sigmoid()], nn.BCELoss(), zero_one) == SAMPLES
    assert accuracy([], nn.BCEWithLogitsLoss(), zero_one) == SAMPLES
    assert accuracy([nn.Sigmoid()], nn.MSELoss(), zero_one) == SAMPLES
    assert accuracy([], nn.MSELoss(), np.where(positive, 1.0, -1.0)) == SAMPLES
    # A shard of +1 labels alone cannot tell -1/+1 from 0/1 (a review): the threshold is given.  Scores
    # x_0 on the positive samples only, some of them below 0.5.
    ones = np.ones(int(positive.sum()))
    scores = features[positive, 0]
    assert (scores < 0.5).any()

    def shard(**given: Any) -> int:
        linear = nn.Linear(FEATURES, 1)
        with torch.no_grad():
            linear.weight.zero_()
            linear.weight[0, 0] = 1.0
            linear.bias.zero_()
        objective = TorchObjective(
            nn.Sequential(linear, nn.Flatten(0)), nn.MSELoss(), features[positive], ones, **given
        )
        return objective.correct(objective.read_parameters())

    assert shard() == int((scores > 0.5).sum()) and shard(threshold=0.0) == len(ones)


def test_integer_features_a_half_precision_module_would_round_are_refused() -> None:
    """A torch user's audit: a float16 embedding got token id 4,097 as 4,096 (features reach the module
    in the parameters' dtype; float16 holds the integers exactly only up to 2**11 = 2,048)."""

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5000, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x: Any) -> Any:
            return self.out(self.embed(x.long()).sum(dim=1))

    labels = np.array([0, 1] * 5)
    torch.manual_seed(0)
    ids = np.arange(30).reshape(10, 3) + 2018  # up to 2,047: exact
    TorchObjective(Tokens().half(), nn.CrossEntropyLoss(), ids, labels)
    with pytest.raises(
        ValueError, match=r"^integer features up to 4,097 reach the module as torch.float16, "
    ):
        TorchObjective(Tokens().half(), nn.CrossEntropyLoss(), ids + 2050, labels)
    TorchObjective(Tokens(), nn.CrossEntropyLoss(), ids + 2050, labels)  # float32: exact up to 2**24
    # Checked on the integer tensor, whatever it came from (a review: a list slipped through; bool features,
    # a scipy matrix of integers, reversed ids and read-only arrays were refused or warned of by the check).
    with pytest.raises(ValueError, match=r"^integer features up to 4,097 "):
        TorchObjective(Tokens().half(), nn.CrossEntropyLoss(), (ids + 2050).tolist(), labels)
    with pytest.raises(ValueError, match=r"^integer features up to 4,097 "):
        TorchObjective(Tokens().half(), nn.CrossEntropyLoss(), torch.from_numpy(ids + 2050), labels)
    scipy_sparse = pytest.importorskip("scipy.sparse", reason="a sparse matrix needs scipy")
    TorchObjective(Tokens().half(), nn.CrossEntropyLoss(), scipy_sparse.csr_matrix(ids), labels)
    TorchObjective(Tokens().half(), nn.CrossEntropyLoss(), ids[::-1], labels)
    frozen = ids.copy()
    frozen.flags.writeable = False
    TorchObjective(Tokens().half(), nn.CrossEntropyLoss(), frozen, labels)
    flags = np.random.default_rng(0).random((10, FEATURES)) > 0.5
    TorchObjective(_network(0, torch.float16), nn.CrossEntropyLoss(), flags, labels % CLASSES)


def test_a_module_put_back_into_training_mode_is_refused() -> None:
    """A torch user's audit: after module.train() (say, to estimate batch norm statistics once more) the
    next loss_grad failed as "not a sum over the rows" (dropout's draws), or on batch norm's batch of one."""
    features, labels = _data()
    net = _network(0)
    objective = TorchObjective(net, nn.CrossEntropyLoss(), features, labels)
    x = objective.read_parameters()
    objective.loss_grad(x)
    net.train()
    with pytest.raises(RuntimeError, match=r"^the module is in training mode .*call module.eval\(\)$"):
        objective.loss_grad(x)
    net.eval()
    objective.loss_grad(x)


def test_samples_a_worker_would_fail_on_mid_run_are_refused_as_it_is_built() -> None:
    """A torch user's audit: a label 7 of 3 classes at sample 300, or a NaN feature at row 50, dropped the
    worker that held it at its first snapshot phase (IndexError, NaN), and the run ended ok over the other
    shards.  Such samples are refused when the objective is built, saying where; a loss that fails only in
    backward (HuberLoss on integer labels) and a module whose first outputs are not finite are too."""
    features, labels = _data()
    bad_label = labels.copy()
    bad_label[13] = CLASSES + 4
    with pytest.raises(ValueError, match=r"^labels must be class indices 0\.\.2 for the module's 3 outputs: "
                       r"label 7 at sample 13$"):  # fmt: skip
        TorchObjective(_network(), nn.CrossEntropyLoss(), features, bad_label)
    ignored = labels.copy()
    ignored[13] = -100  # CrossEntropyLoss's ignore_index: let through
    TorchObjective(_network(), nn.CrossEntropyLoss(), features, ignored)
    nan = features.copy()
    nan[11, 2] = np.nan
    with pytest.raises(
        ValueError, match=r"^features hold NaN or infinite values as torch.float32 \(the first at sample 11; "
    ):
        TorchObjective(_network(), nn.CrossEntropyLoss(), nan, labels)
    regression = nn.Sequential(nn.Linear(FEATURES, 1), nn.Flatten(0))
    with pytest.raises(ValueError, match=r"integer labels are class indices: give float labels"):
        TorchObjective(regression, nn.HuberLoss(), features, labels)  # (fails in backward only)
    TorchObjective(regression, nn.HuberLoss(), features, labels.astype(np.float32))
    broken = _network()
    with torch.no_grad():
        broken[2].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"outputs or loss on the first samples are not finite"):
        TorchObjective(broken, nn.CrossEntropyLoss(), features, labels)


def test_weights_loaded_after_the_objective_was_built_are_its_starting_point() -> None:
    """A torch user's audit: ``load_state_dict`` after building the objective left initial() at the
    random initialisation (read_parameters() said the loaded weights): the run started at loss 1.16, not at
    the pretrained 0.008.  x_0 is the module's parameters until the objective first writes an x."""
    features, labels = _data()
    pretrained = _network(7)
    net = _network(0)
    objective = TorchObjective(net, nn.CrossEntropyLoss(), features, labels)
    net.load_state_dict(pretrained.state_dict())
    loaded = np.concatenate([p.detach().numpy().reshape(-1) for p in pretrained.parameters()]).astype(
        np.float64
    )
    rng = np.random.default_rng(0)
    assert np.array_equal(objective.initial(rng), loaded)
    objective.loss_grad(loaded + 1.0)  # the objective writes x: x_0 stays what it was
    assert np.array_equal(objective.initial(rng), loaded)


def test_what_the_first_samples_check_lets_through_and_refuses_besides() -> None:
    """A review of the checks above: a loss with no path to the parameters built and failed in every
    worker's first loss_grad; masked log-probabilities (-inf outputs, a finite loss) were refused though
    they train; uint16 features failed in torch's abs(); float16's overflow was called NaN."""
    features, labels = _data()

    def detached(outputs: Any, targets: Any) -> Any:
        return nn.functional.cross_entropy(outputs, targets, reduction="sum").detach()

    with pytest.raises(ValueError, match=r"^the loss does not depend on the trainable parameters"):
        TorchObjective(_network(), detached, features, labels)

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(FEATURES, CLASSES)
            self.register_buffer("mask", torch.tensor([0.0, 0.0, float("-inf")]))

        def forward(self, x: Any) -> Any:
            return torch.log_softmax(self.linear(x) + self.mask, dim=1)

    masked = TorchObjective(Masked(), nn.NLLLoss(), features, labels % 2)  # (class 2 masked out)
    loss, grad = masked.loss_grad(masked.read_parameters())
    assert np.isfinite(loss) and np.isfinite(grad).all()
    TorchObjective(_network(), nn.CrossEntropyLoss(), (features * 100).astype(np.uint16), labels)
    with pytest.raises(
        ValueError, match=r"as torch.float16 .* values beyond that dtype's range become infinite"
    ):
        TorchObjective(_network(0, torch.float16), nn.CrossEntropyLoss(), features * 1e5, labels)


def test_the_fingerprint_reads_a_partial_loss_by_its_function_and_arguments() -> None:
    """A torch audit: every functools.partial read 'functools.partial', so a worker given
    partial(multi_margin_loss) for the master's partial(cross_entropy) trained without a word; and
    label_smoothing or class weights in the partial were not seen."""
    features, labels = _data()

    def built(loss: Any) -> str:
        torch.manual_seed(0)
        return TorchObjective(_network(), loss, features, labels).fingerprint()

    summed = built(functools.partial(nn.functional.cross_entropy, reduction="sum"))
    assert built(functools.partial(nn.functional.cross_entropy, reduction="sum")) == summed
    weights = torch.tensor([1.0, 2.0, 3.0])
    for other in (
        functools.partial(nn.functional.multi_margin_loss, reduction="sum"),
        functools.partial(nn.functional.cross_entropy, reduction="sum", label_smoothing=0.3),
        functools.partial(nn.functional.cross_entropy, reduction="sum", weight=weights),
    ):
        assert built(other) != summed, other
    weighted = built(functools.partial(nn.functional.cross_entropy, reduction="sum", weight=weights))
    assert (
        built(functools.partial(nn.functional.cross_entropy, reduction="sum", weight=weights * 2)) != weighted
    )
    assert (
        built(functools.partial(nn.functional.cross_entropy, reduction="sum", weight=weights.clone()))
        == weighted
    )

    # Values without a form that reads the same in every process are taken by their type (a review: an
    # object's repr holds its address, and each worker refused the run).
    class Options:
        pass

    def summed(outputs: Any, targets: Any, extra: object = None) -> Any:
        return nn.functional.cross_entropy(outputs, targets, reduction="sum")

    def holding(value: object) -> str:
        return built(functools.partial(summed, extra=value))

    one, other = Options(), Options()  # (both alive: two addresses)
    assert holding(one) == holding(other) != holding(torch.Generator())
    assert holding(frozenset({"b", "a"})) == holding(frozenset({"a", "b"})) != holding(frozenset({"a"}))


def test_writing_a_read_only_x_makes_no_copy_of_it() -> None:
    """A torch audit: the worker's x is read-only, and _write copied it into a new float64 array (8 d bytes,
    0.6-0.8 ms at d = 10^6) before torch's copy_. numpy now casts it into the flat buffer itself; the
    values are x's, rounded to the parameters' float32."""
    import tracemalloc  # noqa: PLC0415

    features, labels = _data()
    objective = TorchObjective(
        nn.Sequential(nn.Linear(FEATURES, 20_000)), nn.CrossEntropyLoss(), features, labels
    )
    x = np.random.default_rng(3).standard_normal(objective.dim)  # 120,000 values: 960,000 bytes
    x.flags.writeable = False
    objective.write_parameters(x)  # (the first write keeps x_0 as initial(): a copy once)
    tracemalloc.start()
    try:
        objective.write_parameters(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < objective.dim, (peak, objective.dim)  # (a float64 copy would be 8 d bytes)
    np.testing.assert_array_equal(objective.read_parameters(), x.astype(np.float32))


def test_correct_after_a_loss_over_every_row_at_the_same_x_takes_no_second_pass() -> None:
    """A torch audit: the snapshot phase's correct(x) ran a second forward pass over the shard (35 % of the
    phase for a CNN). loss_grad over every row counts the hits from its own outputs; correct at the same x
    gives them, at another x it counts again; in training mode it refuses, as loss_grad does (it counted
    a dropout draw)."""
    objective = _objective()
    passes: list[int] = []
    objective.module.register_forward_hook(lambda module, inputs, output: passes.append(len(inputs[0])))
    x, other = _point(objective, 1), _point(objective, 2)
    fresh = _objective()
    expected = fresh.correct(x), fresh.correct(other)  # (counted by a forward pass of their own)
    objective.loss_grad(x)
    passes.clear()
    assert objective.correct(x.copy()) == expected[0] and passes == []  # the same x: no pass
    assert objective.correct(other) == expected[1] and sum(passes) == objective.samples
    objective.loss_grad(x, np.array([0, 1]))  # a mini-batch: nothing counted
    passes.clear()
    assert objective.correct(x) == expected[0] and sum(passes) == objective.samples
    objective.module.train()
    with pytest.raises(RuntimeError, match=r"^the module is in training mode"):
        objective.correct(x)


def test_a_module_that_fails_on_one_sample_or_lives_on_the_meta_device_is_said_as_such() -> None:
    """A torch audit: a batch norm without running statistics failed on one sample with torch's words alone
    ("Expected more than 1 value per channel"), and parameters on the meta device failed in Tensor.item()."""
    features, labels = _data()
    batch_norm = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.BatchNorm1d(HIDDEN, track_running_stats=False))
    with pytest.raises(
        ValueError, match=r"^Sequential fails on one sample alone, and f_i must be sample i's own: "
    ):
        TorchObjective(
            nn.Sequential(*batch_norm, nn.Linear(HIDDEN, CLASSES)), nn.CrossEntropyLoss(), features, labels
        )
    with pytest.raises(ValueError, match=r"^the trainable parameters are on the meta device, without values"):
        TorchObjective(nn.Linear(FEATURES, CLASSES, device="meta"), nn.CrossEntropyLoss(), features, labels)
