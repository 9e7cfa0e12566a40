"""The master's listening sockets: every connection they accept is closed when :meth:`Listener.close` returns.

Two things in asyncio leave an accepted socket open past a server's close:

- The selector loop accepts a connection in one loop iteration and builds its transport in
  the next.  A server closed in between makes ``Server._attach`` fail an assertion on
  CPython 3.11 (the server has no sockets any more), and the accepted socket is never
  closed: it stays open until the garbage collector finds it, with a ResourceWarning.
- A transport's ``close`` or ``abort`` only schedules the socket's close, for a later loop
  iteration; a caller that returns at once (and a loop that stops then) leaves it open.

So :meth:`Listener.close` takes the listening sockets off the loop first, lets the
connections already accepted build their transports while the server is still open, closes
the server, aborts every transport it accepted that is still open, and waits until each has
been lost.  (uvloop builds the transport in the accept itself; taking its sockets off the loop
does nothing there, and the rest applies as it is.)  A TLS connection is known from the end of
its handshake: one still in its handshake is the loop's to close, at the handshake timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

__all__ = ["Listener"]

#: What the listener calls for each accepted connection, as :func:`asyncio.start_server` does.
ConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _TrackedProtocol(asyncio.StreamReaderProtocol):
    """:func:`asyncio.start_server`'s protocol, its transport known to the listener while open."""

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tracked = cast(asyncio.Transport, transport)  # a stream server's: it can be aborted
        self._listener._made(self._tracked)
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
        self._changed: asyncio.Event | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(
        self, connected: ConnectedCallback, host: str, port: int, *, limit: int, **kwds: Any
    ) -> None:
        """Listen on ``host``:``port`` and call ``connected`` for each connection (``kwds``: TLS options)."""
        loop = asyncio.get_running_loop()
        self._changed, self._stopping = asyncio.Event(), None

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
        """Stop accepting, abort the accepted connections still open, and wait until each is lost.

        ``timeout``: seconds to wait for the connections at most.
        """
        self.stop_accepting()
        if self._stopping is not None:
            await self._stopping
        for transport in list(self._open):
            transport.abort()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._open and self._changed is not None:
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break
        if self._server is not None:
            await self._server.wait_closed()

    async def _stop(self, server: asyncio.Server) -> None:
        loop = asyncio.get_running_loop()
        for sock in server.sockets:
            loop.remove_reader(sock)  # no accept after this one (a no-op on uvloop, whose accepts are whole)
        # An accept already made in this iteration builds its transport in the next one, as a task
        # that this coroutine's first yield may precede; after a second yield every such task has run.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        server.close()

    def _made(self, transport: asyncio.Transport) -> None:
        self._open.add(transport)

    def _lost(self, transport: asyncio.Transport) -> None:
        self._open.discard(transport)
        if self._changed is not None:
            self._changed.set()
