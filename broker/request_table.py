"""Every request the broker holds, with the indexes kept beside it (plain data, no sockets).

The table owns the tiered queue, so a request's status and the places it is
listed change together: a QUEUED request is in `queue`; a request not yet
answered counts against its tenant's quota (a tenant
with none is forgotten) and is found by its client's
(connection identity, request id), unless it is detached (restored from the
journal, no client has resent it yet); a request leaves the table when it is DONE.
Each method that changes a status says which changes it makes.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterator

from broker.admission import AdmittedRequest
from broker.queues import TieredQueue
from broker.requests import DETACHED, Request, RequestStatus
from broker.worker_pool import ConnectedWorker


class RequestTable:
    def __init__(self, queue: TieredQueue) -> None:
        self.queue = queue
        self._by_id: dict[str, Request] = {}
        self._id_by_client: dict[tuple[bytes, str], str] = {}
        self._num_live_by_tenant: Counter[str] = Counter()
        self._deadlines: list[tuple[float, str]] = []  # heap; entries of answered requests are skipped
        self._arrival_seqs = itertools.count(1)

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, request_id: str) -> Request | None:
        return self._by_id.get(request_id)

    def by_client(self, identity: bytes, client_request_id: str) -> Request | None:
        """The client's live (not yet answered) request of that id on that connection."""
        request_id = self._id_by_client.get((identity, client_request_id))
        return None if request_id is None else self._by_id[request_id]

    def of_client(self, identity: bytes) -> list[Request]:
        """Every live request of one client connection."""
        return [
            request
            for request in self._by_id.values()
            if request.client_identity == identity and not request.is_answered
        ]

    def on_worker(self, worker: ConnectedWorker) -> list[Request]:
        """The requests in the worker's slots, leaving ones and answered ones included."""
        return [self._by_id[i] for i in list(worker.running_ids) if i in self._by_id]

    def queued_in_order(self, limit_per_tier: int) -> Iterator[Request]:
        return (self._by_id[i] for i in self.queue.in_order(limit_per_tier))

    def queued_for(self, kind: int, model: str) -> list[Request]:
        """The QUEUED requests for one task's model."""
        return [
            request
            for request in self._by_id.values()
            if request.status is RequestStatus.QUEUED and request.kind == kind and request.model == model
        ]

    def num_live(self, tenant: str) -> int:
        return self._num_live_by_tenant[tenant]

    @property
    def next_deadline_s(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def add(
        self, identity: bytes, has_delimiter: bool, admitted: AdmittedRequest, now_s: float
    ) -> tuple[Request, int]:
        """A new QUEUED request, and its 0-based position in its tier."""
        request = self._new_request(identity, has_delimiter, admitted, now_s)
        position = self.queue.push(request.request_id, admitted.tier, admitted.tenant, request.arrival_seq)
        self._id_by_client[request.client_key] = request.request_id
        return request, position

    def restore(self, admitted: AdmittedRequest, now_s: float) -> Request:
        """A new QUEUED request from the journal of a broker that stopped: detached (no
        client connection), at the head of its tier's lane like a re-queued request."""
        request = self._new_request(DETACHED, False, admitted, now_s)
        self.queue.push_front(request.request_id, admitted.tier, admitted.tenant, request.arrival_seq)
        return request

    def _new_request(
        self, identity: bytes, has_delimiter: bool, admitted: AdmittedRequest, now_s: float
    ) -> Request:
        """A request listed by id, its deadline and its tenant (the caller queues it)."""
        arrival_seq = next(self._arrival_seqs)
        request = Request(
            request_id=f"r{arrival_seq}",
            client_identity=identity,
            has_delimiter=has_delimiter,
            admitted=admitted,
            tier_rank=self.queue.rank(admitted.tier),
            arrival_seq=arrival_seq,
            accepted_at_s=now_s,
            queued_since_s=now_s,
        )
        if admitted.deadline_ms:
            request.deadline_at_s = now_s + admitted.deadline_ms / 1000
            heapq.heappush(self._deadlines, (request.deadline_at_s, request.request_id))
        self._by_id[request.request_id] = request
        self._num_live_by_tenant[admitted.tenant] += 1
        return request

    def attach(self, request: Request, identity: bytes, has_delimiter: bool) -> None:
        """A live request's client is now on connection `identity` (it resent the
        request): the connection it had, if any, no longer finds it."""
        assert not request.is_answered, f"request {request.request_id} is answered"
        if not request.is_detached:
            del self._id_by_client[request.client_key]
        request.client_identity, request.has_delimiter = identity, has_delimiter
        self._id_by_client[request.client_key] = request.request_id

    def detach(self, request: Request) -> None:
        """A live request's connection closed: no connection finds it until its client
        resends it (`attach`)."""
        assert not request.is_detached, f"request {request.request_id} is already detached"
        del self._id_by_client[request.client_key]
        request.client_identity = DETACHED

    def start(self, request: Request, worker_id: str, now_s: float) -> None:
        """QUEUED -> RUNNING: the request leaves the queue for a slot on `worker_id`."""
        was_queued = self.queue.remove(request.request_id)
        assert was_queued, f"request {request.request_id} is not queued"
        request.move_to(RequestStatus.RUNNING)
        request.worker_id = worker_id
        request.dispatched_at_s = request.dispatched_at_s or now_s
        request.running_since_s = now_s
        request.tokens_at_dispatch = len(request.generated_token_ids)

    def requeue(self, request: Request, now_s: float) -> None:
        """On a worker -> QUEUED, at the head of its lane, keeping the tokens it made."""
        request.move_to(RequestStatus.QUEUED)
        request.worker_id = None
        request.queued_since_s = now_s
        self.queue.push_front(request.request_id, request.tier, request.tenant, request.arrival_seq)

    def end(self, request: Request) -> bool:
        """The client gets its final message now: a queued request is DONE, one on a
        worker is ANSWERED until the worker lets go. False if it was answered already."""
        if request.is_answered:
            return False
        if not request.is_detached:
            request_id = self._id_by_client.pop(request.client_key)
            assert request_id == request.request_id, f"{request.client_key} names {request_id}"
        self._num_live_by_tenant[request.tenant] -= 1
        if not self._num_live_by_tenant[request.tenant]:
            del self._num_live_by_tenant[request.tenant]  # a tenant with nothing live leaves no trace
        if request.is_on_worker:
            request.move_to(RequestStatus.ANSWERED)
        else:
            self.queue.remove(request.request_id)
            request.move_to(RequestStatus.DONE)
            del self._by_id[request.request_id]
        return True

    def forget(self, request: Request) -> None:
        """ANSWERED -> DONE: its worker let go of it."""
        request.move_to(RequestStatus.DONE)
        request.worker_id = None
        del self._by_id[request.request_id]

    def next_expired(self, now_s: float) -> Request | None:
        """A live request whose deadline passed by `now_s`, once each; None when none is left."""
        while self._deadlines and self._deadlines[0][0] <= now_s:
            _, request_id = heapq.heappop(self._deadlines)
            request = self._by_id.get(request_id)
            if request is not None and not request.is_answered:
                return request
        return None
