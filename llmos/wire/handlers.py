"""One table from message type to handler, built once per socket.

Every service routes what arrives on a socket the same way, as the zguide's
Majordomo broker does with its command constants: it builds a `Handlers` table
that maps protobuf message classes to methods, and hands each payload to
`route`. A frame that is not an llmos Envelope, or a message the table does not
list, raises `WireError` from `llmos.wire.envelope.unpack` and nowhere else, with
the code the sender should get back.

    handlers = Handlers("kernel", {pb.KvAllocate: self.allocate_blocks,
                                   pb.KvFree: self.free_blocks})
    reply = handlers.route(payload, now_s)   # -> self.allocate_blocks(message, now_s)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from llmos.wire.envelope import body_name_of_type, unpack

Result = TypeVar("Result")


class Handlers(Generic[Result]):
    """Message class -> handler(message, *args); `where` names the socket in errors."""

    def __init__(self, where: str, table: Mapping[type[Message], Callable[..., Result]]) -> None:
        self.where = where
        self._by_name: dict[str, Callable[..., Result]] = {
            body_name_of_type(message_type): handler for message_type, handler in table.items()
        }
        self.accepted: frozenset[str] = frozenset(self._by_name)

    def route(self, payload: bytes, *args: Any) -> Result:
        """Unpack one frame and call its handler; WireError if it is not one of ours."""
        name, message = unpack(payload, self.accepted, self.where)
        return self._by_name[name](message, *args)
