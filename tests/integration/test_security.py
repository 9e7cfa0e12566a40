"""Security over real TCP on 127.0.0.1: the shared secret, TLS and mTLS, limits, validation.

Each test runs a Master and well-behaved workers next to the misbehaving peer, and checks both
that the peer is refused with the right code and that the good workers' training is unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trustme

from aiodq.codec.events import AuthResponse, Event, Gradient, Hello, ModelMessage, SnapshotGradient
from aiodq.codec.messages import encode_message
from aiodq.codec.registry import MessageType
from aiodq.codec.vectors import DenseQuantized, RawVector
from aiodq.config import ConnectionConfig, Limits, MasterConfig
from aiodq.errors import ErrorCode
from aiodq.net.listener import CUT_SHORT
from aiodq.net.master import Master
from aiodq.net.secrets import load_secret
from aiodq.net.tls import client_context, server_context
from aiodq.protocol.admission import HANDSHAKE_CUT_SHORT
from aiodq.protocol.algorithms import TrainConfig
from aiodq.protocol.coordinator import Coordinator
from aiodq.protocol.session import WorkerSession

from .cluster import A9A, wait_until
from .rel_peers import (
    GAP,
    Process,
    Relay,
    RogueSession,
    close_code,
    finish,
    frames_of,
    full_loss,
    optimum,
    part,
    raw_peer,
    rogue_worker,
    start_workers,
    wait_for_text,
)

SECRET = b"correct horse battery staple 0123456789"
SHORT = TrainConfig(algorithm="asylpg", epochs=3)
#: Where a rogue member forges its first or third GRADIENT (and is removed, or the gradient
#: dropped): it is a member, so the first snapshot phase waits for it and it forges in the first
#: epoch; training cannot end first.  3 short epochs of 250 updates.
BRIEF = TrainConfig(algorithm="asylpg", epochs=3, updates_per_epoch=250)
TIMEOUT = 60.0


def hello_spy(coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Record ``(worker id, event type)`` of every event the coordinator handles."""
    seen: list[tuple[int, str]] = []
    handle = coordinator._handle

    def spy(worker_id: int, event: Event, now: float) -> None:
        seen.append((worker_id, type(event).__name__))
        handle(worker_id, event, now)

    monkeypatch.setattr(coordinator, "_handle", spy)
    return seen


def hellos(seen: list[tuple[int, str]]) -> set[int]:
    return {worker for worker, kind in seen if kind == Hello.__name__}


def check_trained(summary: dict[str, Any], results: list[Any], config: TrainConfig = SHORT) -> None:
    """The good workers ended OK and the run went through every epoch with a finite, falling loss."""
    assert all(getattr(r, "ok", False) for r in results), results
    losses = [record["loss"] for record in summary["trace"]]
    assert len(losses) == config.epochs + 1
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]


# -- shared secret ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_secret_handshake_trains_and_the_secret_never_travels() -> None:
    """wire-format 7.12-7.14: workers holding the secret train; the secret is on no byte of the wire."""
    config = ConnectionConfig(secret=SECRET)
    x0 = np.zeros(A9A.features_count)
    # Still running when the replay comes: on the project's VM it came at update 2 of these 3,054.
    train = TrainConfig(algorithm="asylpg", epochs=3)

    def recorded() -> list[tuple[int, bytes]]:
        up = frames_of(bytes(relay.connections[0][0])) if relay.connections else []
        return [(k, b) for k, b in up if k in (MessageType.HELLO, MessageType.AUTH_RESPONSE)][:2]

    async with Master(train, x0, workers=2, connection_config=config) as master:
        async with Relay(*master.address) as relay:
            tasks = start_workers("127.0.0.1", relay.port, [0, 1], 2, connection_config=config)
            # Replaying a recorded HELLO and AUTH_RESPONSE fails: the master's nonce is fresh.
            await wait_until(lambda: len(recorded()) == 2, 30, "a HELLO and an AUTH_RESPONSE on the wire")
            assert [k for k, _ in recorded()] == [MessageType.HELLO, MessageType.AUTH_RESPONSE]
            replay = b"".join(struct.pack("<BBBI", 1, k, 0, len(b)) + b for k, b in recorded())
            outcome = await raw_peer(*master.address, replay, wait=10)
            assert outcome.cut_off and outcome.code == ErrorCode.AUTH_FAILED
            summary = (await master.wait(TIMEOUT)).to_json()
            results = await finish(tasks, TIMEOUT)
        check_trained(summary, results, train)
        assert len(relay.connections) == 2
        for up_bytes, down_bytes in relay.connections:
            assert SECRET not in up_bytes + down_bytes and SECRET[:16] not in up_bytes + down_bytes
            kinds = [kind for kind, _ in frames_of(bytes(down_bytes))]
            assert kinds[:2] == [MessageType.AUTH_CHALLENGE, MessageType.AUTH_CONFIRM], kinds[:4]


@pytest.mark.asyncio
async def test_unauthenticated_and_wrong_secret_peers_are_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Peers without the secret are refused (AUTH_FAILED) before the coordinator sees their HELLO; logged."""
    caplog.set_level(logging.INFO, logger="aiodq")
    config = ConnectionConfig(secret=SECRET)
    wrong = ConnectionConfig(secret=b"not the secret, but long enough")
    x0 = np.zeros(A9A.features_count)
    async with Master(SHORT, x0, workers=2, connection_config=config) as master:
        assert master.coordinator is not None
        seen = hello_spy(master.coordinator, monkeypatch)
        host, port = master.address
        # Before the good workers: none of these may take one of the two places.
        bad = [
            *start_workers(host, port, [0], 2),  # no secret at all
            *start_workers(host, port, [1], 2, connection_config=wrong),
        ]
        forged = encode_message(Hello(name="forger")) + encode_message(
            AuthResponse(nonce=bytes(32), mac=bytes(32))
        )
        skipper = encode_message(Hello(name="skipper")) + encode_message(
            SnapshotGradient(epoch=0, samples=1, loss=0.0, correct=0, vector=RawVector(np.zeros(123)))
        )
        raw = await asyncio.wait_for(
            asyncio.gather(raw_peer(host, port, forged), raw_peer(host, port, skipper)), 20
        )
        refused = await finish(bad, 20)
        good = start_workers(host, port, [0, 1], 2, connection_config=config)
        # And while they train.
        late = start_workers(host, port, [0], 2, connection_config=wrong)
        summary = (await master.wait(TIMEOUT)).to_json()
        results = await finish(good, TIMEOUT)
        refused += await finish(late, 20)
    check_trained(summary, results)
    assert [r.code for r in refused] == [ErrorCode.AUTH_FAILED] * 3, refused
    assert [p.code for p in raw] == [ErrorCode.AUTH_FAILED, ErrorCode.UNEXPECTED_MESSAGE], raw
    assert all(p.cut_off for p in raw)
    # Only the two good workers' HELLOs ever reached the coordinator.
    assert len(hellos(seen)) == 2, seen
    assert summary["traffic"]["messages"]["down"]["WELCOME"] == 2
    # The master says why it refused each of them (two wrong secrets, a forged proof, a skipped
    # handshake, and the worker that had no secret and answered the challenge with CLOSE(AUTH_FAILED)).
    master_log = [r.getMessage() for r in caplog.records if r.name == "aiodq.master"]
    assert sum("AUTH_FAILED" in line for line in master_log) >= 3, master_log
    assert any("UNEXPECTED_MESSAGE" in line for line in master_log), master_log
    assert sum("AUTH_FAILED" in line for line in master_log) >= 4, (
        "the refusal of the worker without a secret is not logged by the master",
        master_log,
    )


def test_secret_comes_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auth.load_secret: the file wins over $AIODQ_SECRET; whitespace stripped; short secrets refused."""
    monkeypatch.delenv("AIODQ_SECRET", raising=False)
    assert load_secret(None) is None
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    monkeypatch.setenv("AIODQ_SECRET", "from the environment, long enough")
    assert load_secret(secret_file) == SECRET
    assert load_secret(None) == b"from the environment, long enough"
    monkeypatch.setenv("AIODQ_SECRET", "short")
    with pytest.raises(
        ValueError, match=r"at least 16 bytes \(from \$AIODQ_SECRET\)$"
    ):  # (where from: a review)
        load_secret(None)
    (tmp_path / "short").write_bytes(b"short")
    with pytest.raises(ValueError, match=r"at least 16 bytes \(from the secret file .*short\)$"):
        load_secret(tmp_path / "short")
    with pytest.raises(ValueError, match="cannot read"):
        load_secret(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        ConnectionConfig(secret=b"short")
    # A str was taken, then every worker's session died in hmac (a docs review).
    with pytest.raises(TypeError, match=r"must be bytes \(for a str: .encode\(\)\), got str"):
        ConnectionConfig(secret="correct horse battery staple")  # type: ignore[arg-type]


# -- TLS and mutual TLS -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA with a master certificate for 127.0.0.1 and a worker certificate, and a stranger CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    files = {}
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    stranger.cert_pem.write_to_path(str(folder / "stranger.pem"))
    files["ca"], files["stranger"] = str(folder / "ca.pem"), str(folder / "stranger.pem")
    for name, issuer, subject in (
        ("master", ca, "127.0.0.1"),
        ("worker", ca, "worker-0"),
        ("rogue", stranger, "worker-9"),
    ):
        cert = issuer.issue_cert(subject)
        cert.private_key_pem.write_to_path(str(folder / f"{name}.key"))
        cert.cert_chain_pems[0].write_to_path(str(folder / f"{name}.pem"))
        files[name], files[f"{name}_key"] = str(folder / f"{name}.pem"), str(folder / f"{name}.key")
    return files


async def tls_run(
    pki: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    server: ssl.SSLContext,
    good: ssl.SSLContext,
    bad: list[ssl.SSLContext],
) -> tuple[dict[str, Any], list[Any], list[Any], list[tuple[int, str]]]:
    """Bad TLS clients first, then two good ones; returns the summary, results, refusals, events seen."""
    x0 = np.zeros(A9A.features_count)
    async with Master(SHORT, x0, workers=2, ssl=server) as master:
        assert master.coordinator is not None
        seen = hello_spy(master.coordinator, monkeypatch)
        host, port = master.address
        refused = []
        for context in bad:
            refused += await finish(start_workers(host, port, [0], 2, ssl=context), 20)
        tasks = start_workers(host, port, [0, 1], 2, ssl=good)
        summary = (await master.wait(TIMEOUT)).to_json()
        results = await finish(tasks, TIMEOUT)
    return summary, results, refused, seen


@pytest.mark.asyncio
async def test_tls_worker_that_does_not_trust_the_master_is_refused(
    pki: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS: a worker that does not trust the master's certificate refuses it; the others train."""
    server = server_context(pki["master"], pki["master_key"])
    summary, results, refused, seen = await tls_run(
        pki, monkeypatch, server, client_context(pki["ca"]), [client_context(pki["stranger"])]
    )
    check_trained(summary, results)
    assert len(refused) == 1 and isinstance(refused[0], ssl.SSLCertVerificationError), refused
    assert len(hellos(seen)) == 2
    assert summary["traffic"]["messages"]["up"]["HELLO"] == 2


@pytest.mark.asyncio
async def test_a_tls_master_that_refused_a_handshake_closes_without_waiting_out_its_timeout(
    pki: dict[str, str],
) -> None:
    """A worker that refused the master's certificate left the master's connection without a
    handshake: the master's close returns at once, not at the handshake timeout (it used to wait
    out the whole timeout, 10 s by default, for each run that had seen one)."""
    server = server_context(pki["master"], pki["master_key"])
    slow = ConnectionConfig(handshake_timeout=300.0)
    master = Master(SHORT, np.zeros(A9A.features_count), workers=1, ssl=server, connection_config=slow)
    await master.start()
    try:
        host, port = master.address
        refused = await finish(start_workers(host, port, [0], 1, ssl=client_context(pki["stranger"])), 20)
        # (The master made the connection's protocol at the accept, before it sent its certificate.)
        assert isinstance(refused[0], ssl.SSLCertVerificationError), refused
    finally:
        await asyncio.wait_for(master.close(), 60)  # a TimeoutError if it waits for the 300 s


def _tls_master(pki: dict[str, str], timeout: float, *, mutual: bool = False, **limits: Any) -> Master:
    """A TLS master (mutual TLS: it checks client certificates) for one worker on a9a, with the handshake
    timeout ``timeout`` and the MasterConfig ``limits``."""
    server = server_context(pki["master"], pki["master_key"], client_ca=pki["ca"] if mutual else None)
    return Master(
        SHORT,
        np.zeros(A9A.features_count),
        workers=1,
        ssl=server,
        connection_config=ConnectionConfig(handshake_timeout=timeout),
        master_config=MasterConfig(**limits),
    )


async def _silent_peers(host: str, port: int, count: int) -> tuple[list[Any], list[Any]]:
    """``count`` plain TCP peers that send nothing (no TLS ClientHello): (held, cut at once).

    Held: open until the master's 2 s TLS handshake timeout; cut: closed within 1.5 s.
    """
    outcomes = await finish(
        [asyncio.create_task(raw_peer(host, port, b"", wait=10)) for _ in range(count)], 20
    )
    assert all(o.cut_off for o in outcomes), outcomes
    return [o for o in outcomes if o.seconds >= 1.5], [o for o in outcomes if o.seconds < 1.5]


@pytest.mark.asyncio
async def test_a_tls_master_bounds_the_connections_in_their_tls_handshake(pki: dict[str, str]) -> None:
    """A security audit held 1,000 silent connections on a TLS master, each until the TLS handshake timed
    out: the loop ran the handshake before the master saw the connection, and nothing bounded them.
    Now at most 4 x max_unauthenticated are in their TLS handshake at once (4 here), and one more cuts
    the oldest short: of 10 silent peers the first 6 are closed at once, 4 are held to the handshake
    timeout (and counted when it ends them); a worker then trains."""
    timeout = 2.0
    connection = ConnectionConfig(handshake_timeout=timeout)
    async with _tls_master(pki, timeout, max_unauthenticated=1) as master:
        host, port = master.address
        held, cut = await _silent_peers(host, port, 10)
        assert len(held) == 4 and len(cut) == 6, (held, cut)
        assert all(o.seconds < timeout + 5 for o in held), held  # (ended by the handshake timeout)
        tasks = start_workers(host, port, [0], 1, ssl=client_context(pki["ca"]), connection_config=connection)
        results = await finish(tasks, TIMEOUT)
        summary = (await master.wait(TIMEOUT)).to_json()
    check_trained(summary, results)
    assert summary["refused_connections"] == {CUT_SHORT: 6, "TLS handshake timed out": 4}
    assert master.accepted == 11


@pytest.mark.asyncio
async def test_strangers_in_their_tls_handshake_cannot_keep_a_certified_worker_out(
    pki: dict[str, str],
) -> None:
    """mTLS, max_unauthenticated 1, a 10 s handshake timeout: a stranger without a certificate holds 4
    silent connections (all the TLS handshakes allowed), opening another 0.1 s after each is closed.
    A certified worker still joins at once: its connection cuts the oldest stranger's short, and its
    handshake takes milliseconds.  (A review found that counting TLS handshakes against aiodq's own
    limit of 1 let the stranger keep it out until the stranger stopped.)"""
    good = client_context(pki["ca"], pki["worker"], pki["worker_key"])
    stop = asyncio.Event()

    async def hold(host: str, port: int) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                return
            try:
                await reader.read()  # (until the master closes it)
            except OSError:
                pass
            finally:
                writer.close()
            await asyncio.wait([asyncio.create_task(stop.wait())], timeout=0.1)

    async with _tls_master(pki, 10.0, mutual=True, max_unauthenticated=1) as master:
        assert master.coordinator is not None
        host, port = master.address
        holders = [asyncio.create_task(hold(host, port)) for _ in range(4)]
        await wait_until(lambda: master.accepted >= 4, 10, "the stranger's connections")
        tasks = start_workers(host, port, [0], 1, ssl=good)
        # (Before the change it waited for the 10 s timeout of the stranger's handshakes.)
        await wait_until(lambda: master.coordinator.live_workers == 1, 8, "the certified worker joined")
        stop.set()
        results = await finish(tasks, TIMEOUT)
        summary = (await master.wait(TIMEOUT)).to_json()
    await finish(holders, 20)  # (the master's close ended their handshakes)
    check_trained(summary, results)
    assert summary["refused_connections"][CUT_SHORT] >= 1


@pytest.mark.asyncio
async def test_the_handshake_deadline_counts_from_the_accept_with_tls(
    pki: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that takes 1.5 s to begin its TLS handshake and then says nothing: aiodq's handshake
    deadline runs from the accept, not from the end of the TLS handshake (a review: a TLS peer held its
    place for the TLS timeout and then aiodq's whole timeout again)."""
    delay = 1.5
    async with _tls_master(pki, 3.0) as master:
        coordinator = master.coordinator
        assert coordinator is not None
        connected: list[float] = []
        connect = coordinator.connect

        def spy(now: float) -> int:
            connected.append(now)
            return connect(now)

        monkeypatch.setattr(coordinator, "connect", spy)
        host, port = master.address
        reader, writer = await asyncio.open_connection(host, port)
        opened = master.elapsed  # (the master's clock, the loop's time since its start)
        await asyncio.sleep(delay)  # (the slow peer's pause: the scenario, not a wait for the master)
        await writer.start_tls(client_context(pki["ca"]))
        ended = await asyncio.wait_for(
            reader.read(), 10
        )  # aiodq's deadline: the master's CLOSE, then the end
        writer.close()
    assert len(connected) == 1
    assert connected[0] - opened < delay / 2, (connected, opened)  # (it was opened + delay before)
    assert close_code(ended) == ErrorCode.TIMEOUT


@pytest.mark.asyncio
async def test_a_tls_master_applies_the_connection_rate_before_the_tls_handshake(pki: dict[str, str]) -> None:
    """connection_rate with TLS: past the burst (2 M + 16 = 18 for one worker) connections from one
    address are closed as they arrive, before any handshake (they waited out its timeout before)."""
    async with _tls_master(pki, 2.0, connection_rate=0.01) as master:
        host, port = master.address
        held, cut = await _silent_peers(host, port, 30)
        assert len(held) == 18 and len(cut) == 12, (held, cut)

        def refused() -> dict[str, int]:
            return dict(master.result().to_json()["refused_connections"])

        # (A handshake's end is counted once the loop has closed its connection: maybe after the peer saw it.)
        await wait_until(lambda: refused().get("TLS handshake timed out") == 18, 10, "the timeouts counted")
        assert refused() == {"too many new connections from one address": 12, "TLS handshake timed out": 18}


def _silent_tls_peer(host: str, port: int, context: ssl.SSLContext) -> tuple[bytes, float]:
    """A blocking TLS client that reads the master's first bytes, and then the TLS layer's end of the
    stream, but never answers with its own close_notify; returns those bytes and, from the TLS
    handshake's end, the seconds until the master closed the TCP connection."""
    with context.wrap_socket(socket.create_connection((host, port)), server_hostname=host) as peer:
        peer.settimeout(60)
        began = time.monotonic()
        first = peer.recv(1 << 16)
        while peer.recv(1 << 16):  # (b"": the master's close_notify; no reply is sent)
            pass
        with socket.socket(fileno=os.dup(peer.fileno())) as raw:  # the TCP stream beneath, unanswered
            raw.settimeout(60)
            with contextlib.suppress(ConnectionError):
                while raw.recv(1 << 16):
                    pass
        return first, time.monotonic() - began


@pytest.mark.asyncio
async def test_a_silent_tls_peer_gives_up_its_place_when_the_master_closes_it(pki: dict[str, str]) -> None:
    """max_unauthenticated 1, a 2 s handshake timeout: a peer that completes TLS and then neither speaks
    nor answers the master's close_notify is sent CLOSE at its deadline, and its place is free at once
    (a worker joins and trains); its TCP connection ends within the close timeout, not after the 30 s
    the TLS close waited for the peer (a review: the place was held for 32 s)."""
    connection = ConnectionConfig(handshake_timeout=2.0)
    async with _tls_master(pki, 2.0, max_unauthenticated=1) as master:
        host, port = master.address
        loop = asyncio.get_running_loop()
        peer = loop.run_in_executor(None, _silent_tls_peer, host, port, client_context(pki["ca"]))
        await wait_until(lambda: "TIMEOUT" in master.result().to_json()["error_counts"], 10, "its deadline")
        tasks = start_workers(host, port, [0], 1, ssl=client_context(pki["ca"]), connection_config=connection)
        results = await finish(tasks, TIMEOUT)
        first, ended = await asyncio.wait_for(peer, 60)
        summary = (await master.wait(TIMEOUT)).to_json()
    check_trained(summary, results)
    assert close_code(first) == ErrorCode.TIMEOUT
    assert ended < 2.0 + 2.0 + 2.0, ended  # (its deadline, the close timeout, and 2 s to spare)
    assert HANDSHAKE_CUT_SHORT not in summary["refused_connections"]  # (its place was given up: not cut)


@pytest.mark.asyncio
async def test_a_tls_session_ends_without_an_error_in_the_event_loop(
    pki: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """On asyncio's loop, closing a TLS connection the worker had closed first raised inside the
    master's handler (a second close unhooks an SSL transport, and its buffer size then raises): the
    loop logged 'Unhandled exception in client_connected_cb' at every session's end, and the handler
    skipped its last steps (a review).  Now a session ends with nothing logged by the loop."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    server = server_context(pki["master"], pki["master_key"])
    async with Master(SHORT, np.zeros(A9A.features_count), workers=2, ssl=server) as master:
        host, port = master.address
        tasks = start_workers(host, port, [0, 1], 2, ssl=client_context(pki["ca"]))
        summary = (await master.wait(TIMEOUT)).to_json()
        results = await finish(tasks, TIMEOUT)
    check_trained(summary, results)
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


@pytest.mark.asyncio
async def test_a_worker_without_tls_is_told_that_the_master_may_need_it(pki: dict[str, str]) -> None:
    """A TLS master reads a plain HELLO as a broken handshake and drops it: the worker's line says that
    TLS may be what it lacks (a newcomer got only 'the master closed the connection before answering
    HELLO')."""
    from aiodq.net.worker import run_worker  # noqa: PLC0415

    server = server_context(pki["master"], pki["master_key"])
    quick = ConnectionConfig(handshake_timeout=1.0)  # (the TLS handshake's too: the plain HELLO waits it out)
    async with Master(
        SHORT, np.zeros(A9A.features_count), workers=1, ssl=server, connection_config=quick
    ) as master:
        host, port = master.address
        plain = await run_worker(host, port, A9A.features[:100], A9A.labels[:100])
    assert plain.code == ErrorCode.PROTOCOL_ERROR
    assert plain.reason == (
        "the master closed the connection before answering HELLO (a master whose run is over closes every"
        " connection at once, as one does beyond its --connection-rate, and one beyond its"
        " --max-unauthenticated the oldest of the busiest address; a master with TLS needs aiodq worker"
        " --tls, run_worker(ssl=...))"
    ), plain.reason


@pytest.mark.asyncio
async def test_mtls_worker_without_a_client_certificate_is_refused(
    pki: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """mTLS: workers without a client certificate, or with one from another CA, never reach the master."""
    caplog.set_level(logging.DEBUG)
    server = server_context(pki["master"], pki["master_key"], client_ca=pki["ca"])
    good = client_context(pki["ca"], pki["worker"], pki["worker_key"])
    bad = [client_context(pki["ca"]), client_context(pki["ca"], pki["rogue"], pki["rogue_key"])]
    summary, results, refused, seen = await tls_run(pki, monkeypatch, server, good, bad)
    check_trained(summary, results)
    assert len(refused) == 2
    for outcome in refused:
        assert isinstance(outcome, OSError) or not outcome.ok, refused
        # (an operator trial: a worker whose certificate another CA signed was told it had none)
        said = "refuses a worker without a client certificate, or with one its --tls-client-ca did not sign)"
        assert isinstance(outcome, OSError) or outcome.reason.endswith(said), outcome
    assert len(hellos(seen)) == 2
    assert summary["traffic"]["messages"]["up"]["HELLO"] == 2
    # The refusal's reason is logged on the master's side.
    logged = " ".join(
        f"{r.getMessage()} {r.exc_info[1] if r.exc_info else ''}"
        for r in caplog.records
        if r.levelno >= logging.INFO
    )
    assert "certificate" in logged.lower() or "ssl" in logged.lower(), (
        "the master does not log why it refused a TLS client",
        logged[-2000:],
    )


@pytest.mark.asyncio
async def test_cli_mtls_and_secret_happy_path_trains(pki: dict[str, str], tmp_path: Path) -> None:
    """aiodq master/worker with --tls-* and --secret-file / $AIODQ_SECRET: mTLS plus HMAC trains."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    secret_file.chmod(0o600)
    out = tmp_path / "out"
    tls_master = ["--tls-cert", pki["master"], "--tls-key", pki["master_key"], "--tls-client-ca", pki["ca"]]
    tls_worker = ["--tls-ca", pki["ca"], "--tls-cert", pki["worker"], "--tls-key", pki["worker_key"]]
    master = Process(
        tmp_path,
        "master",
        *["master", "--listen", "127.0.0.1:0", "--workers", "2", "--epochs", "4", "--out", str(out)],
        *tls_master,
        *["--secret-file", str(secret_file)],
    )
    workers: list[Process] = []
    try:
        text = await wait_for_text(lambda: master.stdout, "listening on", 30)
        port = text.split("127.0.0.1:")[1].split(",")[0]
        common = ["worker", "--connect", f"127.0.0.1:{port}", "--retry-for", "0", *tls_worker]
        workers.append(Process(tmp_path, "w0", *common, "--shard", "0/2", "--secret-file", str(secret_file)))
        # The second worker takes the secret from its environment instead.
        workers.append(
            Process(tmp_path, "w1", *common, "--shard", "1/2", env={"AIODQ_SECRET": SECRET.decode()})
        )
        # A worker without the secret is refused, and says why.
        workers.append(Process(tmp_path, "nosecret", *common, "--shard", "1/2"))
        statuses = [await w.exited(90) for w in workers]
        assert statuses[:2] == [0, 0], [w.stderr for w in workers]
        assert statuses[2] == 1 and "AUTH_FAILED" in workers[2].stderr, workers[2].stderr
        assert await master.exited(30) == 0, master.stderr
    finally:
        for process in [master, *workers]:
            process.kill()
    summary = json.loads((out / "result.json").read_text())
    assert len(summary["trace"]) == 5
    assert summary["trace"][-1]["loss"] < summary["trace"][0]["loss"]
    assert summary["trace"][-1]["samples"] == A9A.samples


# -- limits and timeouts ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_slow_loris_is_cut_off_by_the_handshake_timeout() -> None:
    """Handshake timeout: a peer sending one byte a second gets CLOSE(TIMEOUT) at ~1 s; training goes on."""
    config = ConnectionConfig(handshake_timeout=1.0)
    # Longer than the handshake timeout, on a faster machine too: the cut-off comes 1 s after the loris
    # connects whatever the CPU, at update 533 here (the project's 2-core VM), where the whole test took
    # 4 s with 4 epochs; CI's machine is about 2.6 times faster, so 10 epochs.
    train = TrainConfig(algorithm="asylpg", epochs=10)
    x0 = np.zeros(A9A.features_count)
    hello = encode_message(Hello(name="slow loris"))
    async with Master(train, x0, workers=2, connection_config=config) as master:
        host, port = master.address
        loris = asyncio.create_task(raw_peer(host, port, hello, interval=1.0, wait=10))
        await wait_until(lambda: master.accepted >= 1, 10, "the loris' connection")
        tasks = start_workers(host, port, [0, 1], 2)
        (outcome,) = await finish([loris], 20)
        assert master.coordinator is not None and not master.coordinator.done, "training was too short"
        summary = (await master.wait(TIMEOUT)).to_json()
        results = await finish(tasks, TIMEOUT)
    check_trained(summary, results, train)
    assert outcome.cut_off and outcome.code == ErrorCode.TIMEOUT, outcome
    # Cut off by the timeout, long before its one-byte-a-second HELLO could have been whole.
    assert outcome.extra["sent"] < len(hello)
    # The cut-off is recorded (and logged) as one TIMEOUT; nothing else went wrong.
    assert [error["code"] for error in summary["errors"]] == ["TIMEOUT"]


@pytest.mark.asyncio
async def test_slow_loris_cannot_hold_the_master_after_training() -> None:
    """Handshake timeout: a loris still in its handshake when training ends is cut off; wait() returns."""
    config = ConnectionConfig(handshake_timeout=1.0)
    train = TrainConfig(algorithm="asylpg", epochs=1)  # over before the loris' handshake timeout
    x0 = np.zeros(A9A.features_count)
    hello = encode_message(Hello(name="slow loris")) * 20
    async with Master(train, x0, workers=1, connection_config=config) as master:
        host, port = master.address
        loris = asyncio.create_task(raw_peer(host, port, hello, interval=0.5, wait=10))
        await wait_until(lambda: master.accepted >= 1, 10, "the loris' connection")
        tasks = start_workers(host, port, [0], 1)
        results = await finish(tasks, TIMEOUT)
        try:
            summary = (await master.wait(5.0)).to_json()
        finally:
            (outcome,) = await finish([loris], 20)
    check_trained(summary, results, train)
    # Cut off (by the end of training or its handshake timeout) long before its HELLOs were sent.
    assert outcome.cut_off and outcome.code in (ErrorCode.NO_ERROR, ErrorCode.TIMEOUT), outcome
    assert outcome.extra["sent"] < len(hello)


@pytest.mark.asyncio
async def test_oversize_frame_is_refused_on_its_header() -> None:
    """max_frame_bytes: a header declaring a larger body gets CLOSE(FRAME_TOO_LARGE) at once."""
    limit = 1 << 16
    config = ConnectionConfig(limits=Limits(max_frame_bytes=limit))
    x0 = np.zeros(A9A.features_count)
    async with Master(SHORT, x0, workers=2, connection_config=config) as master:
        host, port = master.address
        tasks = start_workers(host, port, [0, 1], 2)
        header = struct.pack("<BBBI", 1, MessageType.HELLO, 0, limit + 1)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(raw_peer(host, port, header, wait=5) for _ in range(3))), 20
        )
        summary = (await master.wait(TIMEOUT)).to_json()
        results = await finish(tasks, TIMEOUT)
    check_trained(summary, results)
    for outcome in outcomes:
        assert outcome.cut_off and outcome.code == ErrorCode.FRAME_TOO_LARGE, outcome
    assert [e["code"] for e in summary["errors"]] == ["FRAME_TOO_LARGE"] * 3


@pytest.mark.asyncio
async def test_workers_beyond_the_cluster_size_are_turned_away() -> None:
    """The number of workers is a limit: a worker beyond M gets CLOSE(GOING_AWAY); the M train on."""
    x0 = np.zeros(A9A.features_count)
    async with Master(SHORT, x0, workers=2) as master:
        assert master.coordinator is not None
        host, port = master.address
        tasks = start_workers(host, port, [0, 1], 2)
        await wait_until(lambda: master.coordinator.live_workers == 2, 10, "two workers joined")
        extra = await finish(start_workers(host, port, [1], 2), 20)
        summary = (await master.wait(TIMEOUT)).to_json()
        results = await finish(tasks, TIMEOUT)
    check_trained(summary, results)
    assert extra[0].code == ErrorCode.GOING_AWAY, extra


# -- validation of what workers send ------------------------------------------------------------


def _gradient(**change: Any):
    def forge(model: ModelMessage, session: WorkerSession) -> bytes:
        fields: dict[str, Any] = {"epoch": model.epoch, "version": model.version}
        fields.update({k: v for k, v in change.items() if k != "vector"})
        dim = model.vector.dim
        vector = change.get("vector", lambda d: RawVector(np.zeros(d)))(dim)
        return encode_message(Gradient(vector=vector, **fields))

    return forge


def _raw(value: float, dtype: Any = np.float64):
    return lambda dim: RawVector._trusted(np.full(dim, value, dtype=dtype))  # NaN on purpose


def _oversize(model: ModelMessage, session: WorkerSession) -> bytes:
    return struct.pack("<BBBI", 1, MessageType.GRADIENT, 0, (1 << 16) + 1)


FORGERIES = {
    "nan": (_gradient(vector=_raw(math.nan)), ErrorCode.NON_FINITE),
    "inf-f32": (_gradient(vector=_raw(math.inf, np.float32)), ErrorCode.NON_FINITE),
    "wrong-dimension": (_gradient(vector=lambda d: RawVector(np.zeros(d - 1))), ErrorCode.WRONG_DIMENSION),
    "over-max-dimension": (_gradient(vector=lambda d: RawVector(np.zeros(5000))), ErrorCode.LIMIT_EXCEEDED),
    "unknown-epoch": (_gradient(epoch=7), ErrorCode.UNKNOWN_EPOCH),
    "future-version": (_gradient(version=10**6), ErrorCode.FUTURE_VERSION),
    "oversize-frame": (_oversize, ErrorCode.FRAME_TOO_LARGE),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", sorted(FORGERIES))
async def test_invalid_gradient_is_rejected_with_its_code(kind: str) -> None:
    """Validation: NaN/Inf, wrong or huge dimension, unknown epoch, future version: rejected, counted."""
    forge, code = FORGERIES[kind]
    limits = Limits(max_frame_bytes=1 << 16, max_dimension=1000)
    config = ConnectionConfig(limits=limits)
    x0 = np.zeros(A9A.features_count)
    async with Master(BRIEF, x0, workers=3, connection_config=config) as master:
        assert master.coordinator is not None
        host, port = master.address
        tasks = start_workers(host, port, [0, 1], 3)
        data = part(2, 3)
        session = RogueSession(data.features, data.labels, name=f"rogue-{kind}", forge=forge)
        rogue = await asyncio.wait_for(rogue_worker(host, port, data, session), 30)
        summary = (await master.wait(TIMEOUT)).to_json()
        results = await finish(tasks, TIMEOUT)
        x = master.coordinator.state.x
    check_trained(summary, results, BRIEF)
    assert rogue.code == code, rogue
    assert [e["code"] for e in summary["errors"]] == [code.name], summary["errors"]
    assert np.isfinite(x).all()
    assert summary["trace"][-1]["samples"] < A9A.samples  # the rogue's shard left with it


@pytest.mark.asyncio
async def test_gradient_out_of_line_is_dropped_and_training_reaches_the_target() -> None:
    """The guard: a DENSE gradient with scale 3.4e38 (issue 10) is dropped with an ERROR; training ends."""

    def forge(model: ModelMessage, session: WorkerSession) -> bytes:
        session.connection._epoch.outstanding = None  # stays in good standing
        scale = float(np.finfo(np.float32).max)
        huge = DenseQuantized(8, scale, np.full(model.vector.dim, 127, dtype=np.int8))
        return encode_message(Gradient(epoch=model.epoch, version=model.version, vector=huge))

    x0 = np.zeros(A9A.features_count)
    async with Master(BRIEF, x0, workers=3) as master:
        assert master.coordinator is not None
        host, port = master.address
        tasks = start_workers(host, port, [0, 1], 3)
        data = part(2, 3)
        session = RogueSession(data.features, data.labels, name="overflow", forge=forge, nth=3)
        rogue = await asyncio.wait_for(rogue_worker(host, port, data, session), TIMEOUT)
        summary = (await master.wait(TIMEOUT)).to_json()
        results = await finish(tasks, TIMEOUT)
        x = master.coordinator.state.x
    check_trained(summary, [*results, rogue], BRIEF)
    assert summary["staleness"]["dropped"].get("outlier") == 1, summary["staleness"]
    assert summary["traffic"]["messages"]["down"].get("ERROR") == 1
    assert np.isfinite(x).all()
    assert full_loss(x) <= optimum() * (1 + 10 * GAP)


@pytest.mark.asyncio
async def test_gradient_of_another_encoding_removes_its_sender() -> None:
    """A RAW_F64 gradient in an 8-bit AsyLPG run is not what this run sends: the worker is removed."""

    def forge(model: ModelMessage, session: WorkerSession) -> bytes:
        session.connection._epoch.outstanding = None
        vector = RawVector(np.full(model.vector.dim, 1e300))
        return encode_message(Gradient(epoch=model.epoch, version=model.version, vector=vector))

    x0 = np.zeros(A9A.features_count)
    async with Master(BRIEF, x0, workers=3) as master:
        assert master.coordinator is not None
        host, port = master.address
        tasks = start_workers(host, port, [0, 1], 3)
        data = part(2, 3)
        session = RogueSession(data.features, data.labels, name="f64", forge=forge, nth=3)
        rogue = await asyncio.wait_for(rogue_worker(host, port, data, session), TIMEOUT)
        summary = (await master.wait(TIMEOUT)).to_json()
        results = await finish(tasks, TIMEOUT)
        x = master.coordinator.state.x
    check_trained(summary, results, BRIEF)
    assert rogue.code == ErrorCode.INVALID_PAYLOAD and "RawVector" in rogue.reason, rogue
    assert summary["staleness"]["dropped"].get("refused") == 1
    assert np.isfinite(x).all()
