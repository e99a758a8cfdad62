"""The broker process: sockets and the loop (mechanism only).

    poll → route client / worker / scheduler messages → purge dead workers,
         expired deadlines and vanished clients → schedule → send heartbeats

Decisions live elsewhere: admission in `broker.admission` and `broker.tiers`,
queue order in `broker.queues`, placement and preemption in
`scheduler_svc.policies` (via the scheduler process or, when it is down,
locally through `SchedulerLink`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter

import zmq

from broker.admission import Admission, validate_generate, validate_pooling
from broker.client_watch import ClientWatch
from broker.config import BrokerConfig
from broker.queues import TieredQueue
from broker.registry import WorkerRecord, WorkerRegistry
from broker.requests import RequestState
from broker.scheduler_link import SchedulerLink
from broker.tiers import parse_tenant_quotas, parse_tier_limits
from llmos.logs import setup_logging
from llmos.signals import stop_on_signals
from llmos.wire import WireError, error_frame, pack, pb, unpack
from llmos.wire.sockets import bind_router, router_frames, send_reply

log = logging.getLogger("broker")

CLIENT_MESSAGES = frozenset({"generate", "embed", "classify", "cancel", "status_request"})
WORKER_MESSAGES = frozenset({"worker_register", "heartbeat", "disconnect", "progress"})
TASK_BY_MESSAGE = {"generate": pb.TASK_KIND_GENERATE, "embed": pb.TASK_KIND_EMBED,
                   "classify": pb.TASK_KIND_CLASSIFY}
MAX_MESSAGES_PER_POLL = 1000       # per socket, so one busy socket cannot starve the others
MAX_PENDING_PER_TIER_ASKED = 2048  # bounds one ScheduleRequest
QUEUE_FULL_RETRY_MS = 1000
PREEMPTION_CHECK_INTERVAL_S = 0.05  # while every slot is busy, ask about preemption this often


class Broker:
    def __init__(self, config: BrokerConfig, context: zmq.Context) -> None:
        self.config = config
        self.tier_limits = parse_tier_limits(config)
        self.tenant_quotas = parse_tenant_quotas(config.tenant_quotas)
        self.clients = bind_router(context, config.client_bind)
        self.client_watch = ClientWatch(self.clients)
        self.workers_socket = bind_router(context, config.worker_bind)
        self.scheduler = SchedulerLink(context, config.scheduler_address, config.scheduler_timeout_ms,
                                       config.scheduler_retry_ms, config.fallback_policy)
        self.queue = TieredQueue(config.tier_names, {tier: limits.max_queue_depth
                                                     for tier, limits in self.tier_limits.items()})
        self.heartbeat_interval_s = config.heartbeat_interval_ms / 1000
        self.workers = WorkerRegistry(self.heartbeat_interval_s)
        self.requests: dict[str, RequestState] = {}
        self.request_by_client: dict[tuple[bytes, str], str] = {}
        self.live_by_tenant: Counter[str] = Counter()
        self.deadlines: list[tuple[float, str]] = []  # heap; stale entries are skipped
        self._ids = itertools.count(1)
        self.needs_schedule = False  # set when a request, a slot or a worker appears
        self.next_preemption_check_s = 0.0
        self.next_heartbeat_s = 0.0
        self.num_completed = 0
        self.num_rejected = 0
        self.poller = zmq.Poller()
        for socket in (self.clients, self.workers_socket, self.scheduler.socket,
                       self.client_watch.monitor):
            self.poller.register(socket, zmq.POLLIN)

    # ------------------------------------------------------------------ loop

    def run(self, stopping: threading.Event) -> None:
        log.info("broker serving clients on %s, workers on %s, tiers %s",
                 self.config.client_bind, self.config.worker_bind, ",".join(self.queue.tiers))
        while not stopping.is_set():
            events = dict(self.poller.poll(self.poll_timeout_ms()))
            if self.client_watch.monitor in events:
                self.forget_disconnected_clients()
            if self.clients in events:
                self.drain_clients()
            if self.workers_socket in events:
                self.drain_workers()
            if self.scheduler.socket in events:
                self.drain_scheduler()
            now_s = time.monotonic()
            self.purge_expired(now_s)
            self.purge_deadlines(now_s)
            self.schedule(now_s)
            self.send_heartbeats(now_s)

    def poll_timeout_ms(self) -> int:
        now_s = time.monotonic()
        wake_s = [self.next_heartbeat_s]
        if self.deadlines:
            wake_s.append(self.deadlines[0][0])
        if self.needs_schedule:
            wake_s.append(self.next_preemption_check_s)
        wait_s = max(0.0, min(wake_s) - now_s)
        if self.scheduler.is_waiting:
            wait_s = min(wait_s, self.scheduler.seconds_left(now_s))
        return int(wait_s * 1000) + 1

    def drain_clients(self) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.clients.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            replaced = self.client_watch.note(frames[-1], identity)
            if replaced is not None:
                self.forget_client(replaced)
            self.route_client([frame.bytes for frame in frames])

    def drain_workers(self) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.workers_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.route_worker(frames)

    def drain_scheduler(self) -> None:
        while self.scheduler.socket.poll(0):
            decision = self.scheduler.receive()
            if decision is not None:
                self.apply(decision)

    def close(self) -> None:
        self.clients.disable_monitor()
        self.client_watch.close()
        for socket in (self.clients, self.workers_socket):
            socket.close()
        self.scheduler.close()

    # --------------------------------------------------------------- clients

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
            name, message = unpack(payload, CLIENT_MESSAGES)
            if name in TASK_BY_MESSAGE:
                self.admit(identity, has_delimiter, name, message)
            elif name == "cancel":
                self.cancel(identity, message.request_id)
            else:
                self.reply(identity, has_delimiter, pack(self.status()))
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

    def validate(self, name: str, message) -> Admission:
        kind = TASK_BY_MESSAGE[name]
        models = self.workers.models_by_task
        if kind == pb.TASK_KIND_GENERATE:
            return validate_generate(message, self.config, self.tier_limits, models)
        return validate_pooling(message, kind, self.config, self.tier_limits, models)

    def admit(self, identity: bytes, has_delimiter: bool, name: str, message) -> None:
        admission = self.validate(name, message)
        request_id, tier, tenant = admission.request_id, admission.tier, admission.tenant
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
        request = RequestState(
            request_id=f"r{arrival_seq}", client_identity=identity, has_delimiter=has_delimiter,
            admission=admission, tier_rank=self.queue.rank(tier), arrival_seq=arrival_seq,
            accepted_at_s=now_s, queued_since_s=now_s)
        if admission.deadline_ms:
            request.deadline_at_s = now_s + admission.deadline_ms / 1000
            heapq.heappush(self.deadlines, (request.deadline_at_s, request.request_id))
        position = self.queue.push(request.request_id, tier, tenant, arrival_seq)
        self.requests[request.request_id] = request
        self.request_by_client[request.client_key] = request.request_id
        self.live_by_tenant[tenant] += 1
        self.needs_schedule = True
        log.debug("accepted %s (client id %s) tier %s tenant %s", request.request_id, request_id,
                  tier, tenant)
        self.reply(identity, has_delimiter, pack(pb.Accepted(
            request_id=request_id, tier=tier, queue_position=position)))

    def cancel(self, identity: bytes, client_request_id: str) -> None:
        request_id = self.request_by_client.get((identity, client_request_id))
        if request_id is None:
            raise WireError(pb.UNKNOWN_REQUEST, f"no live request '{client_request_id}' on this "
                            "connection", client_request_id)
        request = self.requests[request_id]
        log.info("cancelled %s tier %s on worker %s", request_id, request.tier, request.worker_id)
        self.stop_request(request)
        self.answer(request, pack(request.result(pb.FINISH_REASON_CANCELLED,
                                                 request.worker_id or "", time.monotonic())))

    def stop_request(self, request: RequestState) -> None:
        """Take a request out of the queue, or tell its worker to drop it."""
        if not self.queue.remove(request.request_id):
            worker = self.workers.by_id(request.worker_id or "")
            if worker is not None:
                self.send_worker(worker, pack(pb.Cancel(request_id=request.request_id)))

    def answer(self, request: RequestState, payload: bytes | None) -> None:
        """Give the client its final message (None: the client is gone) and forget it.

        A request still on a worker stays known until the worker lets go of it.
        """
        if self.request_by_client.pop(request.client_key, None) is None:
            return  # answered already
        self.live_by_tenant[request.tenant] -= 1
        request.is_answered = True
        if request.worker_id is None:
            self.queue.remove(request.request_id)
            self.requests.pop(request.request_id, None)
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
                     "running" if request.worker_id else "queued")
            self.stop_request(request)
            if request.worker_id and request.kind == pb.TASK_KIND_GENERATE:
                payload = pack(request.result(pb.FINISH_REASON_DEADLINE, request.worker_id, now_s))
            else:
                payload = error_frame(pb.DEADLINE_EXCEEDED, f"the deadline of "
                                      f"{request.admission.deadline_ms} ms passed before the "
                                      "request could finish", request.client_request_id)
            self.answer(request, payload)

    def status(self) -> pb.StatusReply:
        tiers = [pb.TierStatus(tier=t, depth=self.queue.depth(t), max_depth=self.queue.max_depth[t])
                 for t in self.queue.tiers]
        workers = [w.status() for w in self.workers]
        policy = self.scheduler.policy_name if self.scheduler.is_online else self.scheduler.fallback.name
        return pb.StatusReply(tiers=tiers, workers=workers,
                              num_running=sum(w.num_running for w in workers),
                              scheduler_online=self.scheduler.is_online, scheduler_policy=policy,
                              num_completed=self.num_completed, num_rejected=self.num_rejected)

    # --------------------------------------------------------------- workers

    def route_worker(self, frames: list[bytes]) -> None:
        try:
            self.route_worker_frames(frames)
        except Exception:  # a bug must not take the broker down with every client
            log.exception("internal error on a message from worker %r", frames[0])

    def route_worker_frames(self, frames: list[bytes]) -> None:
        split = router_frames(frames)
        if split is None:
            log.warning("malformed frame from worker %r", frames[0])
            return
        identity, payload, _ = split
        try:
            name, message = unpack(payload, WORKER_MESSAGES)
        except WireError as exc:
            log.warning("refused frame from worker %r: %s", identity, exc.message)
            return
        now_s = time.monotonic()
        if name == "worker_register":
            self.require_worker(identity, message, now_s)
            return
        if name == "disconnect":
            worker = self.workers.delete_worker(identity)
            if worker is not None:
                log.info("worker %s left (%s)", worker.worker_id, message.reason)
                self.requeue_running(worker)
            return
        worker = self.workers.refresh(identity, now_s)
        if worker is None:
            # the zguide's answer to a stranger: tell it to register again
            self.send_identity(identity, pack(pb.Disconnect(reason="unknown worker; register again")))
            return
        if name == "progress":
            for delta in message.deltas:
                self.record_delta(worker, delta, now_s)

    def require_worker(self, identity: bytes, register: pb.WorkerRegister, now_s: float) -> None:
        old = self.workers.delete_worker(identity)
        if old is not None:
            self.requeue_running(old)  # it restarted: whatever it ran is gone
        worker = self.workers.require_worker(identity, register, now_s)
        self.needs_schedule = True
        log.info("worker %s ready: models %s, task %s, device %s, %d slots", worker.worker_id,
                 ",".join(sorted(worker.models)), pb.TaskKind.Name(worker.task), worker.device,
                 worker.max_num_seqs)

    def record_delta(self, worker: WorkerRecord, delta: pb.RequestDelta, now_s: float) -> None:
        request = self.requests.get(delta.request_id)
        if request is None or request.worker_id != worker.worker_id:
            return  # stale: the request moved on after this worker was declared dead
        if request.is_answered:
            if delta.is_finished:
                self.let_go(request, worker)
            return
        chunk = request.record_delta(delta, now_s)
        if chunk is not None and not self.reply(request.client_identity, request.has_delimiter,
                                                pack(chunk)):
            return
        if not delta.is_finished:
            return
        self.let_go(request, worker)
        if delta.finish_reason == pb.FINISH_REASON_PREEMPTED:
            request.num_preemptions += 1
            log.info("preempted %s tier %s on worker %s after %d tokens", request.request_id,
                     request.tier, worker.worker_id, len(request.generated_token_ids))
            self.requeue(request, now_s)
        elif delta.finish_reason == pb.FINISH_REASON_ERROR:
            log.warning("worker %s failed %s: %s", worker.worker_id, request.request_id,
                        delta.error.message)
            delta.error.request_id = request.client_request_id
            self.answer(request, pack(delta.error))
        elif request.kind != pb.TASK_KIND_GENERATE:
            self.answer(request, pack(request.pooling_result(delta, worker.worker_id, now_s)))
        else:
            self.answer(request, pack(request.result(delta.finish_reason, worker.worker_id, now_s)))

    def let_go(self, request: RequestState, worker: WorkerRecord) -> None:
        """The worker no longer holds the request: free its slot."""
        worker.running_ids.discard(request.request_id)
        if request.is_preempting:
            worker.num_preempting -= 1
            request.is_preempting = False
        request.worker_id = None
        self.needs_schedule = True
        if request.is_answered:
            self.requests.pop(request.request_id, None)

    def send_identity(self, identity: bytes, payload: bytes) -> bool:
        return send_reply(self.workers_socket, identity, False, payload)

    def send_worker(self, worker: WorkerRecord, payload: bytes) -> None:
        if not self.send_identity(worker.identity, payload):
            self.delete_worker(worker, "unreachable")

    def delete_worker(self, worker: WorkerRecord, reason: str) -> None:
        if self.workers.delete_worker(worker.identity) is not None:
            log.warning("worker %s is dead (%s); re-queueing %d requests", worker.worker_id, reason,
                        len(worker.running_ids))
            self.requeue_running(worker)

    def requeue_running(self, worker: WorkerRecord) -> None:
        """Put a lost worker's requests back at the head of their lanes."""
        lost = [self.requests[i] for i in list(worker.running_ids) if i in self.requests]
        for request in lost:
            self.let_go(request, worker)
            if request.is_answered:
                continue
            request.num_restarts += 1
            if request.num_restarts > self.config.max_restarts:
                self.answer(request, error_frame(
                    pb.WORKER_FAILED, f"request lost its worker {request.num_restarts} times; "
                    "giving up", request.client_request_id))
                continue
            log.warning("re-queueing %s tier %s from worker %s after %d tokens",
                        request.request_id, request.tier, worker.worker_id,
                        len(request.generated_token_ids))
            self.requeue(request, time.monotonic())
        worker.running_ids.clear()
        worker.num_preempting = 0

    def requeue(self, request: RequestState, now_s: float) -> None:
        """Back to the head of its lane, keeping the tokens it made."""
        request.queued_since_s = now_s
        self.queue.push_front(request.request_id, request.tier, request.tenant,
                              request.arrival_seq)

    def purge_expired(self, now_s: float) -> None:
        for worker in self.workers.purge_expired(now_s):
            log.warning("worker %s missed its heartbeats; re-queueing %d requests",
                        worker.worker_id, len(worker.running_ids))
            self.requeue_running(worker)

    def send_heartbeats(self, now_s: float) -> None:
        if now_s < self.next_heartbeat_s:
            return
        for worker in self.workers:
            self.send_worker(worker, pack(pb.Heartbeat(num_running=len(worker.running_ids))))
        self.next_heartbeat_s = now_s + self.heartbeat_interval_s

    # ------------------------------------------------------------ scheduling

    def schedule(self, now_s: float) -> None:
        if self.scheduler.is_timed_out(now_s):
            self.scheduler.mark_offline(now_s, f"no decision within {self.config.scheduler_timeout_ms} ms")
            self.needs_schedule = True
        if not self.needs_schedule or self.scheduler.is_waiting:
            return
        if not self.queue or not len(self.workers):
            self.needs_schedule = False  # set again by a new request, a freed slot, a new worker
            return
        if not any(w.has_capacity for w in self.workers):
            # every slot is busy: only a preemption can help; ask now and then, not per message
            if now_s < self.next_preemption_check_s:
                return
            self.next_preemption_check_s = now_s + PREEMPTION_CHECK_INTERVAL_S
        self.needs_schedule = False
        request = self.schedule_request(now_s)
        if self.scheduler.can_ask(now_s) and self.scheduler.ask(request, now_s):
            return
        self.apply(self.scheduler.decide_locally(request))

    def schedule_request(self, now_s: float) -> pb.ScheduleRequest:
        workers = [w.slots() for w in self.workers]
        pending = [self.requests[i].pending(now_s)
                   for i in self.queue.in_order(MAX_PENDING_PER_TIER_ASKED)]
        running = [self.requests[i].running(now_s) for w in self.workers for i in w.running_ids
                   if not self.requests[i].is_answered and not self.requests[i].is_preempting]
        return pb.ScheduleRequest(pending=pending, workers=workers, running=running)

    def apply(self, decision: pb.ScheduleDecision) -> None:
        """Act on each preemption and placement that still holds."""
        for preemption in decision.preemptions:
            request = self.requests.get(preemption.request_id)
            if (request is None or request.is_answered or request.is_preempting
                    or request.worker_id != preemption.worker_id):
                continue
            worker = self.workers.by_id(preemption.worker_id)
            if worker is not None:
                log.info("preempting %s tier %s on worker %s: %s", request.request_id,
                         request.tier, worker.worker_id, preemption.reason)
                request.is_preempting = True
                worker.num_preempting += 1
                self.send_worker(worker, pack(pb.Preempt(request_id=request.request_id)))
        now_s = time.monotonic()
        for placement in decision.placements:
            request = self.requests.get(placement.request_id)
            worker = self.workers.by_id(placement.worker_id)
            if (request is None or placement.request_id not in self.queue or worker is None
                    or not worker.has_capacity or not worker.serves(request.model)):
                continue
            self.queue.remove(request.request_id)
            request.worker_id = worker.worker_id
            request.dispatched_at_s = request.dispatched_at_s or now_s
            request.running_since_s = now_s
            worker.running_ids.add(request.request_id)
            log.debug("dispatch %s tier %s to worker %s", request.request_id, request.tier,
                      worker.worker_id)
            self.send_worker(worker, pack(request.dispatch()))


def run(config: BrokerConfig) -> None:
    setup_logging("broker")
    context = zmq.Context()
    broker = Broker(config, context)
    try:
        broker.run(stop_on_signals())
    finally:
        broker.close()
        context.term()
        log.info("broker stopped")
