"""What the broker sends its clients: replies, relayed chunks and final answers.

A client that a reply cannot reach (it vanished, or stopped reading and filled
its queue) is only noted here; the client front end forgets it, stopping its
requests, in the loop's purge step. Stopping a request may send to a worker and
so lose that worker, which answers other clients: noting instead of forgetting
at once keeps that chain out of the middle of a send.
"""

from __future__ import annotations

import zmq

from broker.request_table import RequestTable
from broker.requests import Request
from llmos.wire.sockets import send_reply


class ClientReplies:
    def __init__(self, socket: zmq.Socket, requests: RequestTable) -> None:
        self.socket = socket
        self.requests = requests
        self.num_completed = 0
        self._unreachable: dict[bytes, None] = {}  # identities in the order they failed

    def reply(self, identity: bytes, has_delimiter: bool, payload: bytes) -> bool:
        """Send to a client; False (and the client noted as unreachable) if it is gone."""
        if send_reply(self.socket, identity, has_delimiter, payload):
            return True
        self._unreachable[identity] = None
        return False

    def answer(self, request: Request, payload: bytes | None) -> None:
        """Give the client its final message (None: the client is gone) and end the
        request; nothing if it has its answer already."""
        if not self.requests.end(request):
            return
        if payload is not None:
            self.num_completed += 1
            self.reply(request.client_identity, request.has_delimiter, payload)

    def take_unreachable(self) -> list[bytes]:
        """Clients a reply could not reach since the last call."""
        identities = list(self._unreachable)
        self._unreachable.clear()
        return identities
