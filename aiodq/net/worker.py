"""The asyncio worker: connects to a master and runs a :class:`~aiodq.protocol.session.WorkerSession`.

::

    result = await run_worker("127.0.0.1", port, features, labels, name="worker-0")

It returns when the master closes the session (or the connection is lost) and
reports how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from ..config import ConnectionConfig
from ..errors import ErrorCode
from ..protocol.objectives import Features
from ..protocol.session import WorkerSession

__all__ = ["WorkerResult", "run_worker"]

_log = logging.getLogger("aiodq.worker")

_READ_SIZE = 1 << 18


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """How a worker's session ended."""

    #: The code of the CLOSE that ended it (0 for a normal end).
    code: int
    #: The reason text.
    reason: str
    #: Gradients this worker sent.
    gradients: int

    @property
    def ok(self) -> bool:
        """True for a normal end of training."""
        return self.code == ErrorCode.NO_ERROR


#: Codes after which reconnecting cannot help.
_PERMANENT = frozenset({ErrorCode.AUTH_FAILED, ErrorCode.INVALID_CONFIG, ErrorCode.UNSUPPORTED_VERSION})


async def run_worker(
    host: str,
    port: int,
    features: Features,
    labels: npt.NDArray[Any],
    *,
    name: str = "",
    classes: int | None = None,
    connection_config: ConnectionConfig | None = None,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    retry_for: float = 0.0,
) -> WorkerResult:
    """Connect to the master at ``host:port`` and train until it closes the session.

    Args:
        host: the master's address.
        port: the master's port.
        features: this worker's shard of the samples.
        labels: their labels.
        name: a name for the master's logs.
        classes: number of classes (default: from the labels).
        connection_config: limits, timeouts and the shared secret.
        ssl: a client-side TLS context (with a client certificate for mutual TLS).
        server_hostname: the name to check the master's certificate against (default ``host``).
        retry_for: keep reconnecting, with exponential backoff from 0.1 s to 5 s, for this
            many seconds when the master cannot be reached or goes away before the end of
            training (0: no retries).  A refusal that retrying cannot fix (authentication,
            configuration, version) ends at once.

    Raises:
        OSError: if the master cannot be reached (after the retries).
    """
    loop = asyncio.get_running_loop()
    # Each outage gets retry_for seconds, counted from when the master was lost.
    deadline = loop.time() + retry_for
    backoff = 0.1
    gradients = 0
    while True:
        try:
            result = await _session(
                host,
                port,
                features=features,
                labels=labels,
                name=name,
                classes=classes,
                connection_config=connection_config,
                ssl=ssl,
                server_hostname=server_hostname,
            )
        except OSError:
            if loop.time() + backoff > deadline:
                raise
            _log.warning("cannot reach the master at %s:%d; retrying in %.1f s", host, port, backoff)
        else:
            gradients += result.gradients
            if result.ok or result.code in _PERMANENT or retry_for <= 0:
                return WorkerResult(result.code, result.reason, gradients)
            deadline, backoff = loop.time() + retry_for, 0.1
            _log.warning(
                "session ended (%d: %s); reconnecting in %.1f s", result.code, result.reason, backoff
            )
        await asyncio.sleep(backoff)
        backoff = min(2 * backoff, 5.0)


async def _session(
    host: str,
    port: int,
    *,
    features: Features,
    labels: npt.NDArray[Any],
    name: str,
    classes: int | None,
    connection_config: ConnectionConfig | None,
    ssl: ssl_module.SSLContext | None,
    server_hostname: str | None,
) -> WorkerResult:
    """One connection: from HELLO to the master's CLOSE or the end of the stream."""
    reader, writer = await asyncio.open_connection(
        host, port, limit=_READ_SIZE, ssl=ssl, server_hostname=server_hostname if ssl else None
    )
    loop = asyncio.get_running_loop()
    started = loop.time()

    def now() -> float:
        return loop.time() - started

    session = WorkerSession(
        features, labels, name=name, classes=classes, connection_config=connection_config, now=now()
    )
    try:
        while True:
            data = session.data_to_send()
            if data:
                writer.write(data)
                await writer.drain()
            if session.closed:
                break
            timer = session.connection.get_timer()
            timeout = None if timer is None else max(0.0, timer - now())
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                # cancellation that arrives as the read completes.
                async with asyncio.timeout(timeout):
                    chunk = await reader.read(_READ_SIZE)
            except TimeoutError:
                session.handle_timer(now())
                continue
            except (ConnectionError, OSError):
                chunk = b""
            session.receive_data(chunk, now())
            if not chunk:
                data = session.data_to_send()
                if data and not writer.is_closing():
                    writer.write(data)
                break
    except (ConnectionError, OSError):
        pass  # the master went away while we wrote: reported below as an unclean end
    except asyncio.CancelledError:
        # Cancelled: leave at once, like a process that dies, rather than wait to flush
        # bytes that the master may not be reading.
        writer.transport.abort()
        raise
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(5.0):
                await writer.wait_closed()
    code, reason = session.ended or (int(ErrorCode.PROTOCOL_ERROR), "connection ended without CLOSE")
    return WorkerResult(code, reason, session.gradients_sent)
