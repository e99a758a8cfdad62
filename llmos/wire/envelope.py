"""Envelope packing and validation at the door.

`pack(msg)` wraps any body message in a versioned Envelope; `unpack(frame,
accepted)` parses one frame and raises `WireError` with the error code the
sender should get back, instead of letting a bad frame crash a service.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError, Message

from llmos.wire import llmos_pb2 as pb
from llmos.wire.constants import PROTOCOL_VERSION

MAX_ECHOED_REQUEST_ID_CHARS = 256  # above every service's own request id bound


def _body_fields_by_type() -> dict[str, str]:
    """Body message full name -> oneof field name, e.g. "llmos.v1.Cancel" -> "cancel"."""
    by_type: dict[str, str] = {}
    for field in pb.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields:
        assert field.message_type is not None, f"Envelope.{field.name} is not a message"
        by_type[field.message_type.full_name] = field.name
    return by_type


_FIELD_BY_TYPE = _body_fields_by_type()


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint encoding of a non-negative int."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _envelope_prefixes() -> dict[str, bytes]:
    """Body message full name -> the Envelope's bytes before the body's length: its
    `version` field, then the key of the body's oneof field (length-delimited)."""
    version = pb.Envelope.DESCRIPTOR.fields_by_name["version"]
    head = _varint(version.number << 3) + _varint(PROTOCOL_VERSION)
    return {
        field.message_type.full_name: head + _varint(field.number << 3 | 2)
        for field in pb.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields
        if field.message_type is not None
    }


# An Envelope is serialized by hand: these bytes, the body's length, the body. That is
# the bytes protobuf writes for it (fields in number order), without first copying the
# body into an Envelope, a deep copy of every message a service sends.
_PREFIX_BY_TYPE = _envelope_prefixes()
_LENGTHS = [_varint(length) for length in range(1 << 11)]  # most bodies' lengths, encoded once


class WireError(Exception):
    """A frame or message the receiver refuses; `code` goes back to the sender."""

    def __init__(self, code: int, message: str, request_id: str = "", retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after_ms = retry_after_ms


def body_name_of_type(message_type: type[Message]) -> str:
    """The Envelope's oneof field that carries `message_type`, e.g. pb.Cancel -> "cancel"."""
    return _FIELD_BY_TYPE[message_type.DESCRIPTOR.full_name]


def body_names(*message_types: type[Message]) -> frozenset[str]:
    """The `accepted` set of `unpack` for these message classes."""
    return frozenset(body_name_of_type(message_type) for message_type in message_types)


def body_name(message: Message) -> str:
    return body_name_of_type(type(message))


def pack(message: Message) -> bytes:
    """The Envelope carrying `message`, serialized."""
    body = message.SerializeToString()
    length = len(body)
    return b"".join(
        (
            _PREFIX_BY_TYPE[message.DESCRIPTOR.full_name],
            _LENGTHS[length] if length < len(_LENGTHS) else _varint(length),
            body,
        )
    )


def unknown_message(name: str, where: str = "this socket") -> WireError:
    """The one refusal of a message a socket does not take."""
    return WireError(pb.UNKNOWN_MESSAGE, f"message '{name}' is not accepted on {where}")


def unpack(frame: bytes, accepted: frozenset[str], where: str = "this socket") -> tuple[str, Message]:
    """Parse one frame; return (body name, body message) or raise WireError."""
    envelope = pb.Envelope()
    try:
        envelope.ParseFromString(frame)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise WireError(pb.MALFORMED_FRAME, f"frame is not an llmos Envelope ({exc})") from None
    name = envelope.WhichOneof("body")
    if envelope.version != PROTOCOL_VERSION:
        raise WireError(
            pb.UNSUPPORTED_VERSION,
            f"protocol version {envelope.version} is not supported; "
            f"this service speaks version {PROTOCOL_VERSION}",
            request_id_in(envelope, name),
        )
    if name is None:
        raise WireError(pb.UNKNOWN_MESSAGE, "envelope carries no message this service knows")
    if name not in accepted:
        error = unknown_message(name, where)
        error.request_id = request_id_in(envelope, name)
        raise error
    return name, getattr(envelope, name)


def request_id_in(envelope: pb.Envelope, name: str | None) -> str:
    """The refused message's request_id, if its type has one, so that a client with
    several requests in flight can tell which one the Error answers (cut to a bound:
    an error echoes no more of a peer's bytes than a valid id could hold)."""
    if name is None:
        return ""
    body = getattr(envelope, name)
    if "request_id" not in body.DESCRIPTOR.fields_by_name:
        return ""
    return str(body.request_id)[:MAX_ECHOED_REQUEST_ID_CHARS]


def error_frame(code: int, message: str, request_id: str = "", retry_after_ms: int = 0) -> bytes:
    return pack(error_message(WireError(code, message, request_id, retry_after_ms)))


def error_message(error: WireError) -> pb.Error:
    """The Error that tells the sender why `error` refused its message."""
    # the stub types `code` as the ErrorCode enum; at runtime every ErrorCode is an int
    return pb.Error(
        code=error.code,  # type: ignore[arg-type]
        message=error.message,
        request_id=error.request_id,
        retry_after_ms=error.retry_after_ms,
    )
