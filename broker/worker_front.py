"""The broker's worker front end: what arrives on the workers' ROUTER.

Registration, heartbeats and goodbyes keep the worker pool current; a worker's
progress is relayed to the clients (tokens as chunks, the end as the final
answer). Every worker is a stranger until its registration passes
`broker.worker_checks`. A worker reports only on requests dispatched to it, from
the connection it registered on: a delta about any other request is stale (the
request moved on after this worker was declared dead) or forged, and is counted
and dropped. Nothing a worker sends is let out of `drain` as an exception.
"""

from __future__ import annotations

import logging
import time

import zmq

from broker.answers import AnswerFills
from broker.client_replies import ClientReplies
from broker.dispatcher import Dispatcher
from broker.metrics import BrokerMetrics
from broker.rates import RateMeter
from broker.request_journal import RequestJournal
from broker.request_table import RequestTable
from broker.requests import Request, RequestStatus
from broker.tenant_tokens import TenantTokens
from broker.worker_checks import check_register
from broker.worker_pool import ConnectedWorker, WorkerPool
from llmos.security.service_keys import ServiceKeys
from llmos.wire import WireError, error_frame, pack, pb
from llmos.wire.handlers import Handlers
from llmos.wire.liveness import is_heartbeat_due
from llmos.wire.peer_errors import PeerErrors
from llmos.wire.sockets import router_frames, send_reply

log = logging.getLogger(__name__)

WORKER_ROLE = "worker"
MAX_MESSAGES_PER_POLL = 1000  # so a busy worker socket cannot starve the others
# far above any vocabulary's longest token, so only a lying worker reaches it
MAX_TEXT_CHARS_PER_TOKEN = 256
# the heartbeat round runs at the shortest worker interval, but not more often than
# this: one registration asking for 1 ms must not make the broker scan its pool 1,000 times a second
MIN_HEARTBEAT_CHECK_S = 0.05
# Strangers remembered as told to register (a bound: an attacker may use any number of identities).
MAX_TOLD_TO_REGISTER = 4096


def heartbeat_check_s(interval_s: float) -> float:
    """How soon the heartbeat round runs again for a worker of this interval."""
    return max(interval_s, MIN_HEARTBEAT_CHECK_S)


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
        peer_errors: PeerErrors,
        keys: ServiceKeys,
        tenant_tokens: TenantTokens,
        metrics: BrokerMetrics,
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
        self.peer_errors = peer_errors
        self.keys = keys  # read: whether a message's key is still a worker's
        self.tenant_tokens = tenant_tokens  # written: tokens made per tenant, for their limits
        self.next_heartbeat_s = 0.0
        self.metrics = metrics  # written: tokens, preemptions, finished requests
        # A stranger is told to register once per heartbeat interval, not once per
        # message: a worker whose heartbeats and progress reach a restarted broker
        # before its registration then registers once, and its new requests stay put.
        self.told_to_register_s: dict[bytes, float] = {}
        self.handlers: Handlers[None] = Handlers(
            "the broker's worker socket",
            {
                pb.WorkerRegister: self.require_worker,
                pb.Disconnect: self.disconnect,
                pb.Heartbeat: self.heartbeat,
                pb.StepProgress: self.record_progress,
                pb.Drain: self.mark_draining,
            },
        )

    def drain(self) -> None:
        """Route the waiting messages; what they relay to clients is journalled in one
        commit and sent after it."""
        with self.replies.batch():
            self.route_waiting()

    def route_waiting(self) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            try:
                if self.keys.is_secure and self.keys.role_of(frames[-1]) != WORKER_ROLE:
                    self.refuse_key(identity, time.monotonic())
                else:
                    self.route([frame.bytes for frame in frames])
            except Exception:  # a bug must not take the broker down with every client
                self.peer_errors.internal(identity)

    def refuse_key(self, identity: bytes, now_s: float) -> None:
        """The worker's key was revoked since its handshake: it is a worker no more."""
        worker = self.workers.delete_worker(identity, now_s)
        if worker is not None:
            log.warning("worker %s: its key was revoked; re-queueing its requests", worker.worker_id)
            self.dispatcher.requeue_running(worker)
        self.refuse(identity, WireError(pb.PERMISSION_DENIED, "this key may not serve as a worker"))

    def route(self, frames: list[bytes]) -> None:
        split = router_frames(frames)
        if split is None:
            self.refuse(
                frames[0], WireError(pb.MALFORMED_FRAME, f"expected one payload frame, got {len(frames) - 1}")
            )
            return
        identity, payload, _ = split
        try:
            self.handlers.route(payload, identity, time.monotonic())
        except WireError as exc:
            self.refuse(identity, exc)

    def refuse(self, identity: bytes, error: WireError) -> None:
        """Count and log a refused message and tell its sender why, with the error's code."""
        self.peer_errors.refused(pb.ErrorCode.Name(error.code), identity, error.message)
        send_reply(self.socket, identity, False, error_frame(error.code, error.message))

    # --- the pool

    def require_worker(self, register: pb.WorkerRegister, identity: bytes, now_s: float) -> None:
        holder = self.workers.by_id(register.worker_id)
        check_register(register, identity, None if holder is None else holder.identity)
        old = self.workers.delete_worker(identity, now_s)
        if old is not None:
            self.dispatcher.requeue_running(old)  # it restarted: whatever it ran is gone
        worker = self.workers.require_worker(identity, register, now_s)
        self.told_to_register_s.pop(identity, None)
        # its first heartbeat within its own interval, though the round runs slower
        first_check_s = now_s + heartbeat_check_s(worker.heartbeat_interval_s)
        self.next_heartbeat_s = min(self.next_heartbeat_s, first_check_s)
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
        worker = self.workers.refresh(identity, now_s)  # a stranger's goodbye needs no answer
        if worker is not None and self.workers.delete_worker(identity, now_s) is not None:
            log.info("worker %s left (%s)", worker.worker_id, message.reason[:200])
            self.dispatcher.requeue_running(worker)

    def mark_draining(self, message: pb.Drain, identity: bytes, now_s: float) -> None:
        """The worker finishes what it runs, then says Disconnect: dispatch nothing more to it."""
        worker = self.known_worker(identity, now_s)
        if worker is not None and self.workers.mark_draining(worker):
            log.info(
                "worker %s is draining (%s): %d requests to finish",
                worker.worker_id,
                message.reason or "no reason given",
                len(worker.running_ids),
            )

    def heartbeat(self, _: pb.Heartbeat, identity: bytes, now_s: float) -> None:
        self.known_worker(identity, now_s)

    def known_worker(self, identity: bytes, now_s: float) -> ConnectedWorker | None:
        """Note that the worker is alive; None (and it is told to register) if it is a stranger."""
        worker = self.workers.refresh(identity, now_s)
        if worker is None:
            self.peer_errors.refused("unregistered worker", identity, "a message before WorkerRegister")
            if self.may_tell_to_register(identity, now_s):
                # the zguide's answer to a stranger: tell it to register again
                send_reply(
                    self.socket, identity, False, pack(pb.Disconnect(reason="unknown worker; register again"))
                )
        return worker

    def may_tell_to_register(self, identity: bytes, now_s: float) -> bool:
        told_s = self.told_to_register_s.get(identity)
        if told_s is not None and now_s - told_s < self.heartbeat_interval_s:
            return False
        if len(self.told_to_register_s) >= MAX_TOLD_TO_REGISTER:
            self.forget_told(now_s)
        if len(self.told_to_register_s) < MAX_TOLD_TO_REGISTER:
            self.told_to_register_s[identity] = now_s
        return True

    def forget_told(self, now_s: float) -> None:
        """Forget strangers told longer than an interval ago: they may be told again."""
        self.told_to_register_s = {
            identity: told_s
            for identity, told_s in self.told_to_register_s.items()
            if now_s - told_s < self.heartbeat_interval_s
        }

    def purge_expired(self, now_s: float) -> None:
        self.forget_told(now_s)
        for worker in self.workers.purge_expired(now_s):
            log.warning(
                "worker %s missed its heartbeats; re-queueing %d requests",
                worker.worker_id,
                len(worker.running_ids),
            )
            self.dispatcher.requeue_running(worker)
        for task, model in self.workers.purge_models(now_s):
            queued = self.requests.queued_for(task, model)
            log.warning(
                "forgot model %s: no worker served it for %.0f s; refusing %d queued requests",
                model,
                self.workers.catalog.grace_s,
                len(queued),
            )
            for request in queued:
                self.replies.answer(
                    request,
                    error_frame(
                        pb.UNKNOWN_MODEL,
                        f"no worker serves model '{model}' any more",
                        request.client_request_id,
                    ),
                )

    def send_heartbeats(self, now_s: float) -> None:
        """A heartbeat to each worker the broker sent nothing else of late, by the worker's
        own interval; the loop checks at the shortest interval in use (not under
        MIN_HEARTBEAT_CHECK_S), so a worker that asked for faster heartbeats than the
        broker's gets them, and hears from the broker within 1.5 of its intervals."""
        if now_s < self.next_heartbeat_s:
            return
        check_interval_s = self.heartbeat_interval_s
        for worker in self.workers:
            if is_heartbeat_due(worker.sent_at_s, now_s, worker.heartbeat_interval_s):
                self.dispatcher.send_worker(worker, pack(pb.Heartbeat(num_running=len(worker.running_ids))))
            check_interval_s = min(check_interval_s, worker.heartbeat_interval_s)
        self.next_heartbeat_s = now_s + heartbeat_check_s(check_interval_s)

    # --- progress

    def record_progress(self, progress: pb.StepProgress, identity: bytes, now_s: float) -> None:
        worker = self.known_worker(identity, now_s)
        if worker is None:
            return
        made: dict[tuple[str, str], int] = {}
        for delta in progress.deltas:
            self.record_delta(worker, delta, now_s, made)
        self.count_tokens(worker, made, now_s)

    def count_tokens(self, worker: ConnectedWorker, made: dict[tuple[str, str], int], now_s: float) -> None:
        """Count one message's tokens, by (tenant, model): in the rates `llmos status`
        shows, the tenants' tokens per minute and the metrics. Once a message rather
        than once a request: a worker's message carries a token for each request it runs."""
        num_tokens = sum(made.values())
        if not num_tokens:
            return
        self.tokens.add(num_tokens, now_s)
        worker.tokens.add(num_tokens, now_s)
        for (tenant, model), num_made in made.items():
            self.tenant_tokens.note(tenant, num_made, now_s)
            self.metrics.tokens_generated(tenant, model, num_made)

    def record_delta(
        self,
        worker: ConnectedWorker,
        delta: pb.RequestDelta,
        now_s: float,
        made: dict[tuple[str, str], int],
    ) -> None:
        """Take one request's delta; its tokens are added to `made`, by (tenant, model)."""
        request = self.requests.get(delta.request_id)
        if request is None or request.request_id not in worker.running_ids:
            # stale (the request moved on after this worker was declared dead) or forged
            self.peer_errors.refused(
                "foreign delta", worker.identity, f"request {delta.request_id[:64]!r} is not on it"
            )
            return
        assert request.worker_id == worker.worker_id, f"{request.request_id} is on {request.worker_id}"
        if request.is_answered:
            if delta.is_finished:
                self.dispatcher.release_slot(request, worker)
            return
        overrun = self.overrun(request, delta)
        if overrun is not None:
            self.fail_request(request, worker, overrun)
            return
        chunk = request.record_delta(delta, now_s)
        if delta.token_ids:
            key = (request.tenant, request.model)
            made[key] = made.get(key, 0) + len(delta.token_ids)
        if chunk is not None:
            self.journal.record_chunk(request, chunk)
            self.replies.reply(request.client_identity, request.has_delimiter, pack(chunk))
        if not delta.is_finished:
            if request.is_on_last_token and request.status is RequestStatus.RUNNING:
                self.dispatcher.mark_finishing(request, worker)
            return
        if delta.finish_reason == pb.FINISH_REASON_PREEMPTED:
            request.num_preemptions += 1
            self.metrics.num_preemptions.inc()
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

    def overrun(self, request: Request, delta: pb.RequestDelta) -> str | None:
        """Why the delta would grow the answer the broker holds past what the request
        asked for, or None: a worker makes at most max_tokens, each of them a bounded
        piece of text."""
        if request.kind != pb.TASK_KIND_GENERATE:
            return None
        max_tokens = request.admitted.sampling.max_tokens
        if len(request.generated_token_ids) + len(delta.token_ids) > max_tokens:
            return f"reported more than max_tokens ({max_tokens}) tokens"
        if request.emitted_text_chars + len(delta.text) > MAX_TEXT_CHARS_PER_TOKEN * max_tokens:
            return f"reported more than {MAX_TEXT_CHARS_PER_TOKEN} characters of text a token"
        return None

    def fail_request(self, request: Request, worker: ConnectedWorker, why: str) -> None:
        """A worker broke the protocol on a request: answer WORKER_FAILED, tell it to drop
        the request; its slot frees when it reports the request finished."""
        self.peer_errors.refused("bad delta", worker.identity, f"{request.request_id}: {why}")
        self.dispatcher.cancel(request)
        self.replies.answer(
            request,
            error_frame(pb.WORKER_FAILED, f"worker {worker.worker_id} {why}", request.client_request_id),
        )

    def final_answer(
        self, request: Request, worker: ConnectedWorker, delta: pb.RequestDelta, now_s: float
    ) -> bytes:
        """The client's last message for a request its worker finished."""
        if delta.finish_reason == pb.FINISH_REASON_ERROR:
            log.warning("worker %s failed %s: %s", worker.worker_id, request.request_id, delta.error.message)
            delta.error.request_id = request.client_request_id
            return pack(delta.error)
        self.metrics.request_finished(request, delta.finish_reason, now_s)
        if request.first_token_at_s is not None and request.num_restarts == request.num_preemptions == 0:
            # it ran here alone from its first token: its speed is this worker's
            worker.note_request_speed(len(request.generated_token_ids) - 1, now_s - request.first_token_at_s)
        if request.kind != pb.TASK_KIND_GENERATE:
            return pack(request.pooling_result(delta, worker.worker_id, now_s))
        self.answer_fills.record(
            request.tier,
            delta.finish_reason,
            len(request.generated_token_ids),
            request.admitted.sampling.max_tokens,
        )
        return pack(request.result(delta.finish_reason, worker.worker_id, now_s))
