"""One request and its reply on a ROUTER socket, as the kernel and the scheduler
serve them: split the frames, route the payload through the socket's handler
table, and send the reply, or a coded Error, back in the layout the peer spoke."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import zmq
from google.protobuf.message import Message

from llmos.wire import llmos_pb2 as pb
from llmos.wire.envelope import WireError, error_frame, pack
from llmos.wire.handlers import Handlers
from llmos.wire.sockets import router_frames, send_reply

RefusalLog = Callable[[bytes, WireError], None]  # (peer identity, why)
Reply = TypeVar("Reply", bound=Message | None)


def answer_request(
    router: zmq.Socket, frames: list[bytes], handlers: Handlers[Reply], log_refusal: RefusalLog, *args: Any
) -> None:
    """A handler (called as handler(message, *args)) returns the reply, None when the
    message needs none, or raises WireError; a malformed frame, an unknown message or
    a WireError is logged by `log_refusal` and answered with an Error carrying its code."""
    split = router_frames(frames)
    if split is None:
        identity, has_delimiter = frames[0], False
        error = WireError(pb.MALFORMED_FRAME, f"expected one payload frame, got {len(frames) - 1}")
    else:
        identity, payload, has_delimiter = split
        try:
            reply = handlers.route(payload, *args)
        except WireError as refused:
            error = refused
        else:
            if reply is not None:
                send_reply(router, identity, has_delimiter, pack(reply))
            return
    log_refusal(identity, error)
    send_reply(
        router,
        identity,
        has_delimiter,
        error_frame(error.code, error.message, error.request_id, error.retry_after_ms),
    )
