"""Hostile traffic for the fuzz tests: generated envelopes of every message type,
raw frames and raw TCP bytes that are not ZMTP 3.

Envelopes come from the `.proto` descriptors, so a message added to the contract
is fuzzed without a change here. Field values lean to the edges a careless
service trips on: empty and huge strings, control characters, integers at their
type's limits, NaN and infinities, unknown enum values, long repeated fields.
"""

from __future__ import annotations

import socket
import struct

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from llmos.wire import pb
from llmos.wire.constants import PROTOCOL_VERSION

MAX_DEPTH = 3
HUGE_STRING_CHARS = 256 * 1024  # one frame of this costs little on loopback, much if a service keeps it
MAX_REPEATED = 40
HUGE_REPEATED = 20_000

INT_LIMITS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

# Not drain_worker: on an --insecure stack any client may drain a worker, by design,
# and a drained worker leaves (tests/test_security.py: only an admin key may, when secure).
BODY_NAMES = [
    field.name
    for field in pb.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields
    if field.name != "drain_worker"
]


def integers(field_type: int) -> st.SearchStrategy[int]:
    low, high = INT_LIMITS[field_type]
    edges = [value for value in (low, -1, 0, 1, 2, 1024, 2**31 - 1, high) if low <= value <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(["", "default", "standard", "batch", "llmos-tiny", "worker-0", "\x00", "../../etc"]),
        st.integers(1, HUGE_STRING_CHARS).map(lambda n: "x" * n),
    )


def scalar(field: FieldDescriptor) -> st.SearchStrategy:
    kind = field.type
    if kind in INT_LIMITS:
        return integers(kind)
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
        return st.floats(width=width, allow_nan=True, allow_infinity=True)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return strings()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    raise AssertionError(f"no strategy for field type {kind}")


def enum_values(field: FieldDescriptor) -> st.SearchStrategy[int]:
    # proto3 enums are open: an unknown number parses and must be refused
    known = [value.number for value in field.enum_type.values]
    return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))


def field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        value = messages(field.message_type, depth + 1)
    elif field.type == FieldDescriptor.TYPE_ENUM:
        value = enum_values(field)
    else:
        value = scalar(field)
    if not field.is_repeated:
        return value
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return st.lists(value, max_size=MAX_REPEATED // 4)
    # A long list comes as one value many times, so it needs no long draw. Repeated
    # strings are short but for one: a huge string many times (or in many nested
    # messages) is gigabytes to serialize in this process, and a frame past the
    # services' MAXMSGSIZE only ever tests the cut-off.
    if field.type == FieldDescriptor.TYPE_STRING:
        short = st.text(max_size=16)
        return st.one_of(
            st.lists(short, max_size=MAX_REPEATED),
            strings().map(lambda text: [text]),  # one string of any size, huge ones included
            st.tuples(short, st.integers(1, HUGE_REPEATED)).map(lambda pair: [pair[0]] * pair[1]),
        )
    return st.one_of(
        st.lists(value, max_size=MAX_REPEATED),
        st.tuples(value, st.integers(1, HUGE_REPEATED)).map(lambda pair: [pair[0]] * pair[1]),
    )


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    message_class = getattr(pb, descriptor.name)
    if depth >= MAX_DEPTH:
        return st.just(message_class())

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = message_class()
        for field in descriptor.fields:
            if not draw(st.booleans()):
                continue
            value = draw(field_values(field, depth))
            if field.is_repeated:
                getattr(message, field.name).extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, field.name).CopyFrom(value)
            else:
                setattr(message, field.name, value)
        return message

    return build()


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """A serialized Envelope of any body type, usually of the current version."""
    body_name = draw(st.sampled_from(BODY_NAMES))
    body_field = pb.Envelope.DESCRIPTOR.fields_by_name[body_name]
    envelope = pb.Envelope(
        version=draw(st.one_of(st.just(PROTOCOL_VERSION), integers(FieldDescriptor.TYPE_UINT32)))
    )
    getattr(envelope, body_name).CopyFrom(draw(messages(body_field.message_type)))
    return envelope.SerializeToString()


def frame_lists() -> st.SearchStrategy[list[bytes]]:
    """What a DEALER may send a ROUTER: an envelope alone (DEALER layout), after an
    empty delimiter (REQ layout), or frames that are neither."""
    garbage = st.binary(max_size=512)
    return st.one_of(
        envelopes().map(lambda payload: [payload]),
        envelopes().map(lambda payload: [b"", payload]),
        st.lists(st.one_of(garbage, envelopes()), min_size=1, max_size=6),
        garbage.map(lambda payload: [payload]),
    )


# ---------------------------------------------------------------- raw TCP


def zmtp3_greeting(mechanism: bytes = b"NULL", as_server: int = 0, minor: int = 0) -> bytes:
    return (
        b"\xff"
        + b"\x00" * 8
        + b"\x7f"
        + bytes([3, minor])
        + mechanism.ljust(20, b"\x00")
        + bytes([as_server])
        + b"\x00" * 31
    )


def zmtp2_greeting(socket_type: int = 5) -> bytes:
    """ZMTP 2.0 (revision 1): signature, revision, socket type, then an identity frame."""
    return b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([1, socket_type]) + b"\x00\x00"


def zmtp1_message(body: bytes) -> bytes:
    """ZMTP 1.0 framing: a length octet (or 0xff and 8 octets), flags, body."""
    length = len(body) + 1
    prefix = bytes([length]) if length < 255 else b"\xff" + struct.pack(">Q", length)
    return prefix + b"\x00" + body


def raw_streams() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(min_size=1, max_size=2048),
        st.sampled_from(
            [
                zmtp2_greeting() + zmtp1_message(b"hello") * 3,
                zmtp2_greeting(socket_type=1) + b"\x01\x00" + b"\x00\x05hello",
                zmtp1_message(b"") + zmtp1_message(b"\x08\x01"),
                zmtp3_greeting(b"PLAIN"),
                zmtp3_greeting(b"CURVE", as_server=1),
                zmtp3_greeting(minor=1) + b"\x04\xff" + b"\x05READY" * 60,
                zmtp3_greeting() + b"\x06" + b"\xff" * 16,
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            ]
        ),
        st.tuples(st.sampled_from([zmtp2_greeting(), zmtp3_greeting()]), st.binary(max_size=1024)).map(
            lambda pair: pair[0] + pair[1]
        ),
    )


def zmtp3_frame(body: bytes, is_command: bool = False) -> bytes:
    """One ZMTP 3 frame, the last of its message: flags, a short or long size, body."""
    flags = 0x04 if is_command else 0x00
    if len(body) < 256:
        return bytes([flags]) + bytes([len(body)]) + body
    return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body


def zmtp3_ready(socket_type: bytes) -> bytes:
    name = b"Socket-Type"
    body = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(socket_type)) + socket_type
    return zmtp3_frame(body, is_command=True)


def receive_exactly(conn: socket.socket, num_bytes: int) -> bytes:
    data = b""
    while len(data) < num_bytes:
        chunk = conn.recv(num_bytes - len(data))
        if not chunk:
            raise ConnectionResetError("the peer hung up")
        data += chunk
    return data


class RawSubscriber:
    """An XSUB spoken by hand over TCP (ZMTP 3.0, NULL mechanism).

    libzmq's own XSUB keeps every subscription it sends in a trie that it walks
    recursively (one level a byte), so a 256 KiB subscription overflows the
    sender's stack: a test that sends such subscriptions through pyzmq crashes
    itself. This peer keeps nothing; when the publisher cuts it off (as it must
    for a frame that long) it connects again.
    """

    def __init__(self, address: str) -> None:
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        self.host_port = (host, int(port))
        self.conn: socket.socket | None = None

    def connect(self) -> socket.socket:
        conn = socket.create_connection(self.host_port, timeout=2.0)
        self.conn = conn
        # step by step, as libzmq expects: what follows the handshake in the same
        # segment may be read before the connection is attached, and lost
        conn.sendall(zmtp3_greeting())
        receive_exactly(conn, 64)
        conn.sendall(zmtp3_ready(b"XSUB"))
        flags, size = receive_exactly(conn, 2)
        assert flags == 0x04, f"expected a short command, got flags {flags:#x}"
        receive_exactly(conn, size)  # the publisher's READY
        return conn

    def send(self, message: bytes) -> None:
        for _ in range(2):  # once on a live connection, once more on a new one
            try:
                conn = self.conn or self.connect()
                conn.sendall(zmtp3_frame(message))
                return
            except OSError:
                self.close()

    def drain(self) -> None:
        """Read and forget what the publisher sent (its greeting, READY, views)."""
        if self.conn is None:
            return
        try:
            self.conn.setblocking(False)
            while self.conn.recv(65536):
                pass
            self.close()  # an orderly end of stream: the publisher hung up
        except BlockingIOError:
            self.conn.settimeout(2.0)
        except OSError:
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def send_raw(address: str, data: bytes, read_timeout_s: float = 0.05) -> None:
    """Connect to a tcp:// address, send `data`, read what comes back briefly, close."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2.0) as conn:
        try:
            conn.sendall(data)
            conn.settimeout(read_timeout_s)
            conn.recv(4096)
        except OSError:
            pass  # the service hung up on us, as it may
