"""`pack` writes an Envelope by hand: the bytes must be protobuf's own, for every body."""

from __future__ import annotations

import pytest
from google.protobuf.message_factory import GetMessageClass

from llmos.wire import pack, pb, unpack
from llmos.wire.constants import PROTOCOL_VERSION
from llmos.wire.envelope import body_name

BODY_TYPES = [
    GetMessageClass(field.message_type) for field in pb.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields
]


def protobuf_envelope(message) -> bytes:
    envelope = pb.Envelope(version=PROTOCOL_VERSION)
    getattr(envelope, body_name(message)).CopyFrom(message)
    return envelope.SerializeToString()


@pytest.mark.parametrize("body_type", BODY_TYPES, ids=lambda t: t.DESCRIPTOR.name)
def test_an_empty_body_packs_as_protobuf_serializes_it(body_type):
    message = body_type()
    assert pack(message) == protobuf_envelope(message)
    assert unpack(pack(message), frozenset({body_name(message)}))[1] == message


@pytest.mark.parametrize(
    "message",
    [
        pb.TokenChunk(request_id="r" * 40, token_ids=[1, 300, 70000], text=" tok", index=5),
        pb.GenerateRequest(request_id="r1", prompt="x" * 127, tier="batch"),
        pb.GenerateRequest(request_id="r2", prompt="y" * 128),  # a two-byte length
        pb.GenerateRequest(request_id="r3", prompt="z" * 20_000),  # past the table of lengths
        pb.StepProgress(
            worker_id="w", deltas=[pb.RequestDelta(request_id="r", token_ids=[7] * 900, text="é" * 50)]
        ),
    ],
    ids=["chunk", "length-127", "length-128", "length-20000", "progress"],
)
def test_a_body_packs_as_protobuf_serializes_it(message):
    assert pack(message) == protobuf_envelope(message)
    assert unpack(pack(message), frozenset({body_name(message)}))[1] == message
