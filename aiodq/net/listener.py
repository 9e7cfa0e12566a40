"""The master's listening sockets: admission before any TLS handshake; no connection left open.

The listener accepts connections itself, as asyncio's servers do (a reader callback on each
listening socket, taking at most the backlog at a time), and asks its ``admit`` callback about
each, with the peer's address, before anything is read from it: one refused is closed at once.
An admitted one is handed to the loop (``loop.connect_accepted_socket``), which runs its TLS
handshake, if any, within the handshake timeout.  It is counted in :attr:`Listener.unserved` from
its accept until its handler starts, so a caller's bound on the connections that are not yet
members of its run covers those still in their TLS handshake.  (With the loop's own TLS server the
handshake came before the caller saw the connection: a security audit held 1,000 silent
connections from one address open on a TLS master whose limit was 8, each until the handshake
timeout.)  A handshake that fails on this side (an :class:`ssl.SSLError`: a client certificate
refused, a plain-text peer) or times out is reported to ``refused``; one the peer gives up (a
reset: it did not trust the master's certificate) is not.  An accept that fails for want of
resources (no file descriptors left, say) is logged and accepting pauses for a second, as in
asyncio's servers, rather than spinning on it.

:meth:`Listener.stop_accepting` closes the listening sockets at once.  :meth:`Listener.close`
does that, ends the handshakes still running (the loop closes their sockets; one accepted but not
yet handed to the loop is closed here), and waits, up to its timeout, until every connection it
accepted has been lost: one being closed gracefully has that long to deliver what was written to
it (a final CLOSE frame, say); any other is aborted at once, and one made while closing as soon
as it connects.  What is left at the timeout is aborted.  (A transport's ``close`` or ``abort``
only schedules the socket's close, for a later loop iteration: a caller that returned at once,
and a loop that stopped then, would leave it open.)

Before that, :meth:`Listener.linger` closes a connection after what was written to it, but
aborts it if that takes longer than a timeout, or if the bytes waiting in every connection
being closed so would pass a budget: a peer that never reads must not keep its connection, and
what was queued for it, for as long as the master runs (an attack review: an admitted worker
that joined, sent CLOSE and never read, 150 times over, left the master holding 167 sockets and
862 MB, 131 MB before).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

__all__ = ["Listener"]

_log = logging.getLogger("aiodq.master")

#: What the listener calls for each accepted connection, as :func:`asyncio.start_server` does.
ConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
#: Whether to serve a connection just accepted from an address (None: unknown).
AdmitCallback = Callable[[str | None], bool]
#: A TLS handshake that failed on this side, or timed out: why, and the peer's address.
RefusedCallback = Callable[[str, str | None], None]

#: Seconds the accept loop pauses after an error other than a peer's reset (out of file descriptors,
#: say), as asyncio's own servers do: it must not spin on it.
_ACCEPT_PAUSE = 1.0
_BACKLOG = 100


class _Accepted:
    """A connection admitted: counted in :attr:`Listener.unserved` until :meth:`release` (once)."""

    def __init__(self, listener: Listener, conn: socket.socket, peer: str | None) -> None:
        self.conn, self.peer = conn, peer
        #: Given to the loop (``connect_accepted_socket``), which closes it from then on.
        self.handed = False
        self._listener: Listener | None = listener
        listener.unserved += 1

    def release(self) -> None:
        if self._listener is not None:
            self._listener.unserved -= 1
            self._listener = None


class _TrackedProtocol(asyncio.StreamReaderProtocol):
    """:func:`asyncio.start_server`'s protocol, known to the listener from its connection to its loss."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
        listener: Listener,
        place: _Accepted,
    ) -> None:
        super().__init__(reader, self._serve, loop=loop)
        self._listener, self._place = listener, place
        self._tracked: asyncio.Transport | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._place.release()  # (in the same step as the handler's first: never counted twice, or not at all)
        await self._listener._connected(reader, writer)

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

    def __init__(self, *, admit: AdmitCallback | None = None, refused: RefusedCallback | None = None) -> None:
        """Ask ``admit`` (by default: yes) before any TLS handshake; tell ``refused`` of one failed here.

        ``refused`` hears of a TLS handshake that failed on this side or timed out (module docstring).
        """
        self._admit = admit or (lambda peer: True)
        self._refused = refused or (lambda why, peer: None)
        self._sockets: list[socket.socket] = []
        #: Accepting paused after an error: the timer that resumes it, by listening socket.
        self._paused: dict[socket.socket, asyncio.TimerHandle] = {}
        self._handshakes: dict[asyncio.Task[None], _Accepted] = {}
        self._open: set[asyncio.Transport] = set()
        #: Connections being closed by :meth:`linger`, each with the timer that aborts it.
        self._lingering: dict[asyncio.WriteTransport, asyncio.TimerHandle] = {}
        self._closing = False
        #: Set whenever an accepted connection is lost.
        self._changed = asyncio.Event()
        self._connected: ConnectedCallback
        self._limit = 1 << 16
        self._tls: dict[str, Any] = {}
        #: Connections admitted whose handler has not started: in their TLS handshake, mostly.
        self.unserved = 0

    @property
    def tls(self) -> bool:
        """True if the connections are TLS (the ``tls`` of :meth:`start`)."""
        return bool(self._tls)

    async def start(
        self,
        connected: ConnectedCallback,
        host: str | None,
        port: int,
        *,
        limit: int,
        tls: tuple[ssl.SSLContext, float] | None = None,
    ) -> None:
        """Listen on ``host``:``port`` and call ``connected`` for each connection admitted.

        ``limit``: the stream readers' buffer limit; ``tls``: a server context, and the seconds
        its handshake may take.

        Raises:
            OSError: if ``host``:``port`` cannot be listened on (the port taken, say).
        """
        self._changed, self._closing = asyncio.Event(), False  # (a new loop's)
        self._connected, self._limit = connected, limit
        self._tls = {} if tls is None else {"ssl": tls[0], "ssl_handshake_timeout": tls[1]}
        self._sockets = await _bind(host, port)
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.add_reader(sock, self._accept, sock)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (none once the listener has stopped accepting)."""
        return tuple(self._sockets)

    def stop_accepting(self) -> None:
        """Accept no more connections: the listening sockets are closed."""
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            if (timer := self._paused.pop(sock, None)) is not None:
                timer.cancel()
            else:
                asyncio.get_running_loop().remove_reader(sock)
            sock.close()

    async def close(self, timeout: float = 1.0) -> None:
        """Stop accepting, and wait until every accepted connection is lost (module docstring).

        ``timeout``: seconds that connections being closed gracefully have to finish; the
        others are aborted at once, and whatever is still open then is aborted.
        """
        self.stop_accepting()
        self._closing = True
        handshakes = list(self._handshakes)
        for task in handshakes:
            task.cancel()  # the loop aborts the connection (it is not this close's to wait for)
        if handshakes:
            await asyncio.wait(handshakes)
            await asyncio.sleep(0)  # (their sockets close in the loop's next iteration)
        for transport in list(self._open):
            if not transport.is_closing():
                transport.abort()  # nobody is closing it: nothing was written to it to deliver
        try:
            async with asyncio.timeout(timeout):
                await self._until_lost()
        except TimeoutError:
            for transport in list(self._open):
                transport.abort()
            await self._until_lost()  # (an abort closes the socket in the loop's next iteration)

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

    def _accept(self, sock: socket.socket) -> None:
        """``sock`` is readable: accept what is waiting, up to the backlog (module docstring)."""
        for _ in range(_BACKLOG):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # (nothing left; or reset by its peer before it was accepted)
            except OSError as exc:
                _log.error("cannot accept a connection: %s; trying again in 1 s", exc.strerror or exc)
                loop = asyncio.get_running_loop()
                loop.remove_reader(sock)
                self._paused[sock] = loop.call_later(_ACCEPT_PAUSE, self._resume, sock)
                return
            peer = str(address[0]) if isinstance(address, tuple) and address else None
            try:
                admitted = self._admit(peer)
            except Exception:
                _log.exception("admitting a connection from %s failed; it is closed", peer)
                admitted = False
            if not admitted:
                conn.close()
                continue
            conn.setblocking(False)
            accepted = _Accepted(self, conn, peer)
            task = asyncio.create_task(self._handshake(accepted), name="aiodq-listener-handshake")
            self._handshakes[task] = accepted
            task.add_done_callback(self._handshake_ended)

    def _resume(self, sock: socket.socket) -> None:
        del self._paused[sock]
        asyncio.get_running_loop().add_reader(sock, self._accept, sock)

    async def _handshake(self, accepted: _Accepted) -> None:
        """Hand a connection to the loop (its TLS handshake included); report one refused or timed out."""
        loop = asyncio.get_running_loop()

        def protocol() -> _TrackedProtocol:
            return _TrackedProtocol(asyncio.StreamReader(limit=self._limit, loop=loop), loop, self, accepted)

        accepted.handed = True  # (the loop closes the socket if this fails or is cancelled)
        try:
            await loop.connect_accepted_socket(protocol, accepted.conn, **self._tls)
        except ssl.SSLError as exc:
            accepted.release()
            self._refused(f"TLS handshake failed ({exc.reason or type(exc).__name__})", accepted.peer)
        except ConnectionAbortedError:  # (the loop's handshake timeout: nothing else aborts it)
            accepted.release()
            if self._tls:
                self._refused("TLS handshake timed out", accepted.peer)
        except OSError:
            accepted.release()  # the peer gave up
        except asyncio.CancelledError:
            accepted.release()  # this listener is closing
            raise

    def _handshake_ended(self, task: asyncio.Task[None]) -> None:
        accepted = self._handshakes.pop(task)
        if not accepted.handed:  # cancelled before it began (a close as the connection was accepted)
            accepted.conn.close()
            accepted.release()

    async def _until_lost(self) -> None:
        """Until no accepted connection is open."""
        while self._open:
            self._changed.clear()
            await self._changed.wait()

    def _made(self, transport: asyncio.Transport) -> None:
        self._open.add(transport)
        if self._closing:
            transport.abort()  # accepted while closing: nothing is served on it

    def _lost(self, transport: asyncio.Transport) -> None:
        self._open.discard(transport)
        if (timer := self._lingering.pop(transport, None)) is not None:
            timer.cancel()
        self._changed.set()


async def _bind(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to (all interfaces if None or empty)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):  # (each address once)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # (as asyncio's servers)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
