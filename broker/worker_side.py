"""The broker's worker side: registration, heartbeats, progress, re-queue on death.

A mixin of `broker.service.Broker`, which owns the state it uses:
`workers_socket` (the ROUTER), `workers` (the registry), `requests`, `queue`,
`answer_fills` (how long each tier's answers run, for the scheduler).
"""

from __future__ import annotations

import logging
import time

from broker.worker_pool import ConnectedWorker
from broker.requests import Request, RequestStatus
from llmos.wire import WireError, error_frame, pack, pb
from llmos.wire.handlers import Handlers
from llmos.wire.sockets import router_frames, send_reply

log = logging.getLogger(__name__)


class WorkerSide:
    def worker_handlers(self) -> Handlers[None]:
        return Handlers("the broker's worker socket", {
            pb.WorkerRegister: self.require_worker, pb.Disconnect: self.disconnect,
            pb.Heartbeat: self.heartbeat, pb.StepProgress: self.record_progress})

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
            self.from_workers.route(payload, identity, time.monotonic())
        except WireError as exc:
            log.warning("refused frame from worker %r: %s", identity, exc.message)

    def disconnect(self, message: pb.Disconnect, identity: bytes, now_s: float) -> None:
        worker = self.workers.delete_worker(identity)
        if worker is not None:
            log.info("worker %s left (%s)", worker.worker_id, message.reason)
            self.requeue_running(worker)

    def heartbeat(self, _: pb.Heartbeat, identity: bytes, now_s: float) -> None:
        self.known_worker(identity, now_s)

    def known_worker(self, identity: bytes, now_s: float) -> ConnectedWorker | None:
        """Note that the worker is alive; None (and it is told to register) if it is a stranger."""
        worker = self.workers.refresh(identity, now_s)
        if worker is None:
            # the zguide's answer to a stranger: tell it to register again
            self.send_identity(identity, pack(pb.Disconnect(reason="unknown worker; register again")))
        return worker

    def record_progress(self, progress: pb.StepProgress, identity: bytes, now_s: float) -> None:
        worker = self.known_worker(identity, now_s)
        if worker is not None:
            for delta in progress.deltas:
                self.record_delta(worker, delta, now_s)

    def require_worker(self, register: pb.WorkerRegister, identity: bytes, now_s: float) -> None:
        old = self.workers.delete_worker(identity)
        if old is not None:
            self.requeue_running(old)  # it restarted: whatever it ran is gone
        worker = self.workers.require_worker(identity, register, now_s)
        self.needs_schedule = True
        log.info("worker %s ready: models %s, task %s, device %s, %d slots", worker.worker_id,
                 ",".join(sorted(worker.models)), pb.TaskKind.Name(worker.task), worker.device,
                 worker.max_num_seqs)

    def record_delta(self, worker: ConnectedWorker, delta: pb.RequestDelta, now_s: float) -> None:
        request = self.requests.get(delta.request_id)
        if request is None or request.worker_id != worker.worker_id:
            return  # stale: the request moved on after this worker was declared dead
        if request.is_answered:
            if delta.is_finished:
                self.release_slot(request, worker)
            return
        chunk = request.record_delta(delta, now_s)
        if delta.token_ids:
            self.tokens.add(len(delta.token_ids), now_s)
            worker.tokens.add(len(delta.token_ids), now_s)
        if chunk is not None and not self.reply(request.client_identity, request.has_delimiter,
                                                pack(chunk)):
            return
        if not delta.is_finished:
            if request.is_on_last_token and not request.is_leaving:
                self.mark_finishing(request, worker)
            return
        if delta.finish_reason == pb.FINISH_REASON_PREEMPTED:
            request.num_preemptions += 1
            log.info("preempted %s tier %s on worker %s after %d tokens", request.request_id,
                     request.tier, worker.worker_id, len(request.generated_token_ids))
            self.release_slot(request, worker)
            self.requeue(request, now_s)
            return
        self.answer(request, self.final_answer(request, worker, delta, now_s))
        self.release_slot(request, worker)

    def final_answer(self, request: Request, worker: ConnectedWorker, delta: pb.RequestDelta,
                     now_s: float) -> bytes:
        """The client's last message for a request its worker finished."""
        if delta.finish_reason == pb.FINISH_REASON_ERROR:
            log.warning("worker %s failed %s: %s", worker.worker_id, request.request_id,
                        delta.error.message)
            delta.error.request_id = request.client_request_id
            return pack(delta.error)
        if request.kind != pb.TASK_KIND_GENERATE:
            return pack(request.pooling_result(delta, worker.worker_id, now_s))
        self.answer_fills.record(request.tier, delta.finish_reason, len(request.generated_token_ids),
                                 request.admitted.sampling.max_tokens)
        return pack(request.result(delta.finish_reason, worker.worker_id, now_s))

    def mark_finishing(self, request: Request, worker: ConnectedWorker) -> None:
        """The step in flight makes the request's last token: dispatch into its slot now.
        The next request then waits in the worker's queue and starts on the very next
        step; dispatched once the last token is reported, it would reach the worker after
        that next step began, and the slot would sit idle for a step."""
        request.move_to(RequestStatus.FINISHING)
        worker.mark_leaving(request.request_id)
        self.needs_schedule = True

    def release_slot(self, request: Request, worker: ConnectedWorker) -> None:
        """The worker no longer holds the request: free its slot, and forget the request
        if its client has its answer (a request still to answer is re-queued next)."""
        worker.release_slot(request.request_id)
        self.needs_schedule = True
        if request.status is RequestStatus.ANSWERED:
            request.move_to(RequestStatus.DONE)
            request.worker_id = None
            del self.requests[request.request_id]

    def send_identity(self, identity: bytes, payload: bytes) -> bool:
        return send_reply(self.workers_socket, identity, False, payload)

    def send_worker(self, worker: ConnectedWorker, payload: bytes) -> None:
        if not self.send_identity(worker.identity, payload):
            self.delete_worker(worker, "unreachable")

    def delete_worker(self, worker: ConnectedWorker, reason: str) -> None:
        if self.workers.delete_worker(worker.identity) is not None:
            log.warning("worker %s is dead (%s); re-queueing %d requests", worker.worker_id, reason,
                        len(worker.running_ids))
            self.requeue_running(worker)

    def requeue_running(self, worker: ConnectedWorker) -> None:
        """Put a lost worker's requests back at the head of their lanes."""
        lost = [self.requests[i] for i in list(worker.running_ids) if i in self.requests]
        for request in lost:
            if not request.is_answered:
                request.num_restarts += 1
                if request.num_restarts > self.config.max_restarts:
                    self.answer(request, error_frame(
                        pb.WORKER_FAILED, f"request lost its worker {request.num_restarts} times; "
                        "giving up", request.client_request_id))
            if request.is_answered:
                self.release_slot(request, worker)
                continue
            log.warning("re-queueing %s tier %s from worker %s after %d tokens",
                        request.request_id, request.tier, worker.worker_id,
                        len(request.generated_token_ids))
            self.release_slot(request, worker)
            self.requeue(request, time.monotonic())
        worker.running_ids.clear()
        worker.leaving_ids.clear()

    def requeue(self, request: Request, now_s: float) -> None:
        """Back to the head of its lane, keeping the tokens it made."""
        request.move_to(RequestStatus.QUEUED)
        request.worker_id = None
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
