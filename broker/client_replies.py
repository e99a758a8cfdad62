"""What the broker sends its clients: replies, relayed chunks and final answers.

Nothing goes to a client before the journal holds it: every send commits the
journal's open writes first, and while a front end drains a batch of messages
the sends are held and go out after that batch's one commit. An `Accepted` whose
request that commit failed to journal goes out as UNAVAILABLE instead, and the
request ends there: a client never holds an acceptance the journal lacks.

A client that a reply cannot reach (it vanished, or stopped reading and filled
its queue) is only noted here; the client front end forgets it, stopping its
requests, in the loop's purge step. Stopping a request may send to a worker and
so lose that worker, which answers other clients: noting instead of forgetting
at once keeps that chain out of the middle of a send.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import zmq

from broker.audit_trail import AuditTrail
from broker.request_journal import RequestJournal
from broker.request_table import RequestTable
from broker.requests import DETACHED, Request
from llmos.wire import error_frame, pb
from llmos.wire.sockets import send_reply

UNJOURNALLED_RETRY_MS = 1000


class ClientReplies:
    def __init__(
        self, socket: zmq.Socket, requests: RequestTable, journal: RequestJournal, audit: AuditTrail
    ) -> None:
        self.socket = socket
        self.audit = audit  # written: each request's end
        self.requests = requests
        self.journal = journal
        self.num_completed = 0
        self._unreachable: dict[bytes, None] = {}  # identities in the order they failed
        # sends waiting for a commit; an Accepted names its request
        self._held: list[tuple[bytes, bool, bytes, Request | None]] | None = None
        self._unjournalled: set[str] = set()  # of the held batch, as its early commit found

    def reply(self, identity: bytes, has_delimiter: bool, payload: bytes) -> bool:
        """Send to a client; False (and the client noted as unreachable) if it is gone.
        A detached request has no client to send to; held sends count as sent."""
        if identity == DETACHED:
            return True
        if self._held is not None:
            self._held.append((identity, has_delimiter, payload, None))
            return True
        self.commit()
        return self._send(identity, has_delimiter, payload)

    def accept(self, request: Request, payload: bytes) -> None:
        """Send a request's `Accepted` once the batch that journalled it is committed."""
        assert self._held is not None, "an acceptance waits for its batch's commit"
        self._held.append((request.client_identity, request.has_delimiter, payload, request))

    def _send(self, identity: bytes, has_delimiter: bool, payload: bytes) -> bool:
        if send_reply(self.socket, identity, has_delimiter, payload):
            return True
        self._unreachable[identity] = None
        return False

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the sends of a batch of messages; then commit the journal once and send
        what was held, in order."""
        assert self._held is None, "sends are held already"
        self._held = []
        try:
            yield
        finally:
            self._release()

    def commit_batch(self) -> None:
        """Commit what the held batch journalled before its sends go (they go after its
        end, as ever): what the commit ends is not dispatched meanwhile."""
        assert self._held is not None, "no sends are held"
        self._unjournalled |= self.commit()

    def _release(self) -> None:
        assert self._held is not None, "no sends are held"
        held, self._held = self._held, None
        unjournalled = self.commit() | self._unjournalled
        self._unjournalled = set()
        for identity, has_delimiter, payload, accepted in held:
            if accepted is not None and accepted.request_id in unjournalled:
                payload = error_frame(
                    pb.UNAVAILABLE,
                    "the broker could not journal the request, so it does not accept it; retry later",
                    accepted.client_request_id,
                    UNJOURNALLED_RETRY_MS,
                )
            self._send(identity, has_delimiter, payload)

    def commit(self) -> set[str]:
        """Commit the journal; the ids of the accepted requests it could not journal,
        each ended here (queued, so no worker holds it)."""
        unjournalled = self.journal.commit()
        for request in unjournalled:
            self.audit.cancel(request, "the journal could not be written")
            self.requests.end(request)
        self.audit.flush()  # the audit log, too, holds what a reply answers before it goes
        return {request.request_id for request in unjournalled}

    def answer(self, request: Request, payload: bytes | None) -> None:
        """Give the client its final message (None: the client is gone) and end the
        request; nothing if it has its answer already."""
        if not self.requests.end(request):
            return
        self.journal.record_answer(request, payload)
        self.audit.completion(request, is_delivered=payload is not None)
        if payload is not None:
            self.num_completed += 1
            self.reply(request.client_identity, request.has_delimiter, payload)

    def take_unreachable(self) -> list[bytes]:
        """Clients a reply could not reach since the last call."""
        identities = list(self._unreachable)
        self._unreachable.clear()
        return identities
