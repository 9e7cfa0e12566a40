"""What the Ray launcher's driver makes of its actors' failures (:mod:`aiodq.launch.ray` uses these).

An aiodq error raised inside an actor comes out as itself; Ray's own failures (a dead actor, an
exception that is not aiodq's) as one line of Ray's text, without its terminal colours and its
``ray::Actor.method() (pid=..., actor_id=..., repr=...)`` header.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from ..errors import AiodqError, DataError, RunError, UsageError, code_name

__all__ = ["call", "cannot_train", "describe", "given_up", "worker_failure"]

#: The longest line of Ray's that :func:`describe` keeps.
_SAID = 300
#: Terminal colours, and the header Ray puts before an actor's exception (an audit: both were printed).
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_HEADER = re.compile(r"^ray::\S+ \(pid=\d+[^)]*\)(?: \(repr=.*\))?$|^ray::\S+$")


async def call(ray: Any, pending: Any, what: str) -> Any:
    """Await an actor call; an aiodq error raised inside comes out as itself, Ray's as RunError."""
    try:
        return await pending
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, AiodqError):
            raise cause from None
        raise RunError(f"{what} failed: {describe(exc)}") from None
    except ray.exceptions.RayError as exc:
        raise RunError(f"{what} failed: {describe(exc)}") from None


def worker_failure(load: asyncio.Future[Any], run: asyncio.Future[Any]) -> str | None:
    """Why a worker failed (its data, its actor, or a session that ended in error), or None."""
    for future in (load, run):
        if not future.done() or future.cancelled():
            continue
        exc = future.exception()
        if exc is not None:
            cause = getattr(exc, "cause", None)
            return str(cause) if isinstance(cause, AiodqError) else describe(exc)
    if run.done() and not run.cancelled() and run.exception() is None:
        code, reason, _, ok, _ = run.result()
        if not ok:
            return f"the session ended: {code_name(code)}: {reason}"
    return None


def cannot_train(load: asyncio.Future[Any], run: asyncio.Future[Any]) -> bool:
    """Whether a worker cannot train this run, so that no restart helps.

    Its session ended on its own refusal of the run's CONFIG, or its data or model could not be
    loaded (a UsageError or DataError raised in the actor: the local launcher's exit status 2; an
    audit saw the Ray launcher restart such a worker up to ``max_restarts``).
    """
    for future in (load, run):
        if future.done() and not future.cancelled() and future.exception() is not None:
            return isinstance(getattr(future.exception(), "cause", None), (UsageError, DataError))
    return run.done() and not run.cancelled() and bool(run.result()[4])


def given_up(worker: str, failure: str, restarts: int, *, hopeless: bool) -> str:
    """The line for a worker not restarted: after how many restarts, or how to allow some.

    ``hopeless``: it cannot train this run (:func:`cannot_train`), so no restart was tried.
    (A Ray user's audit: a worker's failure with the default ``max_restarts=0`` said nothing of it.)
    """
    if restarts:
        room = "" if hopeless else ", as many as max_restarts allows"
        after = f" (after {restarts} restart{'s' * (restarts > 1)}{room})"
    elif hopeless:
        after = ""
    else:
        after = " (max_restarts is 0: --max-restarts N, max_restarts=N in run_ray, replaces it up to N times)"
    return f"worker {worker} failed: {failure}{after}"


def describe(exc: BaseException) -> str:
    """Ray's text for a failed actor or call: its first and last lines, each cut at 300 characters.

    (A deployment trial missed the checkpoint's note after Ray's 900-character advice on OOM killers.)
    """
    text = _COLOUR.sub("", str(exc))
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    lines = [line for line in lines if not _HEADER.match(line)] or lines
    cut = [
        line if len(line) <= _SAID else line[: _SAID - 3].rsplit(" ", 1)[0] + "..."
        for line in lines[:1] + lines[-1:]
    ]
    return " ... ".join(dict.fromkeys(cut)) if lines else type(exc).__name__
