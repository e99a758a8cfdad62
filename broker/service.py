"""The broker process: sockets and the loop (mechanism only).

    poll → route each client / worker / scheduler message → purge dead workers
         → schedule pending requests → send heartbeats

Decisions live elsewhere: admission in `broker.admission`, queue order in
`broker.queues`, placement in `scheduler_svc.policies` (via the scheduler
process or, when it is down, locally through `SchedulerLink`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

import zmq

from broker.admission import validate_generate
from broker.config import BrokerConfig
from broker.queues import TieredQueue
from broker.registry import WorkerRecord, WorkerRegistry
from broker.requests import RequestState
from broker.scheduler_link import SchedulerLink
from llmos.logs import setup_logging
from llmos.wire import WireError, error_frame, pack, pb, unpack
from llmos.signals import stop_on_signals
from llmos.wire.sockets import bind_router, router_frames, send_reply

log = logging.getLogger("broker")

CLIENT_MESSAGES = frozenset({"generate", "cancel", "status_request"})
WORKER_MESSAGES = frozenset({"worker_register", "heartbeat", "disconnect", "progress"})
MAX_MESSAGES_PER_POLL = 1000      # per socket, so one busy socket cannot starve the others
MAX_PENDING_PER_TIER_ASKED = 2048  # bounds one ScheduleRequest
QUEUE_FULL_RETRY_MS = 1000


class Broker:
    def __init__(self, config: BrokerConfig, context: zmq.Context) -> None:
        self.config = config
        self.clients = bind_router(context, config.client_bind)
        self.workers_socket = bind_router(context, config.worker_bind)
        self.scheduler = SchedulerLink(context, config.scheduler_address, config.scheduler_timeout_ms,
                                       config.scheduler_retry_ms, config.fallback_policy)
        self.queue = TieredQueue(config.tier_names, config.max_queue_depth)
        self.heartbeat_interval_s = config.heartbeat_interval_ms / 1000
        self.workers = WorkerRegistry(self.heartbeat_interval_s)
        self.requests: dict[str, RequestState] = {}
        self.request_by_client: dict[tuple[bytes, str], str] = {}
        self._ids = itertools.count(1)
        self.needs_schedule = False  # set when a request, a slot or a worker appears
        self.next_heartbeat_s = 0.0
        self.num_completed = 0
        self.num_rejected = 0
        self.poller = zmq.Poller()
        for socket in (self.clients, self.workers_socket, self.scheduler.socket):
            self.poller.register(socket, zmq.POLLIN)

    # ------------------------------------------------------------------ loop

    def run(self, stopping: threading.Event) -> None:
        log.info("broker serving clients on %s, workers on %s, tiers %s",
                 self.config.client_bind, self.config.worker_bind, ",".join(self.queue.tiers))
        while not stopping.is_set():
            events = dict(self.poller.poll(self.poll_timeout_ms()))
            if self.clients in events:
                self.drain(self.clients, self.route_client)
            if self.workers_socket in events:
                self.drain(self.workers_socket, self.route_worker)
            if self.scheduler.socket in events:
                self.drain_scheduler()
            now_s = time.monotonic()
            self.purge_expired(now_s)
            self.schedule(now_s)
            self.send_heartbeats(now_s)

    def poll_timeout_ms(self) -> int:
        now_s = time.monotonic()
        wait_s = max(0.0, self.next_heartbeat_s - now_s)
        if self.scheduler.is_waiting:
            wait_s = min(wait_s, self.scheduler.seconds_left(now_s))
        return int(wait_s * 1000) + 1

    def drain(self, socket: zmq.Socket, route) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            route(frames)

    def drain_scheduler(self) -> None:
        while self.scheduler.socket.poll(0):
            decision = self.scheduler.receive()
            if decision is not None:
                self.apply(decision)

    def close(self) -> None:
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
            if name == "generate":
                self.admit(identity, has_delimiter, message)
            elif name == "cancel":
                self.cancel(identity, has_delimiter, message.request_id)
            else:
                self.reply(identity, has_delimiter, pack(self.status()))
        except WireError as exc:
            self.num_rejected += 1
            log.info("refused %s from client %r: %s", exc.request_id or "frame", identity,
                     exc.message)
            self.reply(identity, has_delimiter, error_frame(
                exc.code, exc.message, exc.request_id,
                QUEUE_FULL_RETRY_MS if exc.code == pb.QUEUE_FULL else 0))
        except Exception:  # a bug must cost one request, not the broker
            log.exception("internal error on a message from client %r", identity)
            self.reply(identity, has_delimiter, error_frame(
                pb.INTERNAL, "the broker hit an internal error; it is logged"))

    def reply(self, identity: bytes, has_delimiter: bool, payload: bytes) -> bool:
        """Send to a client; False (and its requests cancelled) if it is gone."""
        if send_reply(self.clients, identity, has_delimiter, payload):
            return True
        log.warning("client %r is gone; cancelling its requests", identity)
        self.forget_client(identity)
        return False

    def admit(self, identity: bytes, has_delimiter: bool, generate: pb.GenerateRequest) -> None:
        generate = validate_generate(generate, self.config, self.workers.known_models)
        if (identity, generate.request_id) in self.request_by_client:
            raise WireError(pb.DUPLICATE_REQUEST, f"request '{generate.request_id}' is already "
                            "live on this connection", generate.request_id)
        if not self.queue.has_room(generate.tier):
            raise WireError(pb.QUEUE_FULL, f"tier '{generate.tier}' holds {self.queue.max_depth} "
                            "requests; retry later", generate.request_id)
        arrival_seq = next(self._ids)
        request = RequestState(
            request_id=f"r{arrival_seq}", client_identity=identity,
            client_request_id=generate.request_id, has_delimiter=has_delimiter, generate=generate,
            tier_rank=self.queue.rank(generate.tier), arrival_seq=arrival_seq,
            accepted_at_s=time.monotonic())
        position = self.queue.push(request.request_id, generate.tier)
        self.requests[request.request_id] = request
        self.request_by_client[request.client_key] = request.request_id
        self.needs_schedule = True
        log.debug("accepted %s (client id %s) tier %s", request.request_id,
                  request.client_request_id, request.tier)
        self.reply(identity, has_delimiter, pack(pb.Accepted(
            request_id=generate.request_id, tier=generate.tier, queue_position=position)))

    def cancel(self, identity: bytes, has_delimiter: bool, client_request_id: str) -> None:
        request_id = self.request_by_client.get((identity, client_request_id))
        if request_id is None:
            raise WireError(pb.UNKNOWN_REQUEST, f"no live request '{client_request_id}' on this "
                            "connection", client_request_id)
        request = self.requests[request_id]
        self.stop_request(request)
        log.info("cancelled %s tier %s on worker %s", request_id, request.tier, request.worker_id)
        self.finish(request, pb.FINISH_REASON_CANCELLED, request.worker_id or "")

    def stop_request(self, request: RequestState) -> None:
        """Take a request out of the queue, or tell its worker to stop it."""
        if self.queue.remove(request.request_id):
            return
        request.is_cancelled = True  # its worker's last delta frees the slot
        worker = self.workers.by_id(request.worker_id or "")
        if worker is not None:
            self.send_worker(worker, pack(pb.Cancel(request_id=request.request_id)))

    def forget_client(self, identity: bytes) -> None:
        for request in [r for r in self.requests.values() if r.client_identity == identity]:
            self.stop_request(request)
            self.release(request)

    def finish(self, request: RequestState, finish_reason: int, worker_id: str) -> None:
        result = request.result(finish_reason, worker_id, time.monotonic())
        worker = self.workers.by_id(worker_id)
        if not result.model and worker is not None and len(worker.models) == 1:
            result.model = next(iter(worker.models))  # "any model" became this one
        self.num_completed += 1
        self.release(request)
        self.reply(request.client_identity, request.has_delimiter, pack(result))

    def fail(self, request: RequestState, error: pb.Error) -> None:
        error.request_id = request.client_request_id
        self.release(request)
        self.reply(request.client_identity, request.has_delimiter, pack(error))

    def release(self, request: RequestState) -> None:
        """Forget the client side of a request; a running one stays until its worker lets go."""
        self.request_by_client.pop(request.client_key, None)
        if request.worker_id is None or not request.is_cancelled:
            self.requests.pop(request.request_id, None)

    def status(self) -> pb.StatusReply:
        tiers = [pb.TierStatus(tier=t, depth=self.queue.depth(t), max_depth=self.queue.max_depth)
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
        log.info("worker %s ready: models %s, device %s, %d slots", worker.worker_id,
                 ",".join(sorted(worker.models)), worker.device, worker.max_num_seqs)

    def record_delta(self, worker: WorkerRecord, delta: pb.RequestDelta, now_s: float) -> None:
        request = self.requests.get(delta.request_id)
        if request is None or request.worker_id != worker.worker_id:
            return  # stale: the request moved on after this worker was declared dead
        if request.is_cancelled:
            if delta.is_finished:
                worker.running_ids.discard(request.request_id)
                self.requests.pop(request.request_id, None)
                self.needs_schedule = True
            return
        chunk = request.record_delta(delta, now_s)
        if chunk is not None and not self.reply(request.client_identity, request.has_delimiter,
                                                pack(chunk)):
            return
        if delta.is_finished:
            worker.running_ids.discard(request.request_id)
            self.needs_schedule = True
            if delta.finish_reason == pb.FINISH_REASON_ERROR:
                log.warning("worker %s failed %s: %s", worker.worker_id, request.request_id,
                            delta.error.message)
                self.fail(request, delta.error)
            else:
                self.finish(request, delta.finish_reason, worker.worker_id)

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
        """Put a lost worker's requests back at the head of their tiers, oldest first."""
        lost = sorted((self.requests[i] for i in worker.running_ids if i in self.requests),
                      key=lambda r: r.arrival_seq, reverse=True)
        worker.running_ids.clear()
        for request in lost:
            request.worker_id = None
            if request.is_cancelled:
                self.requests.pop(request.request_id, None)
                continue
            request.num_restarts += 1
            if request.num_restarts > self.config.max_restarts:
                self.fail(request, pb.Error(code=pb.WORKER_FAILED, message=(
                    f"request lost its worker {request.num_restarts} times; giving up")))
                continue
            log.warning("re-queueing %s tier %s from worker %s after %d tokens",
                        request.request_id, request.tier, worker.worker_id,
                        len(request.generated_token_ids))
            self.queue.push_front(request.request_id, request.tier)
        self.needs_schedule = True

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
        self.needs_schedule = False  # set again by a new request, a freed slot, a new worker
        if not self.queue or not any(w.has_capacity for w in self.workers):
            return
        request = self.schedule_request()
        if self.scheduler.can_ask(now_s) and self.scheduler.ask(request, now_s):
            return
        self.apply(self.scheduler.decide_locally(request))

    def schedule_request(self) -> pb.ScheduleRequest:
        workers = [w.slots() for w in self.workers if w.has_capacity]
        pending = [self.requests[i].pending() for i in self.queue.in_order(MAX_PENDING_PER_TIER_ASKED)]
        return pb.ScheduleRequest(pending=pending, workers=workers)

    def apply(self, decision: pb.ScheduleDecision) -> None:
        """Dispatch each placement that still holds (request queued, worker alive with room)."""
        now_s = time.monotonic()
        for placement in decision.placements:
            request = self.requests.get(placement.request_id)
            worker = self.workers.by_id(placement.worker_id)
            if (request is None or placement.request_id not in self.queue or worker is None
                    or not worker.has_capacity or not worker.serves(request.generate.model)):
                continue
            self.queue.remove(request.request_id)
            request.worker_id = worker.worker_id
            request.dispatched_at_s = request.dispatched_at_s or now_s
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
