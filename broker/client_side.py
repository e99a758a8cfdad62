"""The broker's client side: admission, cancel, final answers, deadlines, status.

A mixin of `broker.service.Broker`, which owns the state it uses: `clients`
(the ROUTER), `queue`, `requests`, `request_by_client`, `live_by_tenant`,
`deadlines`, `workers`, `scheduler` and the counters.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter

from broker.admission import AdmittedRequest, validate_generate, validate_pooling
from broker.requests import Request, RequestStatus
from llmos.wire import WireError, error_frame, pack, pb
from llmos.wire.handlers import Handlers
from llmos.wire.sockets import router_frames, send_reply

log = logging.getLogger(__name__)

QUEUE_FULL_RETRY_MS = 1000


class ClientSide:
    def client_handlers(self) -> Handlers[None]:
        return Handlers("the broker's client socket", {
            pb.GenerateRequest: self.admit, pb.EmbedRequest: self.admit,
            pb.ClassifyRequest: self.admit, pb.Cancel: self.cancel,
            pb.StatusRequest: self.send_status})

    def route_client(self, frames: list[bytes]) -> None:
        split = router_frames(frames)
        if split is None:
            self.num_rejected += 1
            self.reply(frames[0], False, error_frame(
                pb.MALFORMED_FRAME, "expected one frame holding an Envelope (DEALER) "
                "or an empty delimiter then the Envelope (REQ)"))
            return
        identity, payload, has_delimiter = split
        try:
            self.from_clients.route(payload, identity, has_delimiter)
        except WireError as exc:
            self.num_rejected += 1
            log.info("refused %s from client %r: %s", exc.request_id or "frame", identity,
                     exc.message)
            self.reply(identity, has_delimiter, error_frame(
                exc.code, exc.message, exc.request_id, exc.retry_after_ms))
        except Exception:  # a bug must cost one request, not the broker
            log.exception("internal error on a message from client %r", identity)
            self.reply(identity, has_delimiter, error_frame(
                pb.INTERNAL, "the broker hit an internal error; it is logged"))

    def reply(self, identity: bytes, has_delimiter: bool, payload: bytes) -> bool:
        """Send to a client; False (and its requests cancelled) if it is gone."""
        if send_reply(self.clients, identity, has_delimiter, payload):
            return True
        self.forget_client(identity)
        return False

    def validate(self, message: pb.GenerateRequest | pb.EmbedRequest | pb.ClassifyRequest
                 ) -> AdmittedRequest:
        models = self.workers.models_by_task
        if isinstance(message, pb.GenerateRequest):
            return validate_generate(message, self.config, self.tier_limits, models)
        kind = pb.TASK_KIND_EMBED if isinstance(message, pb.EmbedRequest) else pb.TASK_KIND_CLASSIFY
        return validate_pooling(message, kind, self.config, self.tier_limits, models)

    def admit(self, message: pb.GenerateRequest | pb.EmbedRequest | pb.ClassifyRequest,
              identity: bytes, has_delimiter: bool) -> None:
        admitted = self.validate(message)
        request_id, tier, tenant = admitted.request_id, admitted.tier, admitted.tenant
        if (identity, request_id) in self.request_by_client:
            raise WireError(pb.DUPLICATE_REQUEST, f"request '{request_id}' is already live on "
                            "this connection", request_id)
        if not self.queue.has_room(tier):
            raise WireError(pb.QUEUE_FULL, f"tier '{tier}' holds {self.queue.max_depth[tier]} "
                            "requests; retry later", request_id, QUEUE_FULL_RETRY_MS)
        quota = self.tenant_quotas.get(tenant, self.config.tenant_max_requests)
        if quota and self.live_by_tenant[tenant] >= quota:
            raise WireError(pb.QUOTA_EXCEEDED, f"tenant '{tenant}' has {quota} live requests, its "
                            "quota; retry when one finishes", request_id, QUEUE_FULL_RETRY_MS)
        arrival_seq = next(self._ids)
        now_s = time.monotonic()
        request = Request(
            request_id=f"r{arrival_seq}", client_identity=identity, has_delimiter=has_delimiter,
            admitted=admitted, tier_rank=self.queue.rank(tier), arrival_seq=arrival_seq,
            accepted_at_s=now_s, queued_since_s=now_s)
        if admitted.deadline_ms:
            request.deadline_at_s = now_s + admitted.deadline_ms / 1000
            heapq.heappush(self.deadlines, (request.deadline_at_s, request.request_id))
        position = self.queue.push(request.request_id, tier, tenant, arrival_seq)
        self.requests[request.request_id] = request
        self.request_by_client[request.client_key] = request.request_id
        self.live_by_tenant[tenant] += 1
        self.needs_schedule = True
        if request.tier_rank == 0:
            self.hurry_preemption_check()
        log.debug("accepted %s (client id %s) tier %s tenant %s", request.request_id, request_id,
                  tier, tenant)
        self.reply(identity, has_delimiter, pack(pb.Accepted(
            request_id=request_id, tier=tier, queue_position=position)))

    def cancel(self, message: pb.Cancel, identity: bytes, has_delimiter: bool) -> None:
        client_request_id = message.request_id
        request_id = self.request_by_client.get((identity, client_request_id))
        if request_id is None:
            raise WireError(pb.UNKNOWN_REQUEST, f"no live request '{client_request_id}' on this "
                            "connection", client_request_id)
        request = self.requests[request_id]
        log.info("cancelled %s tier %s on worker %s", request_id, request.tier, request.worker_id)
        self.stop_request(request)
        self.answer(request, pack(request.result(pb.FINISH_REASON_CANCELLED,
                                                 request.worker_id or "", time.monotonic())))

    def stop_request(self, request: Request) -> None:
        """Take a request out of the queue, or tell its worker to drop it."""
        if not self.queue.remove(request.request_id):
            worker = self.workers.by_id(request.worker_id or "")
            if worker is not None:
                self.send_worker(worker, pack(pb.Cancel(request_id=request.request_id)))

    def answer(self, request: Request, payload: bytes | None) -> None:
        """Give the client its final message (None: the client is gone) and forget it.

        A request still on a worker stays known (ANSWERED) until the worker lets go of it.
        """
        if self.request_by_client.pop(request.client_key, None) is None:
            return  # answered already
        self.live_by_tenant[request.tenant] -= 1
        if request.is_on_worker:
            request.move_to(RequestStatus.ANSWERED)
        else:
            self.queue.remove(request.request_id)
            request.move_to(RequestStatus.DONE)
            del self.requests[request.request_id]
        if payload is not None:
            self.num_completed += 1
            self.reply(request.client_identity, request.has_delimiter, payload)

    def forget_client(self, identity: bytes) -> None:
        gone = [r for r in self.requests.values()
                if r.client_identity == identity and not r.is_answered]
        if gone:
            log.info("client %r is gone; stopping its %d requests", identity, len(gone))
        for request in gone:
            self.stop_request(request)
            self.answer(request, None)

    def forget_disconnected_clients(self) -> None:
        for identity in self.client_watch.disconnected():
            self.forget_client(identity)

    def purge_deadlines(self, now_s: float) -> None:
        while self.deadlines and self.deadlines[0][0] <= now_s:
            _, request_id = heapq.heappop(self.deadlines)
            request = self.requests.get(request_id)
            if request is None or request.is_answered:
                continue
            log.info("deadline passed for %s tier %s (%s)", request_id, request.tier,
                     "running" if request.is_on_worker else "queued")
            self.stop_request(request)
            if request.is_on_worker and request.kind == pb.TASK_KIND_GENERATE:
                payload = pack(request.result(pb.FINISH_REASON_DEADLINE, request.worker_id or "",
                                              now_s))
            else:
                payload = error_frame(pb.DEADLINE_EXCEEDED, f"the deadline of "
                                      f"{request.admitted.deadline_ms} ms passed before the "
                                      "request could finish", request.client_request_id)
            self.answer(request, payload)

    def send_status(self, _: pb.StatusRequest, identity: bytes, has_delimiter: bool) -> None:
        self.reply(identity, has_delimiter, pack(self.status()))

    def status(self) -> pb.StatusReply:
        now_s = time.monotonic()
        running_by_tier = Counter(self.requests[i].tier for w in self.workers for i in w.running_ids)
        tiers = []
        for tier in self.queue.tiers:
            fill = self.answer_fills.fill(tier)
            tiers.append(pb.TierStatus(tier=tier, depth=self.queue.depth(tier),
                                       max_depth=self.queue.max_depth[tier],
                                       num_running=running_by_tier[tier],
                                       num_answers=fill.num_answers, answer_fill=fill.mean_fill))
        workers = [w.status(now_s) for w in self.workers]
        policy = self.scheduler.policy_name if self.scheduler.is_online else self.scheduler.fallback.name
        return pb.StatusReply(tiers=tiers, workers=workers,
                              num_running=sum(w.num_running for w in workers),
                              scheduler_online=self.scheduler.is_online, scheduler_policy=policy,
                              num_completed=self.num_completed, num_rejected=self.num_rejected,
                              tokens_per_s=self.tokens.per_s(now_s))
