"""The local launcher's worker processes: started, their stderr read as it comes, stopped.

A worker's stderr goes through a pipe, so that a worker that fails can be reported with
what it wrote.  The pipe is read all along: a pipe nobody reads fills (64 KiB on Linux)
and then blocks the worker at its next write, in the middle of training.  Each line is
logged (``aiodq.launch``, INFO, ``worker N: ...``) and the last ones are kept for the
report of a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import Sequence

from ..errors import RunError

__all__ = ["WorkerProcess", "stop_workers"]

_log = logging.getLogger("aiodq.launch")

#: Lines of a worker's stderr kept for the report of its failure.
TAIL_LINES = 40
#: A longer line is cut here (a line without an end would otherwise be kept whole in memory).
LONGEST_LINE = 4096
#: How long to wait, once a worker has exited, for the rest of its stderr (a process it
#: started may still hold the pipe open).
_STDERR_GRACE = 1.0


class WorkerProcess:
    """One worker process and the task that reads its stderr."""

    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index = index
        self.process = process
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._reader = asyncio.create_task(self._read_stderr())
        #: Done when the process has exited, with its exit status.
        self.exited: asyncio.Task[int] = asyncio.create_task(process.wait())

    @classmethod
    async def start(cls, index: int, command: Sequence[str], env: dict[str, str]) -> WorkerProcess:
        """Start ``command`` as worker ``index``.

        Raises:
            RunError: if the process cannot be started (no such program, too many open files...).
        """
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise RunError(f"cannot start worker process {index}: {exc.strerror or exc}") from exc
        return cls(index, process)

    @property
    def interrupted(self) -> bool:
        """Whether the process ended on SIGINT (killed by it, or exiting 130 as ``aiodq worker`` does)."""
        return self.exited.done() and self.process.returncode in (130, -signal.SIGINT)

    @property
    def failed(self) -> bool:
        """Whether the process has exited with a status other than 0."""
        return self.exited.done() and self.process.returncode != 0

    async def stderr_tail(self) -> str:
        """The last lines the process wrote to stderr: all of them once the pipe has closed.

        Waits up to a second for the pipe to close once the process has exited.
        """
        if self.exited.done():
            await asyncio.wait([self._reader], timeout=_STDERR_GRACE)
        return "\n".join(self._tail)

    def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace").rstrip()
        self._tail.append(text)
        _log.info("worker %d: %s", self.index, text)

    async def _read_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None  # started with stderr=PIPE
        pending = b""
        while chunk := await stream.read(1 << 16):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if len(pending) > LONGEST_LINE:
                lines.append(pending[:LONGEST_LINE] + b" [cut]")
                pending = b""
            for raw in lines:
                self._line(raw)
        if pending:
            self._line(pending)

    async def finish_reading(self) -> None:
        """Wait up to a second for the rest of the stderr, then stop reading it."""
        await asyncio.wait([self._reader], timeout=_STDERR_GRACE)
        if not self._reader.done():
            self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def stop_workers(workers: Sequence[WorkerProcess], grace: float = 5.0) -> None:
    """Stop every worker still running: SIGTERM, then SIGKILL for any alive ``grace`` s later.

    Returns when every process has exited and its stderr reader has finished.
    """
    for worker in workers:
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.terminate()
    exits = [worker.exited for worker in workers]
    if exits:
        await asyncio.wait(exits, timeout=grace)
    for worker in workers:
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
    await asyncio.gather(*exits, return_exceptions=True)
    await asyncio.gather(*(worker.finish_reading() for worker in workers))
