"""Exceptions and the wire error-code registry (wire-format.md section 9).

Every exception aiodq raises on purpose derives from :class:`AiodqError`::

    AiodqError
    +-- ProtocolError            a rule of the wire protocol was broken (carries an ErrorCode)
    |   +-- LocalProtocolError   this side asked for something the protocol forbids
    |   +-- RemoteProtocolError  the peer sent something the protocol forbids
    |   +-- CodecError           bytes that do not decode (raised by the pure codec)
    +-- NonFiniteError           a quantizer got NaN or infinite values (also a ValueError)
    +-- DataError                a data file is missing, unreadable or malformed (also a ValueError)
    +-- CheckpointError          a checkpoint cannot be read or does not fit the run (also a ValueError)
    +-- RunError                 a run could not complete: a process died, a timeout (also a RuntimeError)
    +-- StoppedError             SIGTERM or SIGHUP stopped a command, after its clean-up
    +-- UsageError               bad options on the command line (exit status 2)

Protocol errors say who is at fault and carry the :class:`ErrorCode` that goes
on the wire in a CLOSE or ERROR message.
"""

from __future__ import annotations

import os
import signal
import traceback
from enum import IntEnum
from typing import Any

__all__ = [
    "AiodqError",
    "CheckpointError",
    "CodecError",
    "DataError",
    "ErrorCode",
    "LocalProtocolError",
    "NonFiniteError",
    "ProtocolError",
    "RemoteProtocolError",
    "RunError",
    "StoppedError",
    "TRAINING_COMPLETE",
    "UnusedOptionWarning",
    "UsageError",
    "code_name",
    "raised_at",
]


#: The reason of the CLOSE (NO_ERROR) that ends a run's sessions when training ended without a verdict
#: against it (a run that diverged or did not train ends them with NO_ERROR too, the verdict its reason).
TRAINING_COMPLETE = "training complete"


class ErrorCode(IntEnum):
    """Error codes carried by CLOSE and ERROR messages (wire-format.md 9)."""

    #: "The session ended normally."
    NO_ERROR = 0
    #: "A rule of this specification was broken and no more specific code applies."
    PROTOCOL_ERROR = 1
    #: "A frame's declared length exceeds the receiver's frame-size limit."
    FRAME_TOO_LARGE = 2
    #: "The frame's version is not the negotiated one, or no common version exists."
    UNSUPPORTED_VERSION = 3
    #: "The frame type is not defined in this version."
    UNKNOWN_MESSAGE_TYPE = 4
    #: "A frame or message body is truncated, over-long or has reserved bits set."
    MALFORMED_FRAME = 5
    #: "A vector encoding is reserved, not allowed in this message, or not announced as supported."
    UNSUPPORTED_ENCODING = 6
    #: "A vector payload breaks its encoding's rules (counts, padding, canonical form)."
    INVALID_PAYLOAD = 7
    #: "A dimension or count exceeds a receiver limit."
    LIMIT_EXCEEDED = 8
    #: "A vector's dimension differs from the configured model dimension."
    WRONG_DIMENSION = 9
    #: "A value is NaN or infinite."
    NON_FINITE = 10
    #: "The message is not allowed in the connection's current state."
    UNEXPECTED_MESSAGE = 11
    #: "The message names an epoch other than the current one."
    UNKNOWN_EPOCH = 12
    #: "The message names a model version the receiver has not sent yet."
    FUTURE_VERSION = 13
    #: "The gradient was computed on a model older than the staleness bound allows."
    STALE_GRADIENT = 14
    #: "The peer stayed silent for longer than a configured timeout."
    TIMEOUT = 15
    #: "The sender hit an internal failure."
    INTERNAL_ERROR = 16
    #: "Authentication failed."
    AUTH_FAILED = 17
    #: "A control message carries a missing, mistyped or out-of-range field."
    INVALID_CONFIG = 18
    #: "The sender is shutting down."
    GOING_AWAY = 19
    #: "The gradient version is older than the model it answers."
    VERSION_MISMATCH = 20
    #: "The shard the worker claims in HELLO is held by another live worker."
    SHARD_TAKEN = 21
    #: "The shard count the worker claims in HELLO differs from the master's number of workers."
    WORLD_SIZE_MISMATCH = 22
    #: "The master refuses this HELLO for now: the worker of its shard was removed for what it sent."
    TRY_LATER = 23


def code_name(code: int) -> str:
    """The name of error code ``code`` (``"GOING_AWAY"``), or the number for an unknown one."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


class AiodqError(Exception):
    """The root of every exception aiodq raises on purpose."""


class ProtocolError(AiodqError):
    """A rule of the wire protocol was broken.

    Attributes:
        code: the wire error code that describes the failure.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        #: The wire error code for this failure.
        self.code = ErrorCode(code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, code={self.code.name})"


class LocalProtocolError(ProtocolError):
    """The local side tried to do something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class CodecError(ProtocolError):
    """Bytes that do not decode under the wire format.

    The pure codec raises it; it does not know which side sent the bytes; the
    connections re-raise it as :class:`RemoteProtocolError` with the same code.
    """


class NonFiniteError(AiodqError, ValueError):
    """An input vector holds NaN or infinite values, which no quantizer accepts."""


class DataError(AiodqError, ValueError):
    """A data file is missing, unreadable or malformed, or data has the wrong shape or type."""


class CheckpointError(AiodqError, ValueError):
    """A checkpoint file is missing, unreadable, or does not fit this run."""


class RunError(AiodqError, RuntimeError):
    """A run could not complete: the message says why.

    A launcher's run that stopped after training began (a timeout, a failed worker) carries
    the run as it stood in :attr:`result`.
    """

    def __init__(self, message: str, *, result: Any = None) -> None:
        super().__init__(message)
        #: The run as it stood when it stopped, an :class:`aiodq.RunResult` whose ``failure`` is
        #: this error's message (its model is the last snapshot, the point the trace's last loss
        #: evaluates); None if there is none (the run had not begun training, or the error is not
        #: a stopped run's).  (Typed ``Any`` here: the errors sit below the protocol's rings.)
        self.result = result


class StoppedError(AiodqError):
    """SIGTERM or SIGHUP stopped a command, after its clean-up ran (exit status 128 + the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        #: The signal's number.
        self.signum = signum


class SignalStop(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the command line is outside its event loop, as Ctrl-C is.

    A KeyboardInterrupt, so that no ``except Exception`` takes it (a review: a SIGTERM during the
    import of a user's model read as "cannot import" it, exit 2); the command line ends with
    :class:`StoppedError`'s line and status.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        #: The signal's number.
        self.signum = signum

    @staticmethod
    def handler(signum: int, frame: object) -> None:
        """SIGTERM's and SIGHUP's handler outside an event loop: the command stops where it is."""
        raise SignalStop(signum)


def stop_said(exc: BaseException) -> tuple[str, int]:
    """What a command says of a stop, and its exit status.

    Ctrl-C: ``interrupted``, 130; SIGTERM or SIGHUP (:class:`SignalStop`, :class:`StoppedError`):
    ``stopped by SIGTERM``, 128 + the signal.
    """
    if isinstance(exc, SignalStop | StoppedError):
        return f"stopped by {exc}", 128 + exc.signum
    return "interrupted", 130


class UsageError(AiodqError):
    """Bad command-line options or unreadable input: the command exits with status 2."""


class UnusedOptionWarning(UserWarning):
    """A :class:`~aiodq.TrainConfig` option set where its algorithm or model never reads it (phi, asylpg)."""


#: The package's folder: the frames of a failure outside it are the application's (its objective's).
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def raised_at(exc: BaseException) -> str:
    """`` (at FILE:LINE)``: where the application's code raised ``exc``, or passed it on.

    The last line outside aiodq in its traceback (its objective's ``loss_grad``, say, or the line of
    its factory that built a ``TorchObjective`` whose check failed); aiodq's last line if none is
    outside, but for aiodq's own checks (a ValueError or an aiodq error, whose text names what is
    wrong: a newcomer's audit read "(at .../aiodq/protocol/algorithms.py:437)" as aiodq's fault);
    empty without a traceback.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    theirs = [frame for frame in frames if not frame.filename.startswith(_PACKAGE + os.sep)]
    if not frames or (not theirs and isinstance(exc, ValueError | AiodqError)):
        return ""
    frame = (theirs or frames)[-1]
    return f" (at {frame.filename}:{frame.lineno})"
