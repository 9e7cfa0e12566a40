"""The master's listening sockets (aiodq.net.listener): what ``Listener.close`` leaves open and delivers.

Each test serves on 127.0.0.1, port 0.  "Closed" is read from the client's side after ``close``
has returned, with the loop no longer running: only a socket the listener closed already shows
its end then.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from aiodq.net.listener import Listener


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
    started = asyncio.Event()

    async def waits(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started.set()
        await reader.read()

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
    started = asyncio.Event()

    async def waits(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started.set()
        await reader.read()

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
async def test_a_cancelled_close_still_stops_the_server() -> None:
    """``close`` cancelled while the server stops: the server closes anyway; ``close`` can be called again."""

    async def nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener, address = await _listener(nothing)
    closing = asyncio.create_task(listener.close())
    # Until the close has begun to stop the server and waits for it: a loop iteration at a time,
    # since the stop takes two.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while listener._stopping is None:
        assert loop.time() < deadline, "the close did not begin to stop the server within 10 s"
        await asyncio.sleep(0)
    assert not listener._stopping.done()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await listener.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5.0).close()


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
