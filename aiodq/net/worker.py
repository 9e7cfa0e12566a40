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
import numbers
import re
import ssl as ssl_module
from dataclasses import dataclass
from typing import Any

from ..config import ConnectionConfig
from ..errors import ErrorCode, code_name
from ..protocol.dataset import as_samples
from ..protocol.objectives import Objective, check_objective
from ..protocol.session import WorkerSession
from ..protocol.start import check_contract
from .arguments import at_least, check_kinds
from .logbook import printable
from .offload import READ_SIZE, Pace, after_earlier, compute, holds_end

__all__ = ["WorkerResult", "describe_os_error", "format_address", "run_worker"]

_log = logging.getLogger("aiodq.worker")


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """How a worker's session ended."""

    #: The code of the CLOSE that ended it (0 for a normal end).
    code: int
    #: The reason text.
    reason: str
    #: Gradients this worker sent.
    gradients: int
    #: True if the worker ended the session itself because it cannot go on (a configuration it
    #: cannot train, or its computation failed).
    failed: bool = False
    #: True if the session got as far as CONFIG (the worker trained in it).
    configured: bool = False

    @property
    def ok(self) -> bool:
        """True for a normal end of training: the master ended it (NO_ERROR).

        Also with a verdict against the run (it diverged, or did not train): the master's result says
        so, and ``reason`` is the verdict.
        """
        return self.code == ErrorCode.NO_ERROR and not self.failed

    @property
    def cannot_train(self) -> bool:
        """True if the worker refused the run's CONFIG itself.

        Its model, data or split are not the master's, or it would send encodings the master
        cannot decode.  Another in its place would be refused alike, so the launchers start none
        (an objective that failed may not fail again).
        """
        return self.failed and self.code in (ErrorCode.INVALID_CONFIG, ErrorCode.UNSUPPORTED_ENCODING)


#: Codes after which reconnecting cannot help.
_PERMANENT = frozenset(
    {
        ErrorCode.AUTH_FAILED,
        ErrorCode.INVALID_CONFIG,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.LIMIT_EXCEEDED,
        ErrorCode.WORLD_SIZE_MISMATCH,
        ErrorCode.UNSUPPORTED_ENCODING,  # a side cannot decode what the run has the other send (6.2-6, 6.2-7)
        ErrorCode.FRAME_TOO_LARGE,  # (the same frames again: an operator's worker retried for --retry-for)
    }
)


async def run_worker(
    host: str,
    port: int,
    features: Any = None,
    labels: Any = None,
    *,
    objective: Objective | None = None,
    model: str | None = None,
    name: str = "",
    classes: int | None = None,
    label_values: Any = None,
    shard: tuple[int, int] | None = None,
    shard_seed: int | None = None,
    data_fingerprint: str | None = None,
    connection_config: ConnectionConfig | None = None,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    retry_for: float = 0.0,
) -> WorkerResult:
    """Connect to the master at ``host:port`` and train until it closes the session.

    Args:
        host: the master's address.
        port: the master's port.
        features: this worker's shard of the samples (an array-like, or a scipy sparse matrix),
            for a built-in model, the one the master's CONFIG names.
        labels: their labels.
        objective: instead of ``features`` and ``labels``: this worker's own
            :class:`~aiodq.Objective`, holding its samples (its dimension must be the master's).
        model: the model ``objective`` is (the ``MODULE:NAME`` it was loaded from, say), for an
            objective without a ``name``: a run of another model is refused (INVALID_CONFIG,
            final), although the dimensions agree.  None: only the objective's ``name`` is checked.
            With ``features`` and ``labels``: the built-in model this worker is for, a run of another
            refused likewise; None trains the one CONFIG names.
        name: a name for the master's logs.
        classes: number of classes of the whole dataset (default: from ``label_values``).
        label_values: the distinct labels of the whole dataset, when ``labels`` are a share of
            it (default: those of ``labels``): every worker then maps labels alike for the
            built-in model (:func:`~aiodq.protocol.dataset.labels_for`).
        shard: ``(index, count)``, the shard these samples are, claimed in HELLO: the master
            refuses a shard a live worker holds (SHARD_TAKEN, retried: the holder may be this
            worker's own lost session) and a count other than its number of workers
            (WORLD_SIZE_MISMATCH, final).  None: no claim.
        shard_seed: the seed the shard was split with: the worker refuses a run of another
            seed (INVALID_CONFIG, final), whose shards would overlap this one.  None: no check.
        data_fingerprint: that of the dataset the shard was cut from (``Dataset.fingerprint()``):
            the worker refuses a run whose CONFIG names other data (INVALID_CONFIG, final).  None:
            no check.
        connection_config: limits, timeouts and the shared secret.
        ssl: a client-side TLS context (with a client certificate for mutual TLS).
        server_hostname: the name to check the master's certificate against (default ``host``).
        retry_for: keep reconnecting, with exponential backoff from 0.1 s to 5 s, for this
            many seconds when the master cannot be reached, refuses the worker before training
            (a full cluster, a failed TLS handshake) or goes away before the end of training
            (0: no retries).  The time counts from the start, or from the end of the last
            session in which the worker trained; refusals do not restart it.  A refusal that
            retrying cannot fix (authentication, configuration, version, encodings) and a failure of the
            worker's own computation end at once.

    Raises:
        TypeError: for data or an objective of an unsupported type (before connecting).
        ValueError: for a ``retry_for`` that is not a finite number of seconds, 0 or more.
        ValueError: for features and labels that do not fit together, or an objective whose
            ``loss_grad`` breaks its contract (means, not sums, say; before connecting).
        OSError: if the master cannot be reached (after the retries); its text says why.  If a
            session had ended before (the master stopped, say), a note (``__notes__``) says how.
    """
    if (
        isinstance(retry_for, bool)
        or not isinstance(retry_for, numbers.Real)
        or not 0 <= retry_for < _FOREVER
    ):
        # (nan retried for ever: an attack review; the command line refuses nan and inf alike)
        raise ValueError(f"retry_for must be a finite number of seconds, 0 or more, got {retry_for!r}")
    if isinstance(port, str) and re.fullmatch("[0-9]{1,5}", port):  # (os.environ's: as asyncio takes it)
        port = int(port)
    if not at_least(port, 1, 65535):
        # (A newcomer's audit: port "x" failed in getaddrinfo, "Servname not supported for ai_socktype".)
        raise ValueError(f"port must be an integer from 1 to 65535 (the master's), got {port!r}")
    port = int(port)
    check_kinds(connection_config=(connection_config, ConnectionConfig, True))
    if objective is not None:
        if features is not None or labels is not None:
            raise TypeError("give the worker either features and labels or an objective, not both")
        check_objective(objective)
        await after_earlier(objective)  # (a computation a cancelled worker left on it, say)
        check_contract(objective)  # (as each session does)
    else:
        features, labels = as_samples(features, labels)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    backoff = 0.1
    gradients = 0
    ended: str | None = None  # how the last session ended, if one did
    trained: WorkerResult | None = None  # the last session that got as far as CONFIG
    pace = Pace()  # (a step found slow in one session runs off the loop's thread in the next from the start)
    while True:
        began = loop.time()
        try:
            result = await _session(
                host,
                port,
                features=features,
                labels=labels,
                objective=objective,
                model=model,
                name=name,
                classes=classes,
                label_values=label_values,
                shard=shard,
                shard_seed=shard_seed,
                data_fingerprint=data_fingerprint,
                connection_config=connection_config,
                ssl=ssl,
                server_hostname=server_hostname,
                # (An attempt within what is left of retry_for: a review's gave up 1.9 s late.)
                connect_within=max(deadline - loop.time(), _SHORTEST_ATTEMPT) if retry_for > 0 else None,
                pace=pace,
            )
        except OSError as exc:
            if loop.time() + backoff > deadline:
                if ended is not None:
                    exc.add_note(f"its last session ended with {ended}, and it was not reached again")
                raise  # the caller says why with describe_os_error(exc)
            _log.warning(
                "cannot reach the master at %s: %s; retrying in %.1f s",
                format_address(host, port),
                describe_os_error(exc),
                backoff,
            )
        else:
            gradients += result.gradients
            final = result.ok or result.failed or result.code in _PERMANENT or retry_for <= 0
            if result.configured:
                # It trained: a new outage starts now, with the whole of retry_for.  The
                # backoff starts again only after a session that lasted: a worker the master
                # removes at once (a refused message, say) backs off up to 5 s, never hammers it.
                deadline = loop.time() + retry_for
                if loop.time() - began >= _SETTLED:
                    backoff = 0.1
            if final or loop.time() + backoff > deadline:
                if trained is not None and not result.configured and result.code == ErrorCode.PROTOCOL_ERROR:
                    # How training ended says more than a refused reconnection (an operator trial: a
                    # diverged run's workers ended on "closed before answering HELLO" and a TLS hint).
                    reason = (
                        f"{trained.reason}; then, reconnecting: {code_name(result.code)}: {result.reason}"
                    )
                    return WorkerResult(trained.code, reason, gradients, trained.failed, True)
                return WorkerResult(result.code, result.reason, gradients, result.failed, result.configured)
            if result.configured or trained is None:  # (a refused reconnection says less: above)
                ended = f"{code_name(result.code)}: {result.reason}"
            trained = result if result.configured else trained
            _log.warning(
                "session ended (%s: %s); reconnecting in %.1f s",
                code_name(result.code),
                result.reason,
                backoff,
            )
        await asyncio.sleep(backoff)
        backoff = min(2 * backoff, 5.0)


async def _drain(writer: asyncio.StreamWriter, window: float) -> bool:
    """Wait until the transport has taken what waits; False if a whole ``window`` passed with none taken.

    A master that stops reading (paused, cut off) fills the kernel's buffers, and a drain
    without a deadline waited for ever (an attack review: 55 s and counting).  A master that
    reads, however slowly, is waited for (the kernel frees its buffer in steps of a megabyte
    or more: a review cut off an honest master reading 1 MB/s when it looked every second);
    what it sends meanwhile waits unread, so the connection's timers are left to the reads.
    """
    waiting = writer.transport.get_write_buffer_size()
    while True:
        try:
            async with asyncio.timeout(window):
                await writer.drain()
            return True
        except TimeoutError:
            left = writer.transport.get_write_buffer_size()
            if left >= waiting:
                return False
            waiting = left


#: The most characters of a session's end reason kept (the master's CLOSE allows 1,024 bytes, escaped here).
_REASON_CHARS = 4096
#: The shortest connection attempt once ``retry_for`` is nearly spent (seconds).
_SHORTEST_ATTEMPT = 0.5
#: Longer than any ``retry_for`` (seconds): about 31,700 years.
_FOREVER = 1e12
#: Seconds a session must last for the reconnection backoff to start again from 0.1 s.
_SETTLED = 10.0


def describe_os_error(exc: OSError) -> str:
    """One line saying why a connection failed (TLS errors included), never empty."""
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc.reason or 'certificate verify failed'}"
    if isinstance(exc, ssl_module.SSLError):
        return f"TLS: {exc.reason or exc.strerror or type(exc).__name__}"
    text = exc.strerror or str(exc) or type(exc).__name__
    return " ".join(text.split())


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:7000``), as ``--connect`` reads it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _session(
    host: str,
    port: int,
    *,
    features: Any,
    labels: Any,
    objective: Objective | None,
    model: str | None,
    name: str,
    classes: int | None,
    label_values: Any,
    shard: tuple[int, int] | None,
    shard_seed: int | None,
    data_fingerprint: str | None,
    connection_config: ConnectionConfig | None,
    ssl: ssl_module.SSLContext | None,
    server_hostname: str | None,
    connect_within: float | None = None,
    pace: Pace,
) -> WorkerResult:
    """One connection: from HELLO to the master's CLOSE or the end of the stream.

    The connection attempt is given the handshake timeout, or ``connect_within`` seconds if fewer.
    """
    # The connection and its TLS handshake within the handshake timeout, as the protocol's handshake
    # after them (an attack review: a master that never answered TLS held a worker for asyncio's 60 s,
    # a full accept queue for the kernel's 130 s of SYN retries, whatever --retry-for said).
    settings = connection_config or ConnectionConfig()
    limit = (
        settings.handshake_timeout
        if connect_within is None
        else min(settings.handshake_timeout, connect_within)
    )
    try:
        async with asyncio.timeout(limit) as scope:
            if ssl is None:
                reader, writer = await asyncio.open_connection(host, port, limit=READ_SIZE)
            else:
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    limit=READ_SIZE,
                    ssl=ssl,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=limit,
                )
    except TimeoutError:
        if not scope.expired():  # (the kernel's own connect timeout: said as it is)
            raise
        within = (
            "the handshake timeout" if limit == settings.handshake_timeout else "what was left of retry_for"
        )
        raise TimeoutError(f"not connected within {within} ({limit:.3g} s)") from None
    loop = asyncio.get_running_loop()
    started = loop.time()

    def now() -> float:
        return loop.time() - started

    session = WorkerSession(
        features,
        labels,
        objective=objective,
        model=model,
        name=name,
        classes=classes,
        label_values=label_values,
        shard=shard,
        shard_seed=shard_seed,
        data_fingerprint=data_fingerprint,
        connection_config=connection_config,
        now=now(),
        offload=True,
    )
    lost: OSError | None = None
    stalled = ""  # why a drain gave up, if one did
    backlog: list[bytes] = []  # what the master sent while this worker computed, not read yet
    try:
        while True:
            data = session.data_to_send()
            if data:
                writer.write(data)
                if not await _drain(writer, settings.idle_timeout):
                    writer.transport.abort()  # (a master that reads nothing: its bytes are not waited for)
                    stalled = f"the master took nothing this worker sent for {settings.idle_timeout:g} s"
                    break
                if not writer.transport.get_write_buffer_size() and not backlog:
                    # Every byte is with the kernel (or the TLS layer): while the master answers,
                    # compute the next step's model-free half (WorkerSession.prepare). With bytes
                    # still queued, preparing now would hold them back: the MODEL's step does it;
                    # and with bytes received, what they say comes first (a CLOSE, say).
                    session.prepare(now())
            ended = holds_end(backlog)  # (then owed work is dropped as its bytes are read)
            if session.work is not None and not ended:
                beat = settings.heartbeat_interval
                lost = await compute(session, (reader, writer), backlog, interval=beat, now=now, pace=pace)
                if not holds_end(backlog):
                    session.complete(now())  # (what came meanwhile is read next, as if it came now)
                continue
            if session.closed:
                break
            if session.pending and not ended:  # messages that came behind the answer just sent
                session.resume(now())
                continue
            if backlog:
                chunk = backlog.pop(0)
            else:
                timer = session.connection.get_timer()
                timeout = None if timer is None else max(0.0, timer - now())
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                    # cancellation that arrives as the read completes.
                    async with asyncio.timeout(timeout):
                        chunk = await reader.read(READ_SIZE)
                except TimeoutError:
                    session.handle_timer(now())
                    continue
                except (ConnectionError, OSError) as exc:
                    chunk, lost = b"", exc
            session.receive_data(chunk, now())
            if not chunk:
                data = session.data_to_send()
                if data and not writer.is_closing():
                    writer.write(data)
                break
    except (ConnectionError, OSError) as exc:
        lost = exc  # the master went away while we wrote: reported below as an unclean end
    except asyncio.CancelledError:
        # Cancelled (the process is stopping): say so with CLOSE(GOING_AWAY) if the transport
        # takes it now, then leave at once rather than wait for bytes the master may not read.
        with contextlib.suppress(Exception):
            if not session.closed:
                session.connection.close(now(), ErrorCode.GOING_AWAY, "the worker is stopping")
                writer.write(session.data_to_send())
        writer.transport.abort() if writer.transport.get_write_buffer_size() else writer.transport.close()
        raise
    finally:
        writer.close()
        try:
            async with asyncio.timeout(5.0):
                await writer.wait_closed()
        except TimeoutError:  # (bytes the master does not read, TLS's included: not kept with the socket)
            writer.transport.abort()
        except (ConnectionError, OSError):
            pass
    if objective is not None:  # (a preparation given up for the master's CLOSE, say: the caller's next)
        await after_earlier(objective, say_after=settings.heartbeat_interval)
    stream_ended = (int(ErrorCode.PROTOCOL_ERROR), "stream ended")
    code, reason = (int(ErrorCode.TIMEOUT), stalled) if stalled else session.ended or stream_ended
    # The master's words, printed and logged: control characters escaped (an attack review forged a log
    # line and cleared the terminal through a CLOSE's reason).
    reason = printable(reason, _REASON_CHARS)
    if (code, reason) == stream_ended:
        # The stream ended without CLOSE: say how, and where.
        how = f"connection lost ({describe_os_error(lost)})" if lost else "the master closed the connection"
        if session.worker_id is None:
            reason = f"{how} before answering HELLO"
            if ssl is not None:
                reason += (
                    " (a master whose run is over closes every connection at once; a master with mutual TLS"
                    " refuses a worker without a client certificate, or with one its --tls-client-ca did not"
                    " sign)"
                )
            else:  # (a TLS master reads the HELLO as a broken TLS handshake and drops it)
                reason += (
                    " (a master whose run is over closes every connection at once, as one does beyond its"
                    " --connection-rate, and one beyond its --max-unauthenticated the oldest of the busiest"
                    " address; a master with TLS needs aiodq worker --tls, run_worker(ssl=...))"
                )
        else:
            reason = f"{how} without CLOSE"
    elif code == ErrorCode.FRAME_TOO_LARGE and session.worker_id is None:
        # (an operator trial pointed a worker at an HTTP server: "frame body of 774975312 bytes")
        reason += " (before HELLO was answered: is the peer an aiodq master?)"
    return WorkerResult(code, reason, session.gradients_sent, session.failed, session.config is not None)
