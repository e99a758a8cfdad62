"""The broker's worker front end: what arrives on the workers' ROUTER.

Registration, heartbeats and goodbyes keep the worker pool current; a worker's
progress is relayed to the clients (tokens as chunks, the end as the final
answer). A worker reports only on requests dispatched to it: a delta about any
other request is stale (the request moved on after this worker was declared
dead) and is dropped.
"""

from __future__ import annotations

import logging
import time

import zmq

from broker.answers import AnswerFills
from broker.client_replies import ClientReplies
from broker.dispatcher import Dispatcher
from broker.rates import RateMeter
from broker.request_journal import RequestJournal
from broker.request_table import RequestTable
from broker.requests import Request, RequestStatus
from broker.worker_pool import ConnectedWorker, WorkerPool
from llmos.wire import WireError, pack, pb
from llmos.wire.handlers import Handlers
from llmos.wire.sockets import router_frames, send_reply

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_POLL = 1000  # so a busy worker socket cannot starve the others


class WorkerFrontEnd:
    def __init__(
        self,
        socket: zmq.Socket,
        workers: WorkerPool,
        requests: RequestTable,
        dispatcher: Dispatcher,
        replies: ClientReplies,
        journal: RequestJournal,
        answer_fills: AnswerFills,
        tokens: RateMeter,
        heartbeat_interval_s: float,
    ) -> None:
        self.socket = socket
        self.workers = workers
        self.requests = requests
        self.dispatcher = dispatcher
        self.replies = replies
        self.journal = journal  # written: each relayed chunk
        self.answer_fills = answer_fills  # written: each generated answer's length
        self.tokens = tokens  # written: tokens made, for the status rate
        self.heartbeat_interval_s = heartbeat_interval_s
        self.next_heartbeat_s = 0.0
        self.handlers: Handlers[None] = Handlers(
            "the broker's worker socket",
            {
                pb.WorkerRegister: self.require_worker,
                pb.Disconnect: self.disconnect,
                pb.Heartbeat: self.heartbeat,
                pb.StepProgress: self.record_progress,
            },
        )

    def drain(self) -> None:
        """Route the waiting messages; what they relay to clients is journalled in one
        commit and sent after it."""
        self.replies.hold()
        try:
            self.route_waiting()
        finally:
            self.replies.release()

    def route_waiting(self) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.route(frames)
            except Exception:  # a bug must not take the broker down with every client
                log.exception("internal error on a message from worker %r", frames[0])

    def route(self, frames: list[bytes]) -> None:
        split = router_frames(frames)
        if split is None:
            log.warning("malformed frame from worker %r", frames[0])
            return
        identity, payload, _ = split
        try:
            self.handlers.route(payload, identity, time.monotonic())
        except WireError as exc:
            log.warning("refused frame from worker %r: %s", identity, exc.message)

    # --- the pool

    def require_worker(self, register: pb.WorkerRegister, identity: bytes, now_s: float) -> None:
        old = self.workers.delete_worker(identity)
        if old is not None:
            self.dispatcher.requeue_running(old)  # it restarted: whatever it ran is gone
        worker = self.workers.require_worker(identity, register, now_s)
        self.dispatcher.wake()
        log.info(
            "worker %s ready: models %s, task %s, device %s, %d slots",
            worker.worker_id,
            ",".join(sorted(worker.models)),
            pb.TaskKind.Name(worker.task),
            worker.device,
            worker.max_num_seqs,
        )

    def disconnect(self, message: pb.Disconnect, identity: bytes, now_s: float) -> None:
        worker = self.workers.delete_worker(identity)
        if worker is not None:
            log.info("worker %s left (%s)", worker.worker_id, message.reason)
            self.dispatcher.requeue_running(worker)

    def heartbeat(self, _: pb.Heartbeat, identity: bytes, now_s: float) -> None:
        self.known_worker(identity, now_s)

    def known_worker(self, identity: bytes, now_s: float) -> ConnectedWorker | None:
        """Note that the worker is alive; None (and it is told to register) if it is a stranger."""
        worker = self.workers.refresh(identity, now_s)
        if worker is None:
            # the zguide's answer to a stranger: tell it to register again
            send_reply(
                self.socket, identity, False, pack(pb.Disconnect(reason="unknown worker; register again"))
            )
        return worker

    def purge_expired(self, now_s: float) -> None:
        for worker in self.workers.purge_expired(now_s):
            log.warning(
                "worker %s missed its heartbeats; re-queueing %d requests",
                worker.worker_id,
                len(worker.running_ids),
            )
            self.dispatcher.requeue_running(worker)

    def send_heartbeats(self, now_s: float) -> None:
        if now_s < self.next_heartbeat_s:
            return
        for worker in self.workers:
            self.dispatcher.send_worker(worker, pack(pb.Heartbeat(num_running=len(worker.running_ids))))
        self.next_heartbeat_s = now_s + self.heartbeat_interval_s

    # --- progress

    def record_progress(self, progress: pb.StepProgress, identity: bytes, now_s: float) -> None:
        worker = self.known_worker(identity, now_s)
        if worker is not None:
            for delta in progress.deltas:
                self.record_delta(worker, delta, now_s)

    def record_delta(self, worker: ConnectedWorker, delta: pb.RequestDelta, now_s: float) -> None:
        request = self.requests.get(delta.request_id)
        if request is None or request.worker_id != worker.worker_id:
            return  # stale: the request moved on after this worker was declared dead
        if request.is_answered:
            if delta.is_finished:
                self.dispatcher.release_slot(request, worker)
            return
        chunk = request.record_delta(delta, now_s)
        if delta.token_ids:
            self.tokens.add(len(delta.token_ids), now_s)
            worker.tokens.add(len(delta.token_ids), now_s)
        if chunk is not None:
            self.journal.record_chunk(request, chunk)
            self.replies.reply(request.client_identity, request.has_delimiter, pack(chunk))
        if not delta.is_finished:
            if request.is_on_last_token and request.status is RequestStatus.RUNNING:
                self.dispatcher.mark_finishing(request, worker)
            return
        if delta.finish_reason == pb.FINISH_REASON_PREEMPTED:
            request.num_preemptions += 1
            log.info(
                "preempted %s tier %s on worker %s after %d tokens",
                request.request_id,
                request.tier,
                worker.worker_id,
                len(request.generated_token_ids),
            )
            self.dispatcher.take_back(request, worker, now_s)
            return
        self.replies.answer(request, self.final_answer(request, worker, delta, now_s))
        self.dispatcher.release_slot(request, worker)

    def final_answer(
        self, request: Request, worker: ConnectedWorker, delta: pb.RequestDelta, now_s: float
    ) -> bytes:
        """The client's last message for a request its worker finished."""
        if delta.finish_reason == pb.FINISH_REASON_ERROR:
            log.warning("worker %s failed %s: %s", worker.worker_id, request.request_id, delta.error.message)
            delta.error.request_id = request.client_request_id
            return pack(delta.error)
        if request.kind != pb.TASK_KIND_GENERATE:
            return pack(request.pooling_result(delta, worker.worker_id, now_s))
        self.answer_fills.record(
            request.tier,
            delta.finish_reason,
            len(request.generated_token_ids),
            request.admitted.sampling.max_tokens,
        )
        return pack(request.result(delta.finish_reason, worker.worker_id, now_s))
