"""Fuzzing the receive path at scale (style.md: "the receive path raises nothing else, ever").

Builds on tests/property/test_codec_properties.py with tests.fuzz: a corpus of
valid frames of every message type and vector encoding, structure-aware
mutation operators, and connections driven into every state of a recorded
session (wire-format.md 8).  About 4 * 10**4 inputs run here, all derandomised:
the campaign with fixed seeds, hypothesis with ``derandomize=True`` steering
the same mutation operators through a controlled ``random.Random``.

Invariant: the codec raises only CodecError and a connection only
RemoteProtocolError; then the connection is CLOSED with a CLOSE queued
(8.4-3); the codec's result does not depend on the split (3-4); an accepted
binary frame re-encodes to itself (5-2); memory stays under a bound derived
from the limits alone (10-1).
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.fuzz.campaign as fuzz
from aiodq.codec.cursor import uvarint
from aiodq.codec.frames import FrameReader, encode_frame
from aiodq.codec.messages import DecodeContext, decode_message
from aiodq.codec.registry import Encoding, MessageType
from aiodq.codec.vectors import ZeroVector
from aiodq.config import Limits
from aiodq.errors import CodecError, ErrorCode, RemoteProtocolError
from aiodq.protocol.connection import MasterConnection, WorkerConnection
from aiodq.protocol.coordinator import Coordinator
from tests.fuzz.campaign import (
    DEFAULT_DIM,
    TIGHT_LIMITS,
    FuzzOptions,
    build_setup,
    generate_input,
    memory_bound,
    minimize,
    run_campaign,
    run_case,
    run_codec,
    run_connection,
    run_coordinator,
)

SETUP = build_setup(seed=0)
CONNECTION_TARGETS = sorted(name for name in SETUP.targets if name.split(":")[0] in ("master", "worker"))
COORDINATOR_TARGETS = sorted(name for name in SETUP.targets if name.startswith("coordinator:"))
ALL_TARGETS = sorted(SETUP.targets)
SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _assert_clean(report: dict[str, object]) -> None:
    """No crash, no oracle violation, no memory overrun; crashes are shown with their reproducers."""
    assert report["crash_count"] == 0, json.dumps(report["crashes"], indent=1)[:4000]
    assert report["violation_count"] == 0, json.dumps(report["violations"], indent=1)[:4000]
    memory = report["memory"]
    assert isinstance(memory, dict)
    assert not memory["violations"], memory["violations"][:3]


# -- the campaign, derandomised ---------------------------------------------------


def test_campaign_raises_only_typed_errors() -> None:
    """WF-9, style.md: 10,000 seeded inputs over every target raise only CodecError / RemoteProtocolError."""
    report = run_campaign(FuzzOptions(inputs=10_000, seed=0))
    _assert_clean(report)
    assert report["inputs"] == 10_000
    targets = report["targets"]
    assert isinstance(targets, dict)
    assert set(targets) == set(ALL_TARGETS)
    # The inputs reach deep: many error codes, and valid frames get through too.
    codes = report["exceptions_by_code"]
    assert isinstance(codes, dict)
    for name in ("MALFORMED_FRAME", "INVALID_PAYLOAD", "WRONG_DIMENSION", "UNEXPECTED_MESSAGE", "NON_FINITE"):
        assert codes.get(name, 0) > 0, name
    assert isinstance(report["accepted"], int) and report["accepted"] > 1000


@pytest.mark.parametrize("target", CONNECTION_TARGETS)
def test_every_connection_state_raises_only_remote_protocol_error(target: str) -> None:
    """WF-8.1, WF-8.4-3: 700 mutated continuations per connection state, in random chunks, fail cleanly."""
    report = run_campaign(FuzzOptions(inputs=700, seed=11, targets=(target,)))
    _assert_clean(report)
    targets = report["targets"]
    assert isinstance(targets, dict)
    assert targets[target]["inputs"] == 700


@settings(SETTINGS, max_examples=750)
@given(rnd=st.randoms(use_true_random=False), target=st.sampled_from(ALL_TARGETS), data=st.data())
def test_hypothesis_driven_mutations(rnd: random.Random, target: str, data: st.DataObject) -> None:
    """WF-9: inputs from the fuzz mutators under hypothesis's control raise only the typed errors."""
    fuzz_target = SETUP.targets[target]
    point = data.draw(st.integers(0, max(0, len(fuzz_target.points) - 1)))
    stream = fuzz_target.points[point].stream if fuzz_target.points else ()
    payload, _ = generate_input(rnd, SETUP.corpus, stream)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(payload)), max_size=6))))
    chunks = [b - a for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    result = run_case(SETUP, target, payload, chunks, point=point, eof=data.draw(st.booleans()))
    assert not result.violations, result.violations


# -- the harness itself -------------------------------------------------------------


def test_recorded_continuations_are_accepted() -> None:
    """WF-8.2: unmutated, every state point's recorded continuation is accepted (the harness is sound)."""
    for name in CONNECTION_TARGETS:
        for index, point in enumerate(SETUP.targets[name].points):
            stream = b"".join(frame.data for frame in point.stream)
            result = run_connection(point.template, stream, responder=SETUP.responder)
            if name == "worker:fresh":  # WF-7.2-4: a WELCOME before this worker's HELLO
                assert result.code is ErrorCode.UNEXPECTED_MESSAGE and not result.violations
                continue
            assert result.code is None and not result.violations, (name, index, result)
            assert result.events == len(point.stream)


def test_coordinator_points_are_sound() -> None:
    """Issue 10: unmutated, a recorded worker stream is taken without an error; each hostile message
    of a worker that passed admission is refused or dropped, and never poisons the master."""
    assert {"coordinator:inner", "coordinator:snapshot", "coordinator:hostile-inner"} <= set(
        COORDINATOR_TARGETS
    )
    for name in COORDINATOR_TARGETS:
        hostile = name.startswith("coordinator:hostile-")
        for index, point in enumerate(SETUP.targets[name].points):
            template = point.template
            assert isinstance(template, Coordinator)
            before = sum(template.ledger.dropped.values()) + template.ledger.errors_seen
            copy_ = copy.deepcopy(template)
            for frame in point.stream[:1]:
                copy_.receive_data(point.peer, frame.data, 1.0)
            after = sum(copy_.ledger.dropped.values()) + copy_.ledger.errors_seen
            result = run_coordinator(point, point.stream[0].data if point.stream else b"")
            assert not result.violations, (name, index, result)
            # Taken as it came only where that is harmless: a ZERO answer to a model equal to the
            # snapshot is what an honest worker sends, and with the guard off a bounded update
            # is applied (the range check above still holds).
            reader = FrameReader(SETUP.limits)
            reader.feed(point.stream[0].data)
            frame = reader.next_frame()
            assert frame is not None
            event = decode_message(frame, DecodeContext(dim=SETUP.dim))
            harmless = (
                isinstance(getattr(event, "vector", None), ZeroVector) or not template.master_config.guard
            )
            if hostile:
                assert harmless or after > before, (name, index, "a hostile message was taken as it came")
            else:
                assert copy_.ledger.errors_seen == template.ledger.errors_seen, (name, index)


def test_states_and_corpus_cover_the_protocol() -> None:
    """WF-7, WF-5: states from handshake to crossing and closing; frames of every type and encoding."""
    for state in ("handshake", "configuring", "ready", "mid-epoch", "model-outstanding", "closing"):
        assert f"master:{state}" in SETUP.targets or f"worker:{state}" in SETUP.targets, state
    for name in ("master:crossing", "master:snapshot-phase", "worker:fresh", "worker:model-outstanding"):
        assert name in SETUP.targets
    types = {frame.data[1] for frame in SETUP.corpus}
    assert types >= set(range(MessageType.HELLO, MessageType.CLOSE + 1))
    encodings = {frame.data[frame.descriptor] >> 4 for frame in SETUP.corpus if frame.descriptor is not None}
    assert encodings == {int(e) for e in Encoding}
    bits = {frame.data[frame.descriptor] & 0x0F for frame in SETUP.corpus if frame.descriptor is not None}
    assert len(bits) >= 12
    # DENSE_RICE (5.8-6) in MODEL, with and without RELATIVE, and in GRADIENT: in the corpus and in
    # the recorded session's streams, so that connection targets receive it too.
    rice = Encoding.DENSE_RICE
    carried = {
        (frame.data[1], frame.data[2], frame.data[frame.descriptor] >> 4)
        for frame in SETUP.corpus
        if frame.descriptor is not None
    }
    assert {
        (MessageType.MODEL, 0, rice),
        (MessageType.MODEL, 1, rice),
        (MessageType.GRADIENT, 0, rice),
    } <= carried
    streamed = {
        (frame.data[1], frame.data[frame.descriptor] >> 4)
        for target in SETUP.targets.values()
        for point in target.points
        for frame in point.stream
        if frame.descriptor is not None
    }
    assert {(MessageType.MODEL, rice), (MessageType.GRADIENT, rice)} <= streamed


def test_campaign_is_deterministic_across_processes() -> None:
    """Fuzzing is reproducible: input i depends only on (seed, i), whatever the number of processes."""
    one = run_campaign(FuzzOptions(inputs=700, seed=4))
    again = run_campaign(FuzzOptions(inputs=700, seed=4))
    two = run_campaign(FuzzOptions(inputs=700, seed=4, processes=2))
    for key in ("targets", "exceptions_by_code", "operators", "frames_decoded"):
        assert one[key] == again[key] == two[key], key


def test_crashes_are_recorded_with_a_minimal_reproducer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The campaign records an untyped exception as a crash, with a minimized reproducer and traceback."""
    real = fuzz.decode_body

    def broken(frame: object, context: DecodeContext) -> object:
        if getattr(frame, "type", None) == MessageType.HEARTBEAT:
            raise IndexError("planted bug")
        return real(frame, context)  # type: ignore[arg-type]

    monkeypatch.setattr(fuzz, "decode_body", broken)
    report = run_campaign(FuzzOptions(inputs=400, seed=2, targets=("codec:ready",)))
    crashes = report["crashes"]
    assert isinstance(crashes, list) and crashes
    crash = crashes[0]
    assert crash["exception"] == "IndexError: planted bug"
    assert "planted bug" in crash["traceback"]
    # Shrunk to one HEARTBEAT frame: a header and whatever body its length field still claims (the
    # minimizer only deletes bytes, so a length field copied from a spliced frame stays), nothing more.
    minimal = bytes.fromhex(crash["minimal_hex"])
    declared = int.from_bytes(minimal[3:7], "little")
    assert minimal[1] == MessageType.HEARTBEAT and len(minimal) == 7 + declared, minimal.hex()
    assert len(minimal) <= len(bytes.fromhex(crash["input_hex"])), minimal.hex()


def test_minimize_keeps_only_what_reproduces() -> None:
    """The reproducer minimizer drops every byte that the failure does not need."""
    data = bytes(range(40)) + b"\xde\xad" + bytes(range(30))
    assert minimize(lambda candidate: b"\xde\xad" in candidate, data) == b"\xde\xad"


def test_command_line_prints_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m tests.fuzz` prints a JSON report and writes it to --report; status 0 without crashes."""
    path = tmp_path / "report.json"
    assert fuzz.main(["--inputs", "300", "--seed", "9", "--report", str(path), "--memory"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(path.read_text(encoding="utf-8"))
    for key in ("inputs", "targets", "exceptions_by_code", "crashes", "inputs_per_second", "wall_seconds"):
        assert key in printed
    assert printed["inputs"] == 300 and printed["crash_count"] == 0


def test_time_bound_stops_the_campaign() -> None:
    """The campaign stops by itself: --seconds bounds it even when many inputs remain."""
    report = run_campaign(FuzzOptions(inputs=10**9, seed=0, seconds=0.5))
    assert report["stopped_by"] == "seconds"
    assert isinstance(report["inputs"], int) and 0 < report["inputs"] < 10**9
    assert isinstance(report["wall_seconds"], float) and report["wall_seconds"] >= 0.5


# -- memory (wire-format.md 10) -------------------------------------------------------


def test_memory_stays_under_the_limit_derived_bound() -> None:
    """WF-10-1: under tight limits, every sampled input's tracemalloc peak stays under memory_bound()."""
    report = run_campaign(
        FuzzOptions(
            inputs=1500, seed=3, memory=True, memory_every=1, targets=("codec:ready", "codec:handshake")
        )
    )
    _assert_clean(report)
    memory = report["memory"]
    assert isinstance(memory, dict)
    assert memory["samples"] == 1500
    assert memory["max_peak_bytes"] < memory_bound(TIGHT_LIMITS, fuzz.MAX_INPUT)
    report = run_campaign(
        FuzzOptions(inputs=700, seed=3, memory=True, memory_every=1, targets=tuple(CONNECTION_TARGETS))
    )
    _assert_clean(report)


def _bombs() -> list[bytes]:
    """Frames that declare huge sizes with few bytes behind them."""
    huge = [1 << 62, 1 << 40, 1 << 24, TIGHT_LIMITS.max_dimension]
    bodies: list[bytes] = []
    for dim in huge:
        for descriptor in (0x00, 0x10, 0x20, 0x4F, 0x5F, 0x6F, 0x70, 0x8F):
            head = bytes([descriptor]) + uvarint(dim)
            bodies.append(head + b"\xff" * 64)
            bodies.append(head + uvarint(dim) + b"\x00\x00\x80\x3f" + b"\xff" * 64)  # nnz or s = dim
            bodies.append(head + uvarint(1) + b"\x00\x00\x80\x3f" + b"\x10" + b"\xff" * 512)  # Rice, k = 16
        bodies.append(bytes([0x70]) + uvarint(dim) + uvarint(0xFFFF) + b"\x00\x00\x80\x3f" + b"\x01" * 3000)
        # DENSE_RICE b = 16 (5.8-5): remainders of k = 15 bits each, or a long unary stream (k = 0).
        for k, size in ((15, 4000), (0, 2000)):
            bodies.append(bytes([0x8F]) + uvarint(dim) + b"\x00\x00\x80\x3f" + bytes([k]) + b"\xff" * size)
    frames = [encode_frame(1, MessageType.GRADIENT, 0, [uvarint(0), uvarint(0), body]) for body in bodies]
    # msgpack containers that declare 2**32 - 1 entries or bytes (wire-format.md 7-6).
    for marker in (b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9"):
        frames.append(encode_frame(1, MessageType.CONFIG, 0, [b"\x81\xa3dim" + marker + b"\xff\xff\xff\xff"]))
    frames.append(encode_frame(1, MessageType.ERROR, 0, [b"\x00\x00", uvarint(0), uvarint(0), b"x" * 4000]))
    # A header declaring the largest body, followed by only part of it.
    frames.append(b"\x01\x08\x00\xff\xff\xff\x0f" + b"\x00" * 1000)
    return frames


@pytest.mark.parametrize("limits", [TIGHT_LIMITS, Limits()], ids=["tight", "default"])
def test_declared_sizes_never_allocate(limits: Limits) -> None:
    """WF-10-1: huge declared dimensions, counts and lengths are refused before allocating (peak bound)."""
    for dim in (None, DEFAULT_DIM):
        context = DecodeContext(limits=limits, dim=dim)
        for frame in _bombs():
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                run_codec(frame, context)
                peak = tracemalloc.get_traced_memory()[1] - baseline
            finally:
                tracemalloc.stop()
            assert peak < min(memory_bound(TIGHT_LIMITS, len(frame)), (1 << 20) + 64 * len(frame)), frame[:16]


def test_connection_buffers_only_what_arrived() -> None:
    """WF-3-3, WF-10-1: a header declaring a body at the limit buffers only the bytes that arrived."""
    reader = FrameReader(Limits())
    reader.feed(b"\x01\x08\x00\x00\x00\x00\x10")  # 2**28 bytes declared, the default limit
    tracemalloc.start()
    try:
        for _ in range(64):
            reader.feed(b"\x00" * 1024)
            assert reader.next_frame() is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_unauthenticated_peer_cannot_declare_a_large_frame() -> None:
    """WF-10-3: before the handshake is complete, a header over the handshake limit fails at once."""
    limits = Limits()
    assert limits.handshake_frame_bytes == limits.max_control_bytes == 65_536
    for conn in (MasterConnection(), WorkerConnection()):
        conn.receive_data(struct.pack("<BBBI", 1, 0x0B, 0, limits.handshake_frame_bytes + 1), 0.0)
        with pytest.raises(RemoteProtocolError) as info:
            conn.next_event()
        assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    # At the limit the frame is waited for, not refused.
    conn = MasterConnection()
    conn.receive_data(struct.pack("<BBBI", 1, 0x01, 0, limits.handshake_frame_bytes), 0.0)
    assert conn.next_event() is None
    with contextlib.suppress(CodecError):
        run_codec(b"\x01\x08\x00\xff\xff\xff\xff", DecodeContext(limits=TIGHT_LIMITS))


# -- regressions found by the long campaign --------------------------------------------
# (python -m tests.fuzz --inputs 1000000 --seed 1: see the report; add any reproducer here.)
