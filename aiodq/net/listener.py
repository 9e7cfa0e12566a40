"""The master's listening sockets: admission before any TLS handshake; no connection left open.

The listener accepts connections itself, as asyncio's servers do (a reader callback on each
listening socket, taking at most the backlog at a time), and asks its ``admit`` callback about
each, with the peer's address, before anything is read from it: one refused is closed at once.
An admitted one is handed to the loop (``loop.connect_accepted_socket``), which runs its TLS
handshake, if any, within the handshake timeout.  (With the loop's own TLS server the handshake
came before the master saw the connection, and nothing bounded the handshakes: a security audit
held 1,000 silent connections from one address open on a TLS master, each until the timeout.)

At most ``tls_limit`` connections are in their TLS handshake at once (:attr:`Listener.handshaking`);
one more cuts one short: the oldest of the address (an IPv6 one: its /64) with the most handshakes
in flight. Peers that open connections and say nothing then cannot keep out a worker from another
address, whose handshake takes a few milliseconds (a review: cutting the oldest of any address let a
flood from one address cut certified workers' handshakes at small limits). A connection whose
handshake ended as it was cut short is aborted, not served. A handshake that fails on this side (an
:class:`ssl.SSLError`: a client certificate refused, a plain-text peer, a client's TLS alert), that
times out, or that is cut short is reported to ``refused``; one the peer gives up without an alert
is not. An accept that fails for want of resources (no file descriptors left, say) is logged and
accepting pauses for a second, as in asyncio's servers, rather than spinning on it.

:meth:`Listener.stop_accepting` closes the listening sockets at once.  :meth:`Listener.close`
does that, ends the TLS handshakes still running (the loop closes their sockets; one accepted but
not yet handed to the loop is closed here), and waits, up to its timeout, until every connection it
accepted has been lost: one being closed gracefully has that long to deliver what was written to
it (a final CLOSE frame, say); any other is aborted at once, and one made while closing as soon
as it connects.  What is left at the timeout is aborted.  (A transport's ``close`` or ``abort``
only schedules the socket's close, for a later loop iteration: a caller that returned at once,
and a loop that stopped then, would leave it open.)  A connection already made is never
cancelled: uvloop then closes its transport without telling the protocol, and a close waited for
it without end (a review).

Before that, :meth:`Listener.linger` closes a connection after what was written to it, but
aborts it if that takes longer than a timeout, or if the bytes waiting in every connection
being closed so would pass a budget: a peer that never reads must not keep its connection, and
what was queued for it, for as long as the master runs (an attack review: an admitted worker
that joined, sent CLOSE and never read, 150 times over, left the master holding 167 sockets and
862 MB, 131 MB before).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ..protocol.admission import address_key

__all__ = ["CUT_SHORT", "Listener"]

_log = logging.getLogger("aiodq.master")

#: What the listener calls for each accepted connection, as :func:`asyncio.start_server` does.
ConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
#: Whether to serve a connection just accepted from an address (None: unknown).
AdmitCallback = Callable[[str | None], bool]
#: A TLS handshake that failed on this side, timed out or was cut short: why, and the peer's address.
RefusedCallback = Callable[[str, str | None], None]

#: The reason reported for a TLS handshake cut short by a newer connection.
CUT_SHORT = "TLS handshake cut short for a newer connection"
#: Accept errors that mean the process or the system is out of a resource: accepting pauses
#: for :data:`_ACCEPT_PAUSE` seconds (asyncio's servers pause on the same ones).  Others are a
#: connection's own (reset, unreachable...): the next is accepted.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE = 1.0
_BACKLOG = 100
#: Seconds a close waits, after aborting what was left, for the loop to report those connections lost.
_LOST_GRACE = 1.0


class _Accepted:
    """A connection admitted: counted in :attr:`Listener.handshaking` until :meth:`release`."""

    def __init__(self, listener: Listener, conn: socket.socket, peer: str | None, at: float) -> None:
        self.conn, self.peer, self.at = conn, peer, at
        self.key = "" if peer is None else address_key(peer)
        #: Given to the loop (its protocol made by ``connect_accepted_socket``): the loop closes it now.
        self.handed = False
        self._listener: Listener | None = listener
        listener.handshaking += 1
        listener._waiting.setdefault(self.key, {})[self] = None
        #: The task that hands it to the loop (Listener._accept starts it).
        self.task: asyncio.Task[None]

    def release(self) -> bool:
        """Count it no more (once connected, or ended); False if that was done before."""
        if (listener := self._listener) is None:
            return False
        listener.handshaking -= 1
        del (waiting := listener._waiting[self.key])[self]
        if not waiting:
            del listener._waiting[self.key]
        self._listener = None
        return True


class _TrackedProtocol(asyncio.StreamReaderProtocol):
    """:func:`asyncio.start_server`'s protocol, known to the listener from its connection to its loss."""

    def __init__(self, reader: asyncio.StreamReader, listener: Listener, accepted: _Accepted) -> None:
        super().__init__(reader, listener._connected, loop=asyncio.get_running_loop())
        self._listener, self._accepted = listener, accepted
        self._tracked: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tracked = cast(asyncio.Transport, transport)  # a stream server's: it can be aborted
        self._listener._made(self._tracked, self._accepted.at)
        if not self._accepted.release():  # cut short, or closing, as its TLS handshake ended
            self._tracked.abort()  # (not served: its task was cancelled, and would close it gracefully)
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self._tracked is not None:
                self._listener._lost(self._tracked)


class Listener:
    """A TCP server for stream handlers, like :func:`asyncio.start_server`'s (module docstring)."""

    def __init__(
        self,
        *,
        admit: AdmitCallback | None = None,
        refused: RefusedCallback | None = None,
        tls_limit: int = 256,
    ) -> None:
        """Ask ``admit`` (by default: yes) before any TLS handshake; tell ``refused`` of one failed here.

        ``refused`` hears of a TLS handshake that failed on this side, timed out or was cut short;
        ``tls_limit``: TLS handshakes at once (module docstring).
        """
        if not isinstance(tls_limit, int) or tls_limit < 1:
            raise ValueError(f"tls_limit must be a positive integer, got {tls_limit!r}")
        self._admit = admit or (lambda peer: True)
        self._refused = refused or (lambda why, peer: None)
        self._tls_limit = tls_limit
        self._sockets: list[socket.socket] = []
        #: Accepting paused after an error: the timer that resumes it, by listening socket.
        self._paused: dict[socket.socket, asyncio.TimerHandle] = {}
        #: Connections being handed to the loop.
        self._handshakes: set[_Accepted] = set()
        #: Open connections, with the loop's time at their accept.
        self._open: dict[asyncio.Transport, float] = {}
        #: Connections being closed by :meth:`linger`, each with the timer that aborts it.
        self._lingering: dict[asyncio.WriteTransport, asyncio.TimerHandle] = {}
        self._closing = False
        #: Set whenever an accepted connection is lost.
        self._changed = asyncio.Event()
        self._connected: ConnectedCallback
        self._limit = 1 << 16
        self._tls: dict[str, Any] = {}
        #: Connections admitted that are not connected yet: in their TLS handshake, mostly.
        self.handshaking = 0
        #: Those connections by address key, oldest first.
        self._waiting: dict[str, dict[_Accepted, None]] = {}

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
        its handshake may take (positive).

        Raises:
            OSError: if ``host``:``port`` cannot be listened on (the port taken, say).
        """
        if tls is not None and not tls[1] > 0:
            raise ValueError(f"the TLS handshake timeout must be positive, got {tls[1]!r}")
        self._changed, self._closing = asyncio.Event(), False  # (a new loop's)
        self._connected, self._limit = connected, limit
        # The TLS close waits for the peer's close_notify as long as the handshake (30 s by default).
        timeouts = {} if tls is None else {"ssl_handshake_timeout": tls[1], "ssl_shutdown_timeout": tls[1]}
        self._tls = {} if tls is None else {"ssl": tls[0], **timeouts}
        self._sockets = await _bind(host, port)
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.add_reader(sock, self._accept, sock)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (none once the listener has stopped accepting)."""
        return tuple(self._sockets)

    def accepted_at(self, transport: asyncio.BaseTransport) -> float | None:
        """The loop's time when an open connection was accepted (before its TLS handshake), if known."""
        return self._open.get(cast(asyncio.Transport, transport))

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
        for accepted in handshakes:
            if accepted.release():  # not connected yet: the loop aborts it (a made one connects now)
                accepted.task.cancel()
        if handshakes:
            await asyncio.wait([accepted.task for accepted in handshakes])
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
            try:
                async with asyncio.timeout(_LOST_GRACE):
                    await self._until_lost()  # (an abort closes the socket in the loop's next iteration)
            except TimeoutError:
                _log.warning("%d aborted connections never reported closed; not waiting", len(self._open))
                self._open.clear()

    def linger(self, transport: asyncio.WriteTransport, timeout: float, budget: int) -> None:
        """Close ``transport`` once what was written to it is sent, within ``timeout`` seconds.

        It is aborted at once instead if the bytes still to send on the connections being
        closed so, its own included, are more than ``budget``; and at ``timeout`` if it is
        still open then (a TLS one always: its close waits for the peer's close_notify, and its
        buffer size leaves out what its TLS layer holds).  One closing already is left to it (a
        TLS transport whose peer has closed: a second ``close`` on asyncio's loop unhooks it).
        """
        if transport.is_closing():
            return
        transport.close()
        waiting = transport.get_write_buffer_size()
        if not waiting and not self._tls:
            return  # (closed in the loop's next iteration)
        if waiting + sum(other.get_write_buffer_size() for other in self._lingering) > budget:
            transport.abort()
            return
        self._lingering[transport] = asyncio.get_running_loop().call_later(timeout, transport.abort)

    def _accept(self, sock: socket.socket) -> None:
        """``sock`` is readable: accept what is waiting, up to the backlog (module docstring)."""
        loop = asyncio.get_running_loop()
        for _ in range(_BACKLOG):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    continue  # (the connection's own error: reset, unreachable...)
                _log.error("cannot accept a connection: %s; trying again in 1 s", exc.strerror or exc)
                loop.remove_reader(sock)
                self._paused[sock] = loop.call_later(_ACCEPT_PAUSE, self._resume, sock)
                return
            peer = str(address[0]) if isinstance(address, tuple) and address else None
            try:
                admitted = self._admit(peer)
            except Exception:
                _log.exception("admitting a connection from %s failed; it is closed", peer)
                admitted = False
            if sock not in self._sockets:  # (admit stopped the listener)
                conn.close()
                return
            if not admitted:
                conn.close()
                continue
            conn.setblocking(False)
            if self._tls and self.handshaking >= self._tls_limit:
                self._cut_one_short()
            accepted = _Accepted(self, conn, peer, loop.time())
            accepted.task = asyncio.create_task(self._handshake(accepted), name="aiodq-listener-handshake")
            accepted.task.add_done_callback(functools.partial(self._handshake_ended, accepted))
            self._handshakes.add(accepted)

    def _cut_one_short(self) -> None:
        """End the oldest TLS handshake of the address with the most (module docstring)."""
        waiting = max(self._waiting.values(), key=len)
        accepted = next(iter(waiting))
        accepted.release()
        accepted.task.cancel()
        self._refused(CUT_SHORT, accepted.peer)

    def _resume(self, sock: socket.socket) -> None:
        del self._paused[sock]
        asyncio.get_running_loop().add_reader(sock, self._accept, sock)

    async def _handshake(self, accepted: _Accepted) -> None:
        """Hand a connection to the loop (its TLS handshake included); report one refused or timed out."""

        def protocol() -> _TrackedProtocol:
            accepted.handed = True  # (the loop closes the socket from now on, if this fails too)
            return _TrackedProtocol(asyncio.StreamReader(limit=self._limit), self, accepted)

        try:
            await asyncio.get_running_loop().connect_accepted_socket(protocol, accepted.conn, **self._tls)
        except ssl.SSLError as exc:
            if accepted.release():
                self._refused(f"TLS handshake failed ({exc.reason or type(exc).__name__})", accepted.peer)
        except ConnectionAbortedError:  # (the loop's handshake timeout: nothing else aborts it)
            if accepted.release() and self._tls:
                self._refused("TLS handshake timed out", accepted.peer)
        except OSError:
            accepted.release()  # the peer gave up
        except asyncio.CancelledError:
            accepted.release()  # cut short, or this listener is closing
            raise
        except Exception:
            accepted.release()
            _log.exception("connection from %s: the event loop could not take it", accepted.peer)

    def _handshake_ended(self, accepted: _Accepted, task: asyncio.Task[None]) -> None:
        self._handshakes.discard(accepted)
        if not accepted.handed:  # cancelled, or failed, before the loop took it
            accepted.conn.close()
            accepted.release()

    async def _until_lost(self) -> None:
        """Until no accepted connection is open."""
        while self._open:
            self._changed.clear()
            await self._changed.wait()

    def _made(self, transport: asyncio.Transport, at: float) -> None:
        self._open[transport] = at
        if self._closing:
            transport.abort()  # accepted while closing: nothing is served on it

    def _lost(self, transport: asyncio.Transport) -> None:
        self._open.pop(transport, None)
        if (timer := self._lingering.pop(transport, None)) is not None:
            timer.cancel()
        self._changed.set()


async def _bind(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets for the addresses ``host`` resolves to (all interfaces if None or empty).

    As asyncio's servers: an address whose family the system lacks (no IPv6, say) or that it
    cannot bind (EADDRNOTAVAIL) is skipped if another one is bound; any other error is raised.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    skipped: OSError | None = None
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):  # (each address once)
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                skipped = skipped or exc  # (EAFNOSUPPORT: the family is not there)
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # (as asyncio's servers)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                skipped = skipped or exc
                sockets.pop().close()
                continue
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        if not sockets:
            raise skipped or OSError(errno.EADDRNOTAVAIL, f"{host!r} resolves to no address")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
