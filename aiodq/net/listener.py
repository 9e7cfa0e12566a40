"""The master's listening sockets: the connections they accept are closed when :meth:`Listener.close` returns.

Two things in asyncio leave an accepted socket open past a server's close:

- The selector loop accepts a connection in one loop iteration and builds its transport in
  the next.  A server closed in between makes ``Server._attach`` fail an assertion on
  CPython 3.11 (the server has no sockets any more), and the accepted socket is never
  closed: it stays open until the garbage collector finds it, with a ResourceWarning.
- A transport's ``close`` or ``abort`` only schedules the socket's close, for a later loop
  iteration; a caller that returns at once (and a loop that stops then) leaves it open.

So :meth:`Listener.close` takes the listening sockets off the loop first, lets the
connections already accepted build their transports while the server is still open, and
closes the server.  Then it waits, up to its timeout, until every connection it accepted has
been lost: one being closed gracefully has that long to deliver what was written to it (a
final CLOSE frame, say); any other is aborted at once, one whose protocol was made but not yet
connected as soon as it connects.  What is left at the timeout is aborted.  (uvloop builds the
transport in the accept itself; taking its sockets off the loop does nothing there, and the
rest applies as it is.)

Before that, :meth:`Listener.linger` closes a connection after what was written to it, but
aborts it if that takes longer than a timeout, or if the bytes waiting in every connection
being closed so would pass a budget: a peer that never reads must not keep its connection, and
what was queued for it, for as long as the master runs (an attack review: an admitted worker
that joined, sent CLOSE and never read, 150 times over, left the master holding 167 sockets and
862 MB, 131 MB before).

A TLS connection is known from the end of its handshake: one still in its handshake is the
loop's to close, at the handshake timeout (and on CPython 3.12 and later ``wait_closed``, at
the end, waits for it).  Its protocol is not counted as pending: the loop never tells the
protocol of a handshake that failed, and a close used to wait out its whole timeout for every
such connection of the run (a TLS master that had refused one worker took 10 s more to stop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

__all__ = ["Listener"]

#: What the listener calls for each accepted connection, as :func:`asyncio.start_server` does.
ConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _TrackedProtocol(asyncio.StreamReaderProtocol):
    """:func:`asyncio.start_server`'s protocol, known to the listener from its making to its loss."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        connected: ConnectedCallback,
        loop: asyncio.AbstractEventLoop,
        listener: Listener,
    ) -> None:
        super().__init__(reader, connected, loop=loop)
        self._listener = listener
        self._tracked: asyncio.Transport | None = None
        self._pending = not listener.tls  # (module docstring)
        listener._pending += self._pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tracked = cast(asyncio.Transport, transport)  # a stream server's: it can be aborted
        self._listener._made(self._tracked, pending=self._pending)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self._tracked is not None:
                self._listener._lost(self._tracked)


class Listener:
    """A TCP server for stream handlers, like :func:`asyncio.start_server`'s (module docstring)."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Transport] = set()
        #: Connections being closed by :meth:`linger`, each with the timer that aborts it.
        self._lingering: dict[asyncio.WriteTransport, asyncio.TimerHandle] = {}
        #: Protocols made for an accepted connection, not yet connected to its transport.
        self._pending = 0
        self._closing = False
        #: Set whenever an accepted connection is lost.
        self._changed = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        #: True if the connections are TLS (the ``ssl`` of :meth:`start`).
        self.tls = False

    async def start(
        self, connected: ConnectedCallback, host: str, port: int, *, limit: int, **kwds: Any
    ) -> None:
        """Listen on ``host``:``port`` and call ``connected`` for each connection (``kwds``: TLS options)."""
        loop = asyncio.get_running_loop()
        self._changed, self._stopping, self._closing = asyncio.Event(), None, False  # a new loop's
        self.tls = kwds.get("ssl") is not None

        def protocol() -> _TrackedProtocol:
            return _TrackedProtocol(asyncio.StreamReader(limit=limit, loop=loop), connected, loop, self)

        self._server = await loop.create_server(protocol, host, port, **kwds)

    @property
    def sockets(self) -> tuple[Any, ...]:
        """The listening sockets."""
        return tuple(self._server.sockets) if self._server is not None else ()

    def stop_accepting(self) -> None:
        """Accept no more connections; the server closes in the background (:meth:`close` waits for it)."""
        if self._stopping is None and self._server is not None:
            self._stopping = asyncio.create_task(self._stop(self._server), name="aiodq-listener-stop")

    async def close(self, timeout: float = 1.0) -> None:
        """Stop accepting, and wait until every accepted connection is lost (module docstring).

        ``timeout``: seconds that connections being closed gracefully have to finish; the
        others are aborted at once, and whatever is still open then is aborted.
        """
        self.stop_accepting()
        if self._stopping is not None:
            # Shielded: a cancelled close must not leave the server half stopped (_stop closes it).
            await asyncio.shield(self._stopping)
        self._closing = True
        for transport in list(self._open):
            if not transport.is_closing():
                transport.abort()  # nobody is closing it: nothing was written to it to deliver
        try:
            async with asyncio.timeout(timeout):
                await self._until_lost(pending=True)
        except TimeoutError:
            for transport in list(self._open):
                transport.abort()
            # An abort closes the socket in the loop's next iteration.  A protocol still pending
            # now belongs to an accept that failed to build its transport: nothing to wait for.
            await self._until_lost(pending=False)
        if self._server is not None:
            await self._server.wait_closed()

    def linger(self, transport: asyncio.WriteTransport, timeout: float, budget: int) -> None:
        """Close ``transport`` once what was written to it is sent, within ``timeout`` seconds.

        It is aborted at once instead if the bytes still to send on the connections being
        closed so, its own included, are more than ``budget``; and at ``timeout`` if it is
        still open then.
        """
        transport.close()
        waiting = transport.get_write_buffer_size()
        if not waiting:
            return  # (closed in the loop's next iteration)
        if waiting + sum(other.get_write_buffer_size() for other in self._lingering) > budget:
            transport.abort()
            return
        self._lingering[transport] = asyncio.get_running_loop().call_later(timeout, transport.abort)

    async def _until_lost(self, *, pending: bool) -> None:
        """Until no accepted connection is open (nor, with ``pending``, about to connect)."""
        while self._open or (pending and self._pending):
            self._changed.clear()
            await self._changed.wait()

    async def _stop(self, server: asyncio.Server) -> None:
        loop = asyncio.get_running_loop()
        try:
            for sock in server.sockets:
                loop.remove_reader(sock)  # no accept after this (a no-op on uvloop, whose accepts are whole)
            # An accept made before the line above builds its transport in this coroutine's first
            # iteration at the latest; one more yields to it before the server closes.
            await asyncio.sleep(0)
        finally:
            server.close()

    def _made(self, transport: asyncio.Transport, *, pending: bool) -> None:
        self._pending -= pending
        self._open.add(transport)
        if self._closing:
            transport.abort()  # accepted while closing: nothing is served on it

    def _lost(self, transport: asyncio.Transport) -> None:
        self._open.discard(transport)
        if (timer := self._lingering.pop(transport, None)) is not None:
            timer.cancel()
        self._changed.set()
