"""How a client rides through a broker restart: what it remembers of its live
requests, and when its connection counts as lost.

Both SDKs (`llmos.client`, `llmos.aio`) keep one LiveRequests: each request's
original message and what has arrived for it. After the connection to the broker
is lost, `resends()` gives the message to send again for each request (is_resend,
and for a generation the number of tokens the client already holds); `admit()`
passes every incoming message through, so that a second Accepted, tokens the
client already holds and refusals of a resend that can be retried never reach the
caller. The contract is in docs/protocol.md, "Reconnecting".

`LinkWatch` reads a connection's monitor events. No sockets here, and no clock
but the times passed in.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import cast

import zmq
from google.protobuf.message import Message

from llmos.wire import WireError, pack, pb, unpack
from llmos.wire.envelope import body_names

log = logging.getLogger(__name__)

# What a client accepts from the broker; anything else is dropped at the door.
CLIENT_ACCEPTS = body_names(
    pb.Accepted,
    pb.TokenChunk,
    pb.GenerateResult,
    pb.Error,
    pb.StatusReply,
    pb.DrainReply,
    pb.EmbedResult,
    pb.ClassifyResult,
)
# A request a client may have to send again.
ResendableRequest = pb.GenerateRequest | pb.EmbedRequest | pb.ClassifyRequest
# Replies that carry the request id they answer: every one a client accepts but a StatusReply.
TiedReply = pb.Accepted | pb.TokenChunk | pb.GenerateResult | pb.Error | pb.EmbedResult | pb.ClassifyResult

# The inbox key for replies that belong to no request: StatusReply, DrainReply, and errors the
# broker could not tie to a request id.
UNTIED = ""


def request_id_of(message: Message) -> str:
    """The request a broker message belongs to (UNTIED for status replies and
    errors the broker could not tie to a request)."""
    if isinstance(message, (pb.StatusReply, pb.DrainReply)):
        return UNTIED
    return cast(TiedReply, message).request_id


@dataclass
class LiveRequest:
    """One request between its send and its terminal reply."""

    request: ResendableRequest
    is_accepted: bool = False
    is_cancelled: bool = False
    # resent, and the broker has not answered the resend yet
    is_resend_unanswered: bool = False
    resend_due_s: float | None = None  # a refused resend goes out again at this time
    num_tokens_held: int = 0
    num_chars_held: int = 0  # of the text the held chunks carry
    # {token index: text chars held} at the end of each chunk held, so that a stream
    # resumed from one of those indexes can be lined up with the text already held
    chars_at_index: dict[int, int] = field(default_factory=lambda: {0: 0})
    # text chars up to the end of the last chunk on the current connection; None until
    # the connection's first chunk says where its stream starts
    stream_chars: int | None = 0

    def merge(self, chunk: pb.TokenChunk) -> pb.TokenChunk | None:
        """The part of `chunk` the client does not hold yet (the chunk itself when all
        of it is new), or None. A stream resumed after a reconnect may start before
        the tokens held: from 0 where the broker generated the answer again, from the
        journal's last index where it kept fewer tokens than it sent."""
        if self.stream_chars is None:
            self.stream_chars = self.chars_at_index.get(chunk.index)
            if self.stream_chars is None:
                log.warning(
                    "request %s: resumed stream starts at token %d, not a chunk boundary held; "
                    "its text may not line up",
                    self.request.request_id,
                    chunk.index,
                )
                self.stream_chars = self.num_chars_held if chunk.index >= self.num_tokens_held else 0
        start_chars = self.stream_chars
        end_index = chunk.index + len(chunk.token_ids)
        end_chars = start_chars + len(chunk.text)
        self.stream_chars = end_chars
        self.chars_at_index[end_index] = end_chars
        if chunk.index > self.num_tokens_held:
            log.warning(
                "request %s: chunk at token %d, but only %d tokens held",
                self.request.request_id,
                chunk.index,
                self.num_tokens_held,
            )
        is_all_new = chunk.index >= self.num_tokens_held and start_chars >= self.num_chars_held
        num_tokens_skipped = max(0, self.num_tokens_held - chunk.index)
        num_chars_skipped = max(0, self.num_chars_held - start_chars)
        self.num_tokens_held = max(self.num_tokens_held, end_index)
        self.num_chars_held = max(self.num_chars_held, end_chars)
        if is_all_new:
            return chunk
        token_ids = chunk.token_ids[num_tokens_skipped:]
        text = chunk.text[num_chars_skipped:]
        if not token_ids and not text:
            return None
        return pb.TokenChunk(
            request_id=chunk.request_id,
            token_ids=token_ids,
            text=text,
            index=chunk.index + num_tokens_skipped,
        )

    def resend(self) -> ResendableRequest:
        """The request as sent again on a new connection."""
        message = copy.deepcopy(self.request)
        message.is_resend = True
        if isinstance(message, pb.GenerateRequest):
            message.resume_from_index = self.num_tokens_held
        return message


class LiveRequests:
    """The client's live requests by id: added when sent, gone at their terminal reply."""

    def __init__(self) -> None:
        self._requests: dict[str, LiveRequest] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, request: ResendableRequest) -> None:
        self._requests[request.request_id] = LiveRequest(request)

    def forget(self, request_id: str) -> None:
        """The caller stopped waiting for it (a timeout): never send it again."""
        self._requests.pop(request_id, None)

    def mark_cancelled(self, request_id: str) -> None:
        """A cancel was sent: a resend is followed by the cancel again."""
        live = self._requests.get(request_id)
        if live is not None:
            live.is_cancelled = True

    def admit(self, message: Message, now_s: float) -> Message | None:
        """What of an incoming message to hand to the caller, or None.

        Messages for requests that are not live pass unchanged (the caller drops or
        routes them). A generation's chunk is trimmed to the tokens not held yet; a
        second Accepted (the answer to a resend) is dropped; so is a refusal of a
        resend that says when to retry, which goes out again then (`due_resends`).
        A terminal reply ends the request here."""
        request_id = request_id_of(message)
        live = self._requests.get(request_id)
        if live is None:
            return message
        if isinstance(message, pb.TokenChunk):
            live.is_resend_unanswered = False
            return live.merge(message)
        if isinstance(message, pb.Accepted):
            was_accepted, live.is_accepted, live.is_resend_unanswered = live.is_accepted, True, False
            return None if was_accepted else message
        if isinstance(message, pb.Error) and live.is_resend_unanswered and message.retry_after_ms > 0:
            live.resend_due_s = now_s + message.retry_after_ms / 1000
            log.info(
                "request %s: resend refused (%s); sending it again in %d ms",
                request_id,
                pb.ErrorCode.Name(message.code),
                message.retry_after_ms,
            )
            return None
        del self._requests[request_id]
        return message

    def resends(self) -> list[Message]:
        """Every live request as sent again on a new connection (each followed by its
        Cancel if one was sent); from here on each one's stream may start anew."""
        return [message for live in self._requests.values() for message in self._resend(live)]

    def due_resends(self, now_s: float) -> list[Message]:
        """The refused resends whose retry time has come."""
        return [
            message
            for live in self._requests.values()
            if live.resend_due_s is not None and live.resend_due_s <= now_s
            for message in self._resend(live)
        ]

    def next_due_s(self) -> float | None:
        """When the next refused resend is due (None: none is)."""
        due = [live.resend_due_s for live in self._requests.values() if live.resend_due_s is not None]
        return min(due) if due else None

    def _resend(self, live: LiveRequest) -> list[Message]:
        live.is_resend_unanswered = True
        live.resend_due_s = None
        live.stream_chars = None
        messages: list[Message] = [live.resend()]
        if live.is_cancelled:
            messages.append(pb.Cancel(request_id=live.request.request_id))
        return messages


def admit_frame(frame: bytes, live: LiveRequests, address: str, now_s: float) -> Message | None:
    """The message in a frame from the broker as the caller sees it (see
    LiveRequests.admit), or None: dropped at the door, or nothing new."""
    try:
        _, message = unpack(frame, CLIENT_ACCEPTS)
    except WireError as exc:
        log.warning("dropping a frame from %s: %s", address, exc.message)
        return None
    return live.admit(message, now_s)


class LinkWatch:
    """Whether a client socket's connection to the broker is lost, from its monitor's events."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.has_handshake = False

    def is_lost(self, event: int) -> bool:
        """Whether `event` ends a connection that reached the broker. One that ends
        before its handshake reached none (a broker dying as we connected): ZeroMQ
        retries it, and what waits on the socket goes out once it is up."""
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.has_handshake = True
            log.debug("connected to the broker at %s", self.address)
        elif event == zmq.EVENT_DISCONNECTED and not self.has_handshake:
            log.debug("a connection to %s ended before its handshake; retrying", self.address)
        return event == zmq.EVENT_DISCONNECTED and self.has_handshake


def resend_frames(live: LiveRequests, address: str) -> list[bytes]:
    """The frames to send on a new connection after the one to `address` was lost."""
    messages = live.resends()
    request_ids = sorted({request_id_of(message) for message in messages})
    log.warning(
        "lost the broker at %s; resending %d live requests on a new connection: %s",
        address,
        len(request_ids),
        " ".join(request_ids) or "none",
    )
    return [pack(message) for message in messages]
