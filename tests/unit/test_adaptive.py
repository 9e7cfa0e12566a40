"""The adaptive choice between Rice-coded and fixed-width codes (aiodq.protocol.adaptive).

The chooser is driven by a fake clock whose pace per applied update depends on the
choice in force, so every expected window count below follows from the rules in the
module docstring, worked out by hand in the comments.  The cluster test runs the real
coordinator and worker sessions over their wire bytes with such a clock, and reads the
encodings off the bytes themselves.
"""

from __future__ import annotations

import contextlib
import io
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from aiodq.codec.events import (
    ConfigMessage,
    Gradient,
    Hello,
    ModelMessage,
    Snapshot,
    SnapshotGradient,
    Welcome,
)
from aiodq.codec.frames import FrameReader
from aiodq.codec.lowp import quantize_model
from aiodq.codec.messages import DecodeContext, decode_body
from aiodq.codec.registry import ALL_ENCODINGS, Encoding
from aiodq.codec.vectors import DenseQuantized, full_precision
from aiodq.config import Limits
from aiodq.data import load_bundled_a9a
from aiodq.protocol.adaptive import CodingChooser
from aiodq.protocol.algorithms import TrainConfig
from aiodq.protocol.connection import MasterConnection
from aiodq.protocol.members import Member
from aiodq.protocol.session import WorkerSession
from aiodq.protocol.simulate import build_cluster

# Paces that are exact binary fractions, so that sums of them compare exactly.
SLOW, FAST = 1.0, 0.5


def drive(chooser: CodingChooser, pace: Callable[[bool, int], float], windows: int) -> list[bool]:
    """Apply updates until ``windows`` windows are measured; return the choice of each window.

    ``pace(rice, window_index)`` is the time from one applied update to the next under the
    choice in force.
    """
    now, choices = 0.0, []
    while sum(chooser.windows.values()) < windows:
        before = sum(chooser.windows.values())
        rice = chooser.rice
        chooser.applied(now)
        if sum(chooser.windows.values()) > before:
            choices.append(rice)
        now += pace(chooser.rice, len(choices))
    return choices


def test_fixed_width_wins_where_it_is_faster_and_the_probes_back_off() -> None:
    chooser = CodingChooser(window=64, explore_every=8, max_explore_every=64, history=3)
    choices = drive(chooser, lambda rice, _: SLOW if rice else FAST, 40)
    # Window 1 is Rice (the start), window 2 the first try of fixed width, which wins.  After
    # eight windows of fixed width (2-9) a probe of Rice (10) confirms fixed width, so the wait
    # doubles to 16 (windows 11-26), probe 27, then 32 windows (28-59).
    rice_windows = [i + 1 for i, rice in enumerate(choices) if rice]
    assert rice_windows == [1, 10, 27]
    assert chooser.rice is False
    assert chooser.windows == {True: 3, False: 37}
    assert chooser.switches == 1 + 2 + 2
    summary = chooser.summary()
    assert summary["ms_per_update_rice"] == SLOW * 1e3 and summary["ms_per_update_fixed"] == FAST * 1e3


def test_rice_stays_where_it_is_faster() -> None:
    chooser = CodingChooser()
    choices = drive(chooser, lambda rice, _: FAST if rice else SLOW, 40)
    # Fixed width is tried in window 2 and loses; Rice is chosen again, and after eight of its
    # windows (3-10) fixed width is probed (11) and loses: the wait doubles to 16 (12-27),
    # probe 28, then 32 windows (29-60).
    assert [i + 1 for i, rice in enumerate(choices) if not rice] == [2, 11, 28]
    assert chooser.rice is True


def test_a_tie_keeps_rice_coding() -> None:
    chooser = CodingChooser()
    drive(chooser, lambda rice, _: FAST, 12)
    assert chooser.rice is True


def test_the_choice_follows_a_faster_link_at_the_next_probe() -> None:
    chooser = CodingChooser(window=16, explore_every=8, max_explore_every=64, history=3)

    def pace(rice: bool, window: int) -> float:
        if window < 30:  # windows 1-30: a slow link, where Rice pays
            return FAST if rice else SLOW
        return SLOW if rice else FAST  # from window 31: a fast link

    choices = drive(chooser, pace, 75)
    fixed_windows = [i + 1 for i, rice in enumerate(choices) if not rice]
    # Before the change, as in test_rice_stays_where_it_is_faster: fixed width tried in 2 and
    # probed in 11 and 28, then a wait of 32 (windows 29-60).  From 31 on Rice measures SLOW,
    # which ties with fixed width's last measurement (SLOW, in 28): Rice is kept until the
    # probe in 61 measures fixed width afresh (FAST) and wins.  The wait is back to 8: fixed
    # width runs 61-69, Rice is probed in 70 (SLOW: fixed width confirmed), then fixed width.
    assert fixed_windows == [2, 11, 28, *range(61, 70), *range(71, 76)]
    assert chooser.rice is False


def test_the_choice_follows_a_slower_current_choice_at_once() -> None:
    chooser = CodingChooser(window=16, explore_every=8, max_explore_every=64, history=3)

    def pace(rice: bool, window: int) -> float:
        if window < 30:
            return 0.5 if rice else 0.75
        return 1.0 if rice else 0.75  # the cores get busy: Rice slows down, fixed width does not

    choices = drive(chooser, pace, 40)
    # Fixed width was last measured at 0.75 (window 28).  Rice measures 1.0 from window 31;
    # after window 32 two of its last three windows say 1.0, its median passes 0.75, and the
    # choice changes without a probe: fixed width from window 33 (and Rice is probed only
    # after eight of its windows, in 41).
    assert [i + 1 for i, rice in enumerate(choices) if not rice] == [2, 11, 28, *range(33, 41)]


def test_updates_coded_the_old_way_after_a_switch_are_not_measured() -> None:
    chooser = CodingChooser(window=4)
    for now in (0.0, 2.0, 4.0, 6.0, 8.0):  # window 1, Rice: 2 s per update
        chooser.applied(now, rice=True)
    assert chooser.rice is False  # the first try of fixed width
    # Three gradients answering Rice-coded models were in flight: slow, and not fixed width's.
    for now in (18.0, 28.0, 38.0):
        chooser.applied(now, rice=True)
    for now in (39.0, 40.0, 41.0, 42.0, 43.0):
        chooser.applied(now, rice=False)
    assert list(chooser.paces[False]) == [1.0]
    assert list(chooser.paces[True]) == [2.0]


def test_without_word_of_the_coding_the_window_after_a_switch_starts_after_its_first_update() -> None:
    chooser = CodingChooser(window=4)
    for now in (0.0, 2.0, 4.0, 6.0, 8.0):  # window 1, Rice: 2 s per update; then fixed width
        chooser.applied(now)
    # The update after the switch still took the old pace (its messages were on their way);
    # the window starts from it.
    for now in (10.0, 11.0, 12.0, 13.0, 14.0):
        chooser.applied(now)
    assert list(chooser.paces[False]) == [1.0]


def test_a_clock_that_goes_back_or_stands_still_measures_nothing() -> None:
    chooser = CodingChooser(window=4)
    for now in (0.0, 1.0, 2.0, 1.5, 2.5, 3.5, 4.5, 5.5):  # back at 1.5: the window restarts there
        chooser.applied(now)
    assert list(chooser.paces[True]) == [1.0]
    still = CodingChooser(window=4)
    for _ in range(20):
        still.applied(7.0)
    assert still.windows == {True: 0, False: 0} and still.rice is True


def test_the_summary_gives_the_preferred_choice_during_a_probe() -> None:
    chooser = CodingChooser(window=4, explore_every=2)
    now = 0.0
    while not (chooser.rice and chooser.windows[False]):  # until Rice is probed after fixed width won
        chooser.applied(now)
        now += SLOW if chooser.rice else FAST
    summary = chooser.summary()
    assert summary["probing"] is True and chooser.rice is True
    assert summary["rice"] is False and chooser.preferred is False
    # The probed choice keeps its last measurement until the probe's window replaces it.
    assert summary["ms_per_update_rice"] == SLOW * 1e3


def test_a_pause_that_is_not_the_codings_doing_is_not_measured() -> None:
    chooser = CodingChooser(window=4)
    for now in (0.0, 1.0, 2.0):
        chooser.applied(now)
    chooser.interrupt()  # a snapshot phase of 100 s
    for now in (102.0, 103.0, 104.0, 105.0, 106.0):
        chooser.applied(now)
    assert list(chooser.paces[True]) == [1.0]
    assert chooser.interruptions == 1
    # Without the interrupt, the window would have measured the pause.
    other = CodingChooser(window=4)
    for now in (0.0, 1.0, 2.0, 102.0, 103.0):
        other.applied(now)
    assert list(other.paces[True]) == [103.0 / 4]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 1},
        {"window": 2.5},
        {"explore_every": 0},
        {"explore_every": 8, "max_explore_every": 4},
        {"history": 0},
        {"history": True},
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be an integer of at least"):
        CodingChooser(**kwargs)  # type: ignore[arg-type]


def test_adaptive_coding_needs_entropy_coding() -> None:
    with pytest.raises(ValueError, match="needs entropy coding on, the default"):
        TrainConfig(adaptive_coding=True, entropy_coding=False)


def test_the_command_line_names_its_options_in_the_refusal() -> None:
    """A docs review read '--adaptive-coding (--adaptive-coding) chooses ... it needs --entropy-coding', an
    option that does not exist."""
    from aiodq.cli import main  # noqa: PLC0415

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        status = main(["run", "--adaptive-coding", "--no-entropy-coding", "--epochs", "1"])
    said = errors.getvalue()
    assert status == 2
    assert "--adaptive-coding chooses when to Rice-code: it needs entropy coding on, the default" in said
    assert "--entropy-coding " not in said and said.count("--adaptive-coding") == 1, said


#: The encodings of quantized models and gradients whose coding the costs tell apart.
_CODED = (Encoding.DENSE, Encoding.DENSE_RICE, Encoding.SPARSE_RICE, Encoding.SPARSE_BITMAP)


def run_with_costs(rice_cost: float, fixed_cost: float, *, adaptive: bool = True) -> tuple[dict, list]:
    """A 4-worker AsyLPG cluster on the bundled a9a; each delivered MODEL or GRADIENT costs
    ``rice_cost`` seconds if Rice-coded, else ``fixed_cost``.

    Returns the coordinator's summary and, per worker, the (model encoding, gradient encoding)
    pairs read off the wire: each GRADIENT with the MODEL it answers.
    """
    config = TrainConfig(algorithm="asylpg", epochs=3, bits=4, adaptive_coding=adaptive, seed=1)
    coordinator, sessions = build_cluster(config, load_bundled_a9a(), 4)
    ids = [coordinator.connect(0.0) for _ in sessions]
    up: list[deque[bytes]] = [deque() for _ in sessions]
    down: list[deque[bytes]] = [deque() for _ in sessions]
    readers = [(FrameReader(Limits()), FrameReader(Limits())) for _ in sessions]
    context = DecodeContext(dim=123)
    last_model: list[Encoding | None] = [None] * len(sessions)
    pairs: list[tuple[Encoding, Encoding]] = []
    now, turn = 0.0, 0

    def cost(index: int, data: bytes, downward: bool) -> float:
        """Read the frames off the wire; the time their vectors take."""
        reader = readers[index][downward]
        reader.feed(data)
        seconds = 0.0
        while (frame := reader.next_frame()) is not None:
            decoded = decode_body(frame, context)
            if isinstance(decoded.event, ModelMessage | Gradient) and decoded.encoding in _CODED:
                # A gradient's sparse form is sent only with Rice coding on (TrainConfig.sparse_gradients).
                seconds += fixed_cost if decoded.encoding is Encoding.DENSE else rice_cost
            if isinstance(decoded.event, ModelMessage):
                last_model[index] = decoded.encoding
            elif isinstance(decoded.event, Gradient) and decoded.encoding is not None:
                pairs.append((last_model[index], decoded.encoding))
        return seconds

    while not coordinator.done:
        for index, session in enumerate(sessions):
            if data := session.data_to_send():
                up[index].append(data)
        for worker_id, data in coordinator.data_to_send().items():
            down[ids.index(worker_id)].append(data)
        channels = [(i, d) for i in range(len(sessions)) for d, q in ((False, up[i]), (True, down[i])) if q]
        assert channels, "the cluster stalled"
        index, downward = channels[turn % len(channels)]
        turn += 1
        data = (down if downward else up)[index].popleft()
        now += cost(index, data, downward)
        if downward:
            sessions[index].receive_data(data, now)
        else:
            coordinator.receive_data(ids[index], data, now)
    return coordinator.summary(), pairs


def test_a_cluster_settles_on_the_faster_coding_and_workers_answer_in_kind() -> None:
    summary, pairs = run_with_costs(rice_cost=0.002, fixed_cost=0.001)
    chosen = summary["adaptive_coding"]
    assert chosen["rice"] is False
    # One pause not measured per snapshot phase: one per epoch, and the final one (3 + 1).
    assert chosen["interruptions"] == 4
    # 19 windows at fixed width against 2 of Rice coding here (39 against 3 over 6 epochs).
    assert chosen["windows_fixed"] > 3 * chosen["windows_rice"]
    # Every applied update costs one MODEL and one GRADIENT, so a window of updates coded one way
    # measures exactly twice that coding's cost per update, in milliseconds; one that let in the
    # gradients coded the old way after a switch would not.
    assert chosen["ms_per_update_fixed"] == 2.0 and chosen["ms_per_update_rice"] == 4.0
    # A worker answers a fixed-width MODEL at fixed width, and a Rice-coded one Rice-coded, or in
    # the sparse form where that is smaller (both happen on a9a's codes).
    assert pairs and all(model is gradient for model, gradient in pairs if model is Encoding.DENSE)
    rice_answers = [gradient for model, gradient in pairs if model is Encoding.DENSE_RICE]
    assert rice_answers and Encoding.DENSE_RICE in rice_answers
    assert set(rice_answers) <= {Encoding.DENSE_RICE, Encoding.SPARSE_RICE, Encoding.SPARSE_BITMAP}
    assert {Encoding.DENSE, Encoding.DENSE_RICE} <= {model for model, _ in pairs}

    summary, _ = run_with_costs(rice_cost=0.001, fixed_cost=0.002)
    assert summary["adaptive_coding"]["rice"] is True


def test_without_adaptive_coding_nothing_changes_with_the_costs() -> None:
    summary, pairs = run_with_costs(rice_cost=0.002, fixed_cost=0.001, adaptive=False)
    assert "adaptive_coding" not in summary
    # Rice-coded wherever smaller, as before: no worker falls back to fixed width because of
    # the model's encoding.
    assert Encoding.DENSE_RICE in {gradient for _, gradient in pairs}


@pytest.mark.parametrize(
    "switches",
    [
        {"adaptive_coding": True},
        {"entropy_coding": False},
        {},
        {"aligned_codes": True},
        {"adaptive_coding": True, "aligned_codes": True},
        {"entropy_coding": False, "aligned_codes": True},
        {"sparse_gradients": False},
        {"adaptive_coding": True, "aligned_codes": True, "sparse_gradients": False},
    ],
)
def test_the_network_lab_passes_the_coding_switches_to_aiodq_master(switches: dict[str, bool]) -> None:
    """The lab starts ``aiodq master`` with options that rebuild the config, these switches included."""
    from aiodq.cli import _parser  # noqa: PLC0415 - the command line's extra
    from aiodq.cli.options import train_config  # noqa: PLC0415
    from aiodq.lab.netcluster import _training_flags  # noqa: PLC0415 - the lab extra

    config = TrainConfig(algorithm="asylpg", bits=4, **switches)
    flags = _training_flags(config)
    args = _parser().parse_args(["master", "--listen", "127.0.0.1:0", "--workers", "4", *flags])
    assert train_config(args) == config


@pytest.mark.filterwarnings("ignore::aiodq.UnusedOptionWarning")  # (changed_config sets every field)
def test_the_network_lab_passes_every_training_field_to_aiodq_master(changed_config: TrainConfig) -> None:
    """Every TrainConfig field away from its default comes back from ``aiodq master``'s options.

    (Read with ``from_args``: ``train_config`` also refuses combinations no run takes, such as the
    fixture's ``--bias`` with ``--model mlp``; tests/integration/test_cli.py covers those.)
    """
    from aiodq.cli import _parser  # noqa: PLC0415 - the command line's extra
    from aiodq.cli.options import from_args  # noqa: PLC0415
    from aiodq.lab.netcluster import _training_flags  # noqa: PLC0415 - the lab extra

    config = changed_config
    for each in (config, replace(config, adaptive_coding=False, entropy_coding=False)):
        args = _parser().parse_args(
            ["master", "--listen", "127.0.0.1:0", "--workers", "4", *_training_flags(each)]
        )
        assert from_args(TrainConfig, args) == each


def test_algorithms_without_quantized_models_have_nothing_to_choose() -> None:
    from aiodq.protocol.simulate import simulate  # noqa: PLC0415

    for algorithm in ("asyfpg", "qsvrg"):
        config = TrainConfig(algorithm=algorithm, epochs=1, updates_per_epoch=200, adaptive_coding=True)
        assert "adaptive_coding" not in simulate(config, load_bundled_a9a(), 2).summary()
    config = TrainConfig(algorithm="model-only", epochs=1, updates_per_epoch=200, adaptive_coding=True)
    assert simulate(config, load_bundled_a9a(), 2).summary()["adaptive_coding"]["windows_rice"] >= 1


def worker_answers(
    adaptive: bool, model_codings: list[bool], *, sparse: bool = False, older_master: bool = False
) -> list[tuple[Encoding, Encoding]]:
    """A worker session driven by a hand-held master connection: for each MODEL sent Rice-coded
    (True) or at fixed width (False), the encodings of that MODEL and of the GRADIENT answering it,
    as the master's connection decoded them.  ``sparse``: the run's ``sparse_gradients``;
    ``older_master``: the CONFIG leaves that key out, as a master before it did."""
    data = load_bundled_a9a()
    part = data.rows(np.arange(512))
    config = TrainConfig(algorithm="asylpg", bits=4, adaptive_coding=adaptive, sparse_gradients=sparse)
    params = config.to_params()
    if older_master:
        del params["sparse_gradients"]
    session = WorkerSession(part.features, part.labels, name="w", classes=2)
    master = MasterConnection()
    exchange = lambda: session.receive_data(master.data_to_send(), 0.0)  # noqa: E731
    master.receive_data(session.data_to_send(), 0.0)
    assert isinstance(master.next_event(), Hello)
    master.send(Welcome(version=1, worker_id=0, encodings=ALL_ENCODINGS), 0.0)
    master.send(ConfigMessage(dim=123, algorithm="asylpg", params=params), 0.0)
    snapshot = np.zeros(123)
    master.send(Snapshot(epoch=0, vector=full_precision(snapshot)), 0.0)
    exchange()
    master.receive_data(session.data_to_send(), 0.0)
    assert isinstance(master.next_event(), SnapshotGradient)
    rng = np.random.default_rng(5)
    pairs = []
    for version, rice in enumerate(model_codings):
        # A model near the snapshot: mostly small codes, which Rice-code smaller than fixed width.
        payload = quantize_model(rng.standard_normal(123) * 1e-2, snapshot, 0.5, rng)
        assert isinstance(payload.vector, DenseQuantized)
        master.dense_rice = rice
        master.send(
            ModelMessage(epoch=0, version=version, vector=payload.vector, relative=payload.relative), 0.0
        )
        exchange()
        sent = session.connection.last_received_encoding
        master.receive_data(session.data_to_send(), 0.0)
        assert isinstance(master.next_event(), Gradient)
        assert sent is not None and master.last_received_encoding is not None
        pairs.append((sent, master.last_received_encoding))
    return pairs


def test_a_worker_of_an_adaptive_run_answers_in_the_coding_of_the_model() -> None:
    codings = [True, False, False, True, False, True]
    pairs = worker_answers(True, codings)
    models = [Encoding.DENSE_RICE if rice else Encoding.DENSE for rice in codings]
    assert [model for model, _ in pairs] == models
    assert [gradient for _, gradient in pairs] == models


def test_a_worker_of_another_run_rice_codes_whatever_the_model_came_in() -> None:
    pairs = worker_answers(False, [True, False, False, True])
    assert {gradient for _, gradient in pairs} == {Encoding.DENSE_RICE}
    assert Encoding.DENSE in {model for model, _ in pairs}


_SPARSE_FORMS = {Encoding.SPARSE_RICE, Encoding.SPARSE_BITMAP}


def test_sparse_gradients_go_sparse_only_while_rice_coding_and_only_to_a_master_that_asked() -> None:
    """TrainConfig.sparse_gradients: a Rice-coded answer may take the sparse form, a fixed-width one
    never; a CONFIG without the key (an earlier master) gets dense codes only."""
    codings = [True, False] * 8
    pairs = worker_answers(True, codings, sparse=True)
    answers = [gradient for _, gradient in pairs]
    assert all(a is Encoding.DENSE for a, rice in zip(answers, codings, strict=True) if not rice)
    rice_answers = {a for a, rice in zip(answers, codings, strict=True) if rice}
    assert rice_answers & _SPARSE_FORMS and rice_answers <= _SPARSE_FORMS | {Encoding.DENSE_RICE}
    older = worker_answers(True, codings, sparse=True, older_master=True)
    assert not {gradient for _, gradient in older} & _SPARSE_FORMS


@pytest.mark.parametrize(
    "overrides", [{"adaptive_coding": True}, {"entropy_coding": False}, {"aligned_codes": True}]
)
def test_the_coding_experiment_sets_each_variants_coding_whatever_the_command_says(
    overrides: dict[str, bool], tmp_path: Path
) -> None:
    """``aiodq experiment coding`` with a coding switch: the same six variants."""
    from aiodq.lab.coding import VARIANTS  # noqa: PLC0415 - the lab extra
    from aiodq.lab.runs import Context  # noqa: PLC0415

    context = Context(data=None, out=tmp_path, quick=True, overrides=overrides, log=lambda _: None)
    (spec,) = context.specs()
    dataset, _, _ = context.load(spec)
    codings = {
        name: (config.algorithm, config.entropy_coding, config.adaptive_coding, config.aligned_codes)
        for name, _, fields in VARIANTS
        for config in [context.config(spec, dataset, **fields)]
    }
    assert codings == {
        "asyfpg": ("asyfpg", True, False, False),
        "rice": ("asylpg", True, False, False),
        "fixed": ("asylpg", False, False, False),
        "aligned": ("asylpg", False, False, True),
        "adaptive": ("asylpg", True, True, False),
        "adaptive-aligned": ("asylpg", True, True, True),
    }


def test_a_change_in_the_number_of_workers_starts_the_measurement_afresh() -> None:
    chooser = CodingChooser(window=4)
    now = 0.0
    for _ in range(3 * 5):  # windows 1-3 with 4 workers: Rice (2 s), the try of fixed width (1 s), fixed
        chooser.applied(now, workers=4)
        now += SLOW if chooser.rice else FAST
    assert chooser.rice is False and chooser.windows == {True: 1, False: 2}
    chooser.applied(now, workers=3)  # one worker gone: the paces measured with four no longer hold
    assert chooser.paces == {True: deque(), False: deque()} and chooser.forgotten == 1
    assert chooser.rice is False  # the current choice stays
    for _ in range(5):  # its next window, with three workers
        now += FAST
        chooser.applied(now, workers=3)
    assert list(chooser.paces[False]) == [FAST] and chooser.rice is True  # then Rice is tried again
    chooser.applied(now + 1.0, workers=3)
    assert chooser.forgotten == 1  # an unchanged count forgets nothing


def test_a_member_answers_in_the_coding_of_the_last_dense_model_it_got() -> None:
    member = Member(MasterConnection())
    assert member.sent_rice is True
    for encoding, expected in [
        (Encoding.DENSE, False),
        (Encoding.RAW_F32, False),  # a raw model: the worker keeps its coding
        (Encoding.EQUALS_SNAPSHOT, False),
        (Encoding.DENSE_RICE, True),
        (None, True),
        (Encoding.ZERO, True),
        (Encoding.DENSE, False),
    ]:
        member.model_sent(encoding)
        assert member.sent_rice is expected
