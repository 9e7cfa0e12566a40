"""Message bodies: events to frames and frames to events (wire-format.md section 7).

HELLO, WELCOME and CONFIG carry a msgpack map; the other messages are binary:
varints for counters, little-endian floats, and a vector payload last.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from ..config import DEFAULT_LIMITS, Limits
from ..errors import CodecError, ErrorCode
from .cursor import Cursor, pack_f64, pack_u16, uvarint
from .events import (
    AuthChallenge,
    AuthConfirm,
    AuthResponse,
    Close,
    ConfigMessage,
    ErrorMessage,
    Event,
    FullGradient,
    Gradient,
    Heartbeat,
    Hello,
    ModelMessage,
    Snapshot,
    SnapshotGradient,
    Welcome,
)
from .frames import Frame, encode_frame
from .packing import aligned_width
from .payload import DecodedVector, VectorPlan, decode_vector, encode_vector, plan_vector, sparse_form_bits
from .registry import ALL_ENCODINGS, ALLOWED_ENCODINGS, FLAG_RELATIVE, Encoding, MessageType
from .vectors import RawVector, SparseQuantized, Vector

__all__ = [
    "MAGIC",
    "DecodeContext",
    "Decoded",
    "decode_body",
    "decode_message",
    "encode_message",
    "message_type_of",
    "vector_plan",
]

#: The ``magic`` value of HELLO (wire-format.md 7.1).
MAGIC = "aiodq"

_TYPES: dict[type, MessageType] = {
    Hello: MessageType.HELLO,
    Welcome: MessageType.WELCOME,
    ConfigMessage: MessageType.CONFIG,
    Snapshot: MessageType.SNAPSHOT,
    SnapshotGradient: MessageType.SNAPSHOT_GRADIENT,
    FullGradient: MessageType.FULL_GRADIENT,
    ModelMessage: MessageType.MODEL,
    Gradient: MessageType.GRADIENT,
    Heartbeat: MessageType.HEARTBEAT,
    ErrorMessage: MessageType.ERROR,
    Close: MessageType.CLOSE,
    AuthChallenge: MessageType.AUTH_CHALLENGE,
    AuthResponse: MessageType.AUTH_RESPONSE,
    AuthConfirm: MessageType.AUTH_CONFIRM,
}


def message_type_of(event: Event) -> MessageType:
    """Return the frame type that carries ``event``.

    Raises:
        TypeError: for an event that is not a message (ConnectionClosed).
    """
    try:
        return _TYPES[type(event)]
    except KeyError:
        raise TypeError(f"{type(event).__name__} is not a wire message") from None


def vector_plan(
    event: Event, *, dense_rice: bool = False, aligned: bool = False, sparse_gradient: bool = False
) -> VectorPlan | None:
    """The encoding of ``event``'s vector, chosen once (:func:`~aiodq.codec.payload.plan_vector`).

    ``sparse_gradient``: a GRADIENT's dense quantized codes may go in their sparse form
    where that is smaller (``plan_vector``'s ``sparse_form``; other messages never do).
    Returns None for messages without a vector.

    Raises:
        ValueError: if the message may not carry that encoding (wire-format.md 7).
    """
    vector: Vector | None = getattr(event, "vector", None)
    if vector is None:
        return None
    sparse_form = sparse_gradient and isinstance(event, Gradient)
    plan = plan_vector(vector, dense_rice=dense_rice, aligned=aligned, sparse_form=sparse_form)
    _check_allowed(message_type_of(event), plan.encoding, getattr(event, "relative", False))
    return plan


def _check_allowed(message_type: MessageType, encoding: Encoding, relative: bool) -> None:
    if encoding not in ALLOWED_ENCODINGS[message_type]:
        raise ValueError(f"{message_type.name} cannot carry a {encoding.name} vector")
    if relative and encoding in (Encoding.ZERO, Encoding.EQUALS_SNAPSHOT):
        raise ValueError(f"a RELATIVE MODEL cannot carry {encoding.name}; send EqualsSnapshot unflagged")


def _packb(value: Mapping[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def encode_message(
    event: Event,
    version: int = 1,
    *,
    dense_rice: bool = False,
    aligned: bool = False,
    sparse_gradient: bool = False,
    plan: VectorPlan | None = None,
) -> bytes:
    """Encode ``event`` as one frame.

    HELLO, WELCOME and the AUTH messages always carry header version 1
    (wire-format.md 6.1); the others carry ``version``, the negotiated one.

    Args:
        event: the message.
        version: the negotiated protocol version.
        dense_rice: send dense quantized codes Rice-coded (DENSE_RICE) where that is smaller.
        aligned: send fixed-width codes byte-aligned, in the narrowest of 1, 2, 4, 8 or 16 bits
            that holds them (:func:`~aiodq.codec.packing.aligned_width`).
        sparse_gradient: send a GRADIENT's dense quantized codes in their sparse form where
            that is smaller (with ``dense_rice``; see :func:`vector_plan`).
        plan: the vector's encoding, if the caller chose it already with :func:`vector_plan`
            (then ``dense_rice``, ``aligned`` and ``sparse_gradient`` are not looked at).

    Raises:
        TypeError: if ``event`` is not a wire message.
        ValueError: if a vector encoding is not allowed in the message.
    """
    message_type = message_type_of(event)
    if plan is None:
        plan = vector_plan(event, dense_rice=dense_rice, aligned=aligned, sparse_gradient=sparse_gradient)
    flags = 0
    parts: list[bytes]
    if isinstance(event, Hello):
        version = 1
        parts = [
            _packb(
                {
                    "magic": MAGIC,
                    "min_version": event.min_version,
                    "max_version": event.max_version,
                    "encodings": sorted(event.encodings),
                    "name": event.name,
                    **({} if event.shard is None else {"shard": list(event.shard)}),
                }
            )
        ]
    elif isinstance(event, Welcome):
        version = 1
        parts = [
            _packb(
                {
                    "version": event.version,
                    "worker_id": event.worker_id,
                    "encodings": sorted(event.encodings),
                }
            )
        ]
    elif isinstance(event, ConfigMessage):
        parts = [_packb({"dim": event.dim, "algorithm": event.algorithm, "params": event.params})]
    elif isinstance(event, Snapshot | FullGradient):
        parts = [uvarint(event.epoch), *encode_vector(event.vector, plan)]
    elif isinstance(event, SnapshotGradient):
        parts = [
            uvarint(event.epoch),
            uvarint(event.samples),
            uvarint(event.correct),
            pack_f64(event.loss),
            *encode_vector(event.vector, plan),
        ]
    elif isinstance(event, ModelMessage):
        flags = FLAG_RELATIVE if event.relative else 0
        parts = [uvarint(event.epoch), uvarint(event.version), *encode_vector(event.vector, plan)]
    elif isinstance(event, Gradient):
        parts = [uvarint(event.epoch), uvarint(event.version), *encode_vector(event.vector, plan)]
    elif isinstance(event, Heartbeat):
        parts = []
    elif isinstance(event, AuthChallenge):
        version, parts = 1, [event.nonce]
    elif isinstance(event, AuthResponse):
        version, parts = 1, [event.nonce, event.mac]
    elif isinstance(event, AuthConfirm):
        version, parts = 1, [event.mac]
    elif isinstance(event, ErrorMessage):
        parts = [
            pack_u16(event.code),
            uvarint(event.epoch),
            uvarint(event.version),
            event.reason.encode(),
        ]
    else:
        assert isinstance(event, Close)
        parts = [pack_u16(event.code), event.reason.encode()]
    return encode_frame(version, message_type, flags, parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeContext:
    """What the receiver knows that decoding depends on."""

    #: Receiver limits.
    limits: Limits = DEFAULT_LIMITS
    #: The configured model dimension, once CONFIG has been exchanged.
    dim: int | None = None
    #: Encodings this receiver announced it can decode.
    encodings: frozenset[int] = frozenset(Encoding)


def _malformed(message: str) -> CodecError:
    return CodecError(message, ErrorCode.MALFORMED_FRAME)


def _config_error(message: str) -> CodecError:
    return CodecError(message, ErrorCode.INVALID_CONFIG)


def _refuse_ext(code: int, data: bytes) -> Any:
    """Refuse an ext value: wire-format.md 7-6 makes any ext type malformed, whatever its length.

    ``max_ext_len=0`` alone lets a zero-length one through to here.
    """
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _unpack_map(body: bytes, limits: Limits, what: str) -> dict[str, Any]:
    if len(body) > limits.max_control_bytes:
        raise CodecError(f"{what} body exceeds {limits.max_control_bytes} bytes", ErrorCode.LIMIT_EXCEEDED)
    try:
        value = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_control_bytes,
            max_bin_len=limits.max_control_bytes,
            max_array_len=limits.max_control_bytes,
            max_map_len=limits.max_control_bytes,
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData) as exc:
        raise _malformed(f"{what}: not one msgpack value: {exc}") from exc
    except RecursionError as exc:  # pragma: no cover - msgpack's C unpacker limits depth itself
        raise _malformed(f"{what}: nested too deeply") from exc
    if not isinstance(value, dict):
        raise _config_error(f"{what} must be a msgpack map")
    return value


def _field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in body:
        raise _config_error(f"{what}: field {key!r} is missing")
    value = body[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _config_error(f"{what}: field {key!r} has the wrong type")
    return value


def _encodings(body: dict[str, Any], what: str) -> frozenset[int]:
    values = _field(body, "encodings", list, what)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 15 for v in values):
        raise _config_error(f"{what}: encodings are integers from 0 to 15")
    return frozenset(values)


def _shard(body: dict[str, Any], what: str) -> tuple[int, int] | None:
    """HELLO's optional ``shard``: an array of two ints, index then count (7.1-9)."""
    if "shard" not in body:
        return None
    value = _field(body, "shard", list, what)
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _config_error(f"{what}: shard is an array of two integers, index and count")
    return value[0], value[1]  # their range is Hello's rule, turned into INVALID_CONFIG by _build


def _build(factory: Callable[..., Event], what: str, **fields: Any) -> Event:
    """Construct an event, turning its validation errors into INVALID_CONFIG."""
    try:
        return factory(**fields)
    except (ValueError, TypeError) as exc:
        raise _config_error(f"{what}: {exc}") from exc


def _reason(cursor: Cursor, limits: Limits) -> str:
    raw = cursor.rest()
    if len(raw) > limits.max_reason_bytes:
        raise CodecError(f"reason longer than {limits.max_reason_bytes} bytes", ErrorCode.LIMIT_EXCEEDED)
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed("reason is not valid UTF-8") from exc


@functools.lru_cache(maxsize=128)
def _allowed(message_type: MessageType, announced: frozenset[int]) -> frozenset[Encoding]:
    """Encodings a message may carry and this receiver announced (wire-format.md 6.2)."""
    return ALLOWED_ENCODINGS[message_type] & {Encoding(e) for e in announced if e in ALL_ENCODINGS}


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded message, the encoding its vector came in and that vector's analytic payload bits."""

    #: The event.
    event: Event
    #: Analytic vector payload bits (docs/algorithms.md 10), counted while decoding; 0 without a vector.
    payload_bits: int = 0
    #: The vector's encoding, or None for a message without a vector.
    encoding: Encoding | None = None

    def counted_bits(self, dense_bits: int = 0) -> int:
        """:attr:`payload_bits`; a sparse GRADIENT's as the dense ``dense_bits``-bit vector it stands for.

        A receiver of a run whose gradients are dense b-bit codes (``dense_bits`` = b; 0: none)
        counts their sparse form as its sender did (:func:`~aiodq.codec.payload.sparse_form_bits`).
        The form's width tells how the sender packed it: b, or its byte-aligned container.  A
        sparse vector of another width, or with codes beyond b bits, is none (the master's guard
        refuses it): it is counted as it came.
        """
        vector = getattr(self.event, "vector", None)
        if not (dense_bits and isinstance(self.event, Gradient) and isinstance(vector, SparseQuantized)):
            return self.payload_bits
        if vector.bits == dense_bits:  # (its codes are b-bit codes)
            return sparse_form_bits(vector, dense_bits)
        top = 1 << (dense_bits - 1)  # (a sparse vector holds one code at least)
        if (
            vector.bits != aligned_width(dense_bits)
            or not -top <= int(vector.codes.min()) <= int(vector.codes.max()) < top
        ):
            return self.payload_bits
        return sparse_form_bits(vector, dense_bits, aligned=True)


def decode_message(frame: Frame, context: DecodeContext) -> Event:
    """Decode one frame's body into its event (see :func:`decode_body`).

    Raises:
        CodecError: with the wire error code of the first rule broken.
        TypeError: if ``frame`` is not a :class:`Frame`.
    """
    return decode_body(frame, context).event


def decode_body(frame: Frame, context: DecodeContext) -> Decoded:
    """Decode one frame's body into its event, counting its vector's analytic bits.

    The frame's version is the connection's business; this checks the type,
    the flags and every field.

    Raises:
        CodecError: with the wire error code of the first rule broken.
        TypeError: if ``frame`` is not a :class:`Frame` (the bytes of one: feed them to a FrameReader).
    """
    if not isinstance(frame, Frame):  # (an API audit: bytes gave an AttributeError)
        raise TypeError(f"decoding takes a Frame (FrameReader.next_frame()), not {type(frame).__name__}")
    try:
        message_type = MessageType(frame.type)
    except ValueError:
        raise CodecError(f"unknown message type {frame.type:#04x}", ErrorCode.UNKNOWN_MESSAGE_TYPE) from None
    allowed_flags = FLAG_RELATIVE if message_type == MessageType.MODEL else 0
    if frame.flags & ~allowed_flags:
        raise _malformed(f"{message_type.name}: reserved flag bits {frame.flags:#04x} set")
    limits = context.limits
    what = message_type.name
    if message_type == MessageType.HELLO:
        body = _unpack_map(frame.body, limits, what)
        if body.get("magic") != MAGIC:
            raise _config_error("HELLO: magic is not 'aiodq'")
        return Decoded(
            _build(
                Hello,
                what,
                min_version=_field(body, "min_version", int, what),
                max_version=_field(body, "max_version", int, what),
                encodings=_encodings(body, what),
                name=_field(body, "name", str, what),
                shard=_shard(body, what),
            )
        )
    if message_type == MessageType.WELCOME:
        body = _unpack_map(frame.body, limits, what)
        return Decoded(
            _build(
                Welcome,
                what,
                version=_field(body, "version", int, what),
                worker_id=_field(body, "worker_id", int, what),
                encodings=_encodings(body, what),
            )
        )
    if message_type == MessageType.CONFIG:
        body = _unpack_map(frame.body, limits, what)
        dim = _field(body, "dim", int, what)
        if dim < 1:
            raise _config_error(f"CONFIG: dim {dim} is not positive")
        if dim > limits.max_dimension:
            raise CodecError(
                f"CONFIG: dim {dim} exceeds the limit {limits.max_dimension}", ErrorCode.LIMIT_EXCEEDED
            )
        return Decoded(
            _build(
                ConfigMessage,
                what,
                dim=dim,
                algorithm=_field(body, "algorithm", str, what),
                params=_field(body, "params", dict, what),
            )
        )
    cursor = Cursor(frame.body)
    event: Event
    payload: DecodedVector | None = None
    if message_type in ALLOWED_ENCODINGS:
        # Every vector-carrying message: its counters first, the vector payload last (7.4-7.8).
        epoch = cursor.uvarint("epoch")
        if message_type in (MessageType.MODEL, MessageType.GRADIENT):
            version = cursor.uvarint("version")
        elif message_type == MessageType.SNAPSHOT_GRADIENT:
            samples = cursor.uvarint("samples")
            correct = cursor.uvarint("correct")
            loss = cursor.f64("loss")
        payload = decode_vector(
            cursor,
            limits,
            expected_dim=context.dim,
            allowed=_allowed(message_type, context.encodings),
        )
        vector = payload.vector
    if message_type == MessageType.SNAPSHOT:
        assert isinstance(vector, RawVector)  # guaranteed by ALLOWED_ENCODINGS
        event = Snapshot(epoch=epoch, vector=vector)
    elif message_type == MessageType.SNAPSHOT_GRADIENT:
        assert isinstance(vector, RawVector)
        event = SnapshotGradient(epoch=epoch, samples=samples, correct=correct, loss=loss, vector=vector)
    elif message_type == MessageType.FULL_GRADIENT:
        assert isinstance(vector, RawVector)
        event = FullGradient(epoch=epoch, vector=vector)
    elif message_type == MessageType.MODEL:
        assert payload is not None
        relative = bool(frame.flags & FLAG_RELATIVE)
        if relative and payload.encoding in (Encoding.ZERO, Encoding.EQUALS_SNAPSHOT):
            raise CodecError(
                "a RELATIVE MODEL cannot carry ZERO or EQUALS_SNAPSHOT", ErrorCode.INVALID_PAYLOAD
            )
        event = ModelMessage(epoch=epoch, version=version, vector=vector, relative=relative)
    elif message_type == MessageType.GRADIENT:
        event = Gradient(epoch=epoch, version=version, vector=vector)
    elif message_type == MessageType.HEARTBEAT:
        cursor.expect_end("HEARTBEAT")
        event = Heartbeat()
    elif message_type == MessageType.AUTH_CHALLENGE:
        nonce = bytes(cursor.take(32, "nonce"))
        cursor.expect_end("AUTH_CHALLENGE")
        event = AuthChallenge(nonce=nonce)
    elif message_type == MessageType.AUTH_RESPONSE:
        nonce = bytes(cursor.take(32, "nonce"))
        mac = bytes(cursor.take(32, "mac"))
        cursor.expect_end("AUTH_RESPONSE")
        event = AuthResponse(nonce=nonce, mac=mac)
    elif message_type == MessageType.AUTH_CONFIRM:
        mac = bytes(cursor.take(32, "mac"))
        cursor.expect_end("AUTH_CONFIRM")
        event = AuthConfirm(mac=mac)
    elif message_type == MessageType.ERROR:
        code = cursor.u16("code")
        epoch = cursor.uvarint("epoch")
        version = cursor.uvarint("version")
        event = ErrorMessage(code=code, epoch=epoch, version=version, reason=_reason(cursor, limits))
    else:
        code = cursor.u16("code")
        event = Close(code=code, reason=_reason(cursor, limits))
    if payload is None:
        return Decoded(event)
    return Decoded(event, payload.payload_bits, payload.encoding)
