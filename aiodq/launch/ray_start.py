"""Starting and stopping Ray for one run: ``ray.init`` in a thread of its own (:class:`RayStart`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

__all__ = ["INIT_GRACE", "RayStart"]

#: Seconds a cancelled run waits for Ray's start to end before it leaves it to its thread, for a local
#: instance (it starts in about 2.5 s, and is then shut down) and for an address (where no cluster
#: answers, Ray retries for ever).
INIT_GRACE = {True: 60.0, False: 10.0}


class RayStart:
    """``ray.init`` in a daemon thread, which also shuts Ray down: :meth:`stop`, then await :attr:`down`.

    Not the loop's executor (``asyncio.to_thread``): its threads are joined when the interpreter exits,
    and a ``ray.init`` that never returns (an address where no cluster answers) would keep the process
    alive after the run has failed.  One thread starts and stops Ray: the processes a local instance
    starts (its GCS, its raylet) die with the thread that started them (Linux's parent-death signal is
    the thread's), so it lives until Ray is down; and a start abandoned at the timeout or on a
    cancellation is shut down by it whenever ``ray.init`` returns, not left for the next run to adopt.
    """

    #: The latest start in this process: a new one waits for none, and refuses while it has not ended.
    latest: RayStart | None = None

    def __init__(self, ray: Any, **options: Any) -> None:
        loop = asyncio.get_running_loop()
        #: Settles when ``ray.init`` returns (None) or raises; :attr:`down` once Ray is shut down.
        self.started: asyncio.Future[None] = loop.create_future()
        self.down: asyncio.Future[None] = loop.create_future()
        self.ended = threading.Event()
        #: Set once ``ray.init`` has returned: Ray is then this start's (until :attr:`ended`).
        self.up = threading.Event()
        self._stop = threading.Event()
        self._loop = loop
        RayStart.latest = self
        threading.Thread(target=self._run, args=(ray, options), name="aiodq-ray", daemon=True).start()

    def stop(self) -> None:
        """Shut Ray down now, or as soon as its start returns; nobody need read the start's outcome."""
        self._stop.set()
        self.started.add_done_callback(lambda future: future.cancelled() or future.exception())

    def _settle(self, future: asyncio.Future[None], error: BaseException | None) -> None:
        def settle() -> None:
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(None)

        with contextlib.suppress(RuntimeError):  # (the loop has closed: nobody waits for it)
            self._loop.call_soon_threadsafe(settle)

    def _run(self, ray: Any, options: dict[str, Any]) -> None:
        try:
            ray.init(**options)
        except BaseException as exc:  # (handed to the future, whatever it is)
            # ray.init may raise once connected (a post-init hook, say: a review saw Ray end the process a
            # minute later): shut down what it started, unless the start was abandoned, when an instance
            # may be the caller's, started while ray.init hung.
            if not self._stop.is_set():
                with contextlib.suppress(Exception):
                    if ray.is_initialized():
                        ray.shutdown()
            self._settle(self.started, exc)
        else:
            self.up.set()
            self._settle(self.started, None)
            self._stop.wait()
            # Only an instance this start brought up: one the caller started while ray.init hung (which then
            # raised) is the caller's (a review).
            with contextlib.suppress(Exception):
                if ray.is_initialized():
                    ray.shutdown()
        self.ended.set()
        self._settle(self.down, None)
