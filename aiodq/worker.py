"""The asyncio worker: connects to a master and runs a :class:`~aiodq.session.WorkerSession`.

::

    result = await run_worker("127.0.0.1", port, features, labels, name="worker-0")

It returns when the master closes the session (or the connection is lost) and
reports how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from .config import ConnectionConfig
from .errors import ErrorCode
from .models import Features
from .session import WorkerSession

__all__ = ["WorkerResult", "run_worker"]

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


async def run_worker(
    host: str,
    port: int,
    features: Features,
    labels: npt.NDArray[Any],
    *,
    name: str = "",
    classes: int | None = None,
    connection_config: ConnectionConfig | None = None,
) -> WorkerResult:
    """Connect to the master at ``host:port`` and train until it closes the session.

    Raises:
        OSError: if the master cannot be reached.
    """
    reader, writer = await asyncio.open_connection(host, port, limit=_READ_SIZE)
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
                chunk = await asyncio.wait_for(reader.read(_READ_SIZE), timeout)
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
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    code, reason = session.ended or (int(ErrorCode.PROTOCOL_ERROR), "connection ended without CLOSE")
    return WorkerResult(code, reason, session.gradients_sent)
