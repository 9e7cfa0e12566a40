"""The master's listening sockets (aiodq.net.listener): what ``Listener.close`` leaves open and delivers.

Each test serves on 127.0.0.1, port 0.  "Closed" is read from the client's side after ``close``
has returned, with the loop no longer running: only a socket the listener closed already shows
its end then.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import trustme

from aiodq.net.listener import CUT_SHORT, ConnectedCallback, Listener, _Accepted, _TrackedProtocol


def _ends(client: socket.socket, timeout: float = 2.0) -> bytes | None:
    """Everything the client still receives up to the end of the stream; None if it does not end."""
    client.settimeout(timeout)
    received = b""
    while True:
        try:
            data = client.recv(1 << 16)
        except ConnectionResetError:
            return received
        except TimeoutError:
            return None
        if not data:
            return received
        received += data


def _waiting() -> tuple[asyncio.Event, ConnectedCallback]:
    """A handler that reads each connection to its end, and the event it sets when one has started."""
    started = asyncio.Event()

    async def waits(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started.set()
        await reader.read()

    return started, waits


async def _listener(callback: object) -> tuple[Listener, tuple[str, int]]:
    listener = Listener()
    await listener.start(callback, "127.0.0.1", 0, limit=1 << 16)  # type: ignore[arg-type]
    host, port = listener.sockets[0].getsockname()[:2]
    return listener, (host, port)


@pytest.mark.asyncio
async def test_a_connection_nobody_closes_is_aborted_at_once() -> None:
    """Its handler waits on it for ever: ``close`` aborts it without waiting out its timeout.

    The client sees the end long before the 60 s a connection being closed gracefully would have.
    """
    started, waits = _waiting()

    listener, address = await _listener(waits)
    reader, writer = await asyncio.open_connection(*address)
    await asyncio.wait_for(started.wait(), 10)
    closing = asyncio.create_task(listener.close(timeout=60.0))
    assert await asyncio.wait_for(reader.read(), 10) == b""
    await asyncio.wait_for(closing, 10)
    writer.close()


@pytest.mark.asyncio
async def test_a_connection_nobody_closes_is_closed_when_close_returns() -> None:
    """With the loop stopped after ``close``, the client still sees the end: the socket is closed already."""
    started, waits = _waiting()

    listener, address = await _listener(waits)
    with socket.create_connection(address) as client:
        await asyncio.wait_for(started.wait(), 10)
        await listener.close(timeout=5.0)
        assert _ends(client) == b""


@pytest.mark.asyncio
async def test_a_connection_being_closed_delivers_what_it_was_sent() -> None:
    """16 MiB written and the writer closed before the client reads: ``close`` waits while it drains."""
    payload = b"x" * (16 << 20) + b"END"
    written = asyncio.Event()

    async def sends(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        writer.close()  # graceful: the transport still holds most of the payload
        written.set()

    listener, address = await _listener(sends)
    reader, writer = await asyncio.open_connection(*address)
    await asyncio.wait_for(written.wait(), 10)
    closing = asyncio.create_task(listener.close(timeout=30.0))
    received = await reader.read()
    await closing
    writer.close()
    assert len(received) == len(payload) and received.endswith(b"END")


@pytest.mark.asyncio
async def test_a_cancelled_close_has_stopped_accepting_and_can_be_called_again() -> None:
    """``close`` cancelled while it waits for a connection to be lost: the listening socket is closed
    already (a new connection is refused), and a second ``close`` ends the connection."""
    started, waits = _waiting()

    listener, address = await _listener(waits)
    with socket.create_connection(address) as client:
        await asyncio.wait_for(started.wait(), 10)
        closing = asyncio.create_task(listener.close())
        # Until the close has begun: it has stopped accepting, and waits for the aborted connection's loss.
        await _until(lambda: listener._closing, "the close begun")
        assert not closing.done()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert not listener.sockets
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5.0).close()
        await listener.close()
        assert _ends(client) == b""


@pytest.mark.asyncio
async def test_a_peer_that_never_reads_loses_its_connection_at_the_timeout_or_over_the_budget() -> None:
    """``linger`` (an attack review: a worker that joined, sent CLOSE and never read, over and over, kept
    every connection and its unsent 5 MB SNAPSHOT for as long as the master ran): the bytes the kernel
    does not take stay with the transport; a connection is aborted at its timeout, or at once where the
    connections lingering would hold more than the budget, and one whose peer reads is closed after
    all of it, as ``close`` is."""
    payload = b"x" * (16 << 20) + b"END"
    asks: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
    lingered: asyncio.Queue[asyncio.Transport] = asyncio.Queue()

    async def sends(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        timeout, budget = await asks.get()
        writer.write(payload)
        listener.linger(writer.transport, timeout, budget)
        await lingered.put(writer.transport)  # type: ignore[arg-type]

    listener, address = await _listener(sends)
    loop = asyncio.get_running_loop()

    async def connect(timeout: float, budget: int) -> tuple[socket.socket, asyncio.Transport]:
        await asks.put((timeout, budget))
        client = socket.create_connection(address)
        return client, await asyncio.wait_for(lingered.get(), 10)

    first, kept = await connect(60.0, 1 << 30)
    assert kept.get_write_buffer_size() > 1 << 20  # (what the kernel's buffers did not take)
    # Over the budget with the first one's bytes: aborted at once, not after its 60 s.
    second, aborted = await connect(60.0, 1 << 20)
    assert aborted not in listener._lingering
    cut = await asyncio.wait_for(loop.run_in_executor(None, _ends, second, 10.0), 20)
    assert cut is not None and len(cut) < len(payload)  # the end came before the payload did
    # Within the budget, a short timeout: aborted at it, the client reading nothing meanwhile.
    began = loop.time()
    third, aborted = await connect(0.5, 1 << 30)
    async with asyncio.timeout(10):  # (not aborted within 10 s of its 0.5 s timeout: a failure)
        while aborted in listener._open:
            listener._changed.clear()  # (set whenever an accepted connection is lost)
            await listener._changed.wait()
    assert loop.time() - began >= 0.5
    cut = await asyncio.wait_for(loop.run_in_executor(None, _ends, third, 10.0), 20)
    assert cut is not None and len(cut) < len(payload)
    assert kept in listener._open  # the first still lingers
    # A peer that reads gets everything, then the end of the stream.
    fourth, _ = await connect(60.0, 1 << 30)
    received = await asyncio.wait_for(loop.run_in_executor(None, _ends, fourth, 10.0), 30)
    assert received == payload
    await listener.close(timeout=1.0)  # (the first, still lingering, has that long, then is aborted)
    assert kept not in listener._open
    for client in (first, second, third, fourth):
        client.close()


# -- admission and TLS handshakes (the listener's own accept loop) --------------------------------


@pytest.fixture(scope="module")
def tls() -> dict[str, ssl.SSLContext]:
    """A server context for 127.0.0.1, a client that trusts it and one that does not."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client, stranger = ssl.create_default_context(), ssl.create_default_context()
    ca.configure_trust(client)
    trustme.CA().configure_trust(stranger)
    return {"server": server, "client": client, "stranger": stranger}


def _on(loop: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario`` on asyncio's loop or on uvloop (the CLI's)."""
    factory = None
    if loop == "uvloop":
        factory = pytest.importorskip(
            "uvloop", reason="uvloop is not installed on this platform"
        ).new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


def _serving() -> tuple[asyncio.Event, ConnectedCallback]:
    """A handler that closes each connection at once, and the event it sets when it has served one."""
    served = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.set()
        writer.close()

    return served, handler


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Until ``condition()`` holds, a loop iteration at a time (a failure after ``timeout`` seconds)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0)
    assert condition(), what


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_tls_handshake_counts_until_it_ends(loop: str, tls: dict[str, ssl.SSLContext]) -> None:
    """A connection in its TLS handshake is counted in ``handshaking`` from its accept until it ends; one
    that times out, or fails on this side (a plain-text peer), is reported; an asyncio client that gives
    up the handshake itself (it sends no alert) is not; a good one is served."""

    async def scenario() -> None:
        refused: list[tuple[str, str | None]] = []
        served, handler = _serving()

        listener = Listener(refused=lambda why, peer: refused.append((why, peer)))
        await listener.start(handler, "127.0.0.1", 0, limit=1 << 16, tls=(tls["server"], 0.5))
        address = listener.sockets[0].getsockname()[:2]
        loop_ = asyncio.get_running_loop()
        silent = socket.create_connection(address)
        await _until(lambda: listener.handshaking == 1, "the silent peer counted")
        began = loop_.time()
        await _until(lambda: refused == [("TLS handshake timed out", "127.0.0.1")], "its timeout", 10.5)
        assert loop_.time() - began < 5 and listener.handshaking == 0
        assert await loop_.run_in_executor(None, _ends, silent) == b""
        with socket.create_connection(address) as plain:
            plain.sendall(b"\x00" * 64)  # (not a ClientHello)
            await _until(lambda: len(refused) == 2, "the plain-text peer")
        assert refused[1] == ("TLS handshake failed (WRONG_VERSION_NUMBER)", "127.0.0.1")
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(*address, ssl=tls["stranger"])
        await _until(lambda: listener.handshaking == 0, "the stranger's handshake ended")
        _, writer = await asyncio.open_connection(*address, ssl=tls["client"])
        await asyncio.wait_for(served.wait(), 10)
        assert listener.handshaking == 0 and len(refused) == 2  # (the stranger gave up: not counted)
        writer.close()
        await listener.close()
        silent.close()

    _on(loop, scenario)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_tls_handshake_in_flight_is_closed_when_close_returns(
    loop: str, tls: dict[str, ssl.SSLContext]
) -> None:
    """A peer that never sends its ClientHello, against a 300 s handshake timeout: ``close`` ends its
    handshake at once (not counted as refused), and its socket is closed by the time it returns."""

    async def scenario() -> None:
        refused: list[tuple[str, str | None]] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raise AssertionError("no handshake completes")

        listener = Listener(refused=lambda why, peer: refused.append((why, peer)))
        await listener.start(handler, "127.0.0.1", 0, limit=1 << 16, tls=(tls["server"], 300.0))
        with socket.create_connection(listener.sockets[0].getsockname()[:2]) as client:
            await _until(lambda: listener.handshaking == 1, "the peer counted")
            await asyncio.wait_for(listener.close(timeout=60.0), 10)
            assert _ends(client) == b""
        assert listener.handshaking == 0 and refused == [] and not listener.sockets

    _on(loop, scenario)


@pytest.mark.asyncio
async def test_admit_decides_at_accept_and_a_failing_admit_closes_one_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``admit`` sees each peer's address before anything is read: a refused connection is closed at
    once and never served; one whose ``admit`` raised is closed and logged, and the next is served."""
    verdicts = iter([False, "raise", True])
    asked: list[str | None] = []
    served = asyncio.Event()

    def admit(peer: str | None) -> bool:
        asked.append(peer)
        verdict = next(verdicts)
        if verdict == "raise":
            raise RuntimeError("a bug in admit")
        return bool(verdict)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.set()
        await reader.read()

    listener = Listener(admit=admit)
    await listener.start(handler, "127.0.0.1", 0, limit=1 << 16)
    address = listener.sockets[0].getsockname()[:2]
    loop = asyncio.get_running_loop()
    for _ in range(2):
        with socket.create_connection(address) as refused:
            assert await loop.run_in_executor(None, _ends, refused) == b""
    assert not served.is_set() and asked == ["127.0.0.1", "127.0.0.1"]
    assert "admitting a connection from 127.0.0.1 failed; it is closed" in caplog.text
    _, writer = await asyncio.open_connection(*address)
    await asyncio.wait_for(served.wait(), 10)
    writer.close()
    await listener.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("code", [errno.EMFILE, errno.EPROTO])
async def test_an_accept_that_fails_pauses_accepting_only_for_want_of_resources(
    code: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors (EMFILE, injected once): the error is logged, and accepting goes on
    after a pause (asyncio's servers pause 1 s too) rather than spinning or stopping for good.  A
    connection's own error (EPROTO: Linux's accept can report one): the next is accepted at once,
    with nothing logged."""
    loop = asyncio.get_running_loop()
    accept = socket.socket.accept
    failures = [OSError(code, os.strerror(code))]

    def failing_once(sock: socket.socket) -> tuple[socket.socket, Any]:
        if failures:
            raise failures.pop()
        return accept(sock)

    monkeypatch.setattr(socket.socket, "accept", failing_once)
    served, handler = _serving()

    listener = Listener()
    await listener.start(handler, "127.0.0.1", 0, limit=1 << 16)
    began = loop.time()
    _, writer = await asyncio.open_connection(*listener.sockets[0].getsockname()[:2])
    await asyncio.wait_for(served.wait(), 10)
    assert not failures
    if code == errno.EMFILE:
        assert loop.time() - began >= 0.9  # (after the pause)
        assert "cannot accept a connection: Too many open files; trying again in 1 s" in caplog.text
    else:
        assert not listener._paused and "cannot accept" not in caplog.text
    writer.close()
    await listener.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connection_past_the_tls_limit_cuts_the_oldest_handshake_short(
    loop: str, tls: dict[str, ssl.SSLContext]
) -> None:
    """tls_limit 2: a third silent peer ends the first one's handshake at once (reported), not the
    newcomer; a good client that comes while two silent ones hold the limit is served at once."""

    async def scenario() -> None:
        refused: list[tuple[str, str | None]] = []
        served, handler = _serving()

        listener = Listener(refused=lambda why, peer: refused.append((why, peer)), tls_limit=2)
        await listener.start(handler, "127.0.0.1", 0, limit=1 << 16, tls=(tls["server"], 300.0))
        address = listener.sockets[0].getsockname()[:2]
        loop_ = asyncio.get_running_loop()
        first = socket.create_connection(address)
        await _until(lambda: listener.handshaking == 1, "the first counted")
        second, third = socket.create_connection(address), socket.create_connection(address)
        await _until(lambda: refused == [(CUT_SHORT, "127.0.0.1")], "the first cut short")
        assert await loop_.run_in_executor(None, _ends, first) == b""
        assert listener.handshaking == 2
        _, writer = await asyncio.open_connection(*address, ssl=tls["client"])
        await asyncio.wait_for(served.wait(), 10)
        assert len(refused) == 2 and listener.handshaking == 1  # (the second made room for it)
        writer.close()
        await listener.close()
        for peer in (first, second, third):
            peer.close()

    _on(loop, scenario)


@pytest.mark.asyncio
async def test_an_address_the_system_cannot_use_is_skipped_when_another_is_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As asyncio's servers: a host that resolves to ::1 and 127.0.0.1 on a system without IPv6
    (EAFNOSUPPORT making the socket) or that cannot bind ::1 (EADDRNOTAVAIL) listens on 127.0.0.1;
    with no address left, the error is raised.  (Simulated: ::1 is never bound.)"""
    loop = asyncio.get_running_loop()
    real = socket.socket
    both = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
    ]

    async def resolves(host: Any, port: Any, **kwds: Any) -> list[Any]:
        return both

    class Unbindable(real):  # type: ignore[misc, valid-type]
        def bind(self, address: Any) -> None:
            raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))

    def no_family(family: int, *args: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return real(family, *args)

    def cannot_bind(family: int, *args: Any) -> socket.socket:
        return (Unbindable if family == socket.AF_INET6 else real)(family, *args)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    monkeypatch.setattr(loop, "getaddrinfo", resolves)
    for fake in (no_family, cannot_bind):
        listener = Listener()
        with monkeypatch.context() as patched:
            patched.setattr(socket, "socket", fake)
            await listener.start(handler, "localhost", 0, limit=1 << 16)
        assert [sock.getsockname()[0] for sock in listener.sockets] == ["127.0.0.1"]
        await listener.close()
    both.pop()
    for fake, code in ((no_family, errno.EAFNOSUPPORT), (cannot_bind, errno.EADDRNOTAVAIL)):
        with monkeypatch.context() as patched:
            patched.setattr(socket, "socket", fake)
            with pytest.raises(OSError) as raised:
                await Listener().start(handler, "localhost", 0, limit=1 << 16)
        assert raised.value.errno == code


@pytest.mark.asyncio
async def test_an_admit_that_stops_the_listener_ends_its_accepting_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``admit`` may stop the listener (a run that ends as a connection arrives): the connection is
    closed, accepting stops there, and nothing is logged as an error."""
    listener: Listener

    def admit(peer: str | None) -> bool:
        listener.stop_accepting()
        return True

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise AssertionError("nothing is served")

    listener = Listener(admit=admit)
    await listener.start(handler, "127.0.0.1", 0, limit=1 << 16)
    address = listener.sockets[0].getsockname()[:2]
    loop = asyncio.get_running_loop()
    with socket.create_connection(address) as client:
        assert await loop.run_in_executor(None, _ends, client) == b""
    assert not listener.sockets and listener.handshaking == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5.0).close()
    await listener.close()
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING], caplog.text


@pytest.mark.asyncio
async def test_a_connection_the_loop_cannot_take_is_closed_and_uncounted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tls: dict[str, ssl.SSLContext]
) -> None:
    """``connect_accepted_socket`` failing before it made a protocol (a review: the socket stayed open
    and counted for good): the connection is closed, no longer counted, and the failure logged.  A TLS
    handshake timeout that is not positive is refused at ``start``."""
    with pytest.raises(ValueError, match=r"^the TLS handshake timeout must be positive, got 0$"):
        await Listener().start(_serving()[1], "127.0.0.1", 0, limit=1 << 16, tls=(tls["server"], 0))
    loop = asyncio.get_running_loop()

    async def fails(*args: Any, **kwds: Any) -> Any:
        raise RuntimeError("the loop's own bug")

    monkeypatch.setattr(loop, "connect_accepted_socket", fails)
    listener = Listener()
    await listener.start(_serving()[1], "127.0.0.1", 0, limit=1 << 16)
    with socket.create_connection(listener.sockets[0].getsockname()[:2]) as client:
        assert await loop.run_in_executor(None, _ends, client) == b""
    await _until(lambda: listener.handshaking == 0 and not listener._handshakes, "the failure handled")
    assert "connection from 127.0.0.1: the event loop could not take it" in caplog.text
    await listener.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_handshake_cut_short_is_of_the_address_with_the_most(
    loop: str, tls: dict[str, ssl.SSLContext]
) -> None:
    """tls_limit 3: a silent connection from 127.0.0.1, then silent ones from 127.0.0.2 (a client's source
    address on the loopback; the listener is on 127.0.0.1): the third and fourth of 127.0.0.2 cut its own
    oldest short, not 127.0.0.1's, the oldest of all (a review: cutting the oldest of any address let a
    flood from one address cut other hosts' handshakes)."""

    async def scenario() -> None:
        refused: list[tuple[str, str | None]] = []
        listener = Listener(refused=lambda why, peer: refused.append((why, peer)), tls_limit=3)
        await listener.start(_serving()[1], "127.0.0.1", 0, limit=1 << 16, tls=(tls["server"], 300.0))
        address = listener.sockets[0].getsockname()[:2]

        def connect(source: str) -> socket.socket:
            return socket.create_connection(address, source_address=(source, 0))

        other = connect("127.0.0.1")  # (the oldest of all)
        await _until(lambda: listener.handshaking == 1, "the first counted")
        flood = [connect("127.0.0.2") for _ in range(3)]
        await _until(lambda: len(refused) == 1, "one cut short")
        flood.append(connect("127.0.0.2"))
        await _until(lambda: len(refused) == 2, "another cut short")
        assert refused == [(CUT_SHORT, "127.0.0.2")] * 2 and listener.handshaking == 3
        loop_ = asyncio.get_running_loop()
        for cut in flood[:2]:
            assert await loop_.run_in_executor(None, _ends, cut) == b""
        assert await loop_.run_in_executor(None, _ends, other, 0.2) is None  # (in its handshake: no end)
        await listener.close()
        for peer in (*flood, other):
            peer.close()

    _on(loop, scenario)


@pytest.mark.asyncio
async def test_a_connection_cut_short_as_its_handshake_ends_is_aborted_not_served() -> None:
    """The race a review forced: the loop completes a TLS handshake (connection_made) in the iteration
    in which a newer connection cut it short.  Its protocol aborts it and starts no handler; it does
    not take a place for the 30 s a graceful TLS close would wait."""
    served: list[asyncio.StreamWriter] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(writer)

    class Transport(asyncio.Transport):
        aborted = False

        def abort(self) -> None:
            self.aborted = True

        def is_closing(self) -> bool:
            return self.aborted

    listener = Listener()
    listener._connected = handler
    with socket.socket() as conn:
        accepted = _Accepted(listener, conn, "127.0.0.2", 0.0)
        assert accepted.release()  # (cut short)
        transport = Transport()
        protocol = _TrackedProtocol(asyncio.StreamReader(), listener, accepted)
        protocol.connection_made(transport)
        assert protocol._task is None  # (no handler task: connection_made creates it when it serves)
        assert transport.aborted and not served and listener.handshaking == 0
        protocol.connection_lost(None)
        assert not listener._open
