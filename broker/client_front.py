"""The broker's client front end: what arrives on the clients' ROUTER, and clients leaving.

Requests are admitted (validated, checked against the tier's room and the
tenant's quota, journalled, queued, answered `accepted`), cancelled, or asked for
the broker's status. A resend (`is_resend`) of a request the journal knows by
(tenant, request id) attaches this connection to it instead: it catches up from
the journal and streams on, never a second generation.

A request ends early when its client cancels it, its deadline passes or its
client is gone: its worker, if it has one, is told to drop it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import zmq

from broker.access import INSECURE_CALLER, Access, Caller
from broker.admission import AdmissionRules, TaskRequest
from broker.answers import AnswerFills
from broker.audit_trail import AuditTrail
from broker.client_replies import ClientReplies
from broker.client_watch import ClientWatch
from broker.dispatcher import Dispatcher
from broker.journal import Chunk, JournalKey
from broker.metrics import BrokerMetrics
from broker.rates import RateMeter
from broker.request_journal import RequestJournal
from broker.request_table import RequestTable
from broker.requests import Request
from broker.tenant_tokens import TenantTokens
from broker.worker_pool import WorkerPool
from llmos.logs import log_fields
from llmos.wire import WireError, error_frame, pack, pb
from llmos.wire.constants import DEFAULT_TENANT
from llmos.wire.handlers import Handlers
from llmos.wire.peer_errors import PeerErrors
from llmos.wire.sockets import router_frames

log = logging.getLogger(__name__)

QUEUE_FULL_RETRY_MS = 1000
MAX_MESSAGES_PER_POLL = 1000  # so a busy client socket cannot starve the others
# a revoked key's connection closes this long after its requests were answered, so
# the answers (PERMISSION_DENIED) leave before the connection ends
HANG_UP_DELAY_S = 0.2
# refusals that say the client broke the protocol, counted as refused messages; the
# others (QUEUE_FULL, TOO_LARGE, ...) refuse a well-formed request and are only `num_rejected`
PROTOCOL_ERRORS = frozenset(
    {pb.MALFORMED_FRAME, pb.UNSUPPORTED_VERSION, pb.UNKNOWN_MESSAGE, pb.INVALID_ARGUMENT}
)


class ClientFrontEnd:
    def __init__(
        self,
        socket: zmq.Socket,
        watch: ClientWatch,
        replies: ClientReplies,
        requests: RequestTable,
        workers: WorkerPool,
        dispatcher: Dispatcher,
        rules: AdmissionRules,
        answer_fills: AnswerFills,
        tokens: RateMeter,
        peer_errors: PeerErrors,
        journal: RequestJournal,
        client_grace_s: float,
        access: Access,
        audit: AuditTrail,
        tenant_tokens: TenantTokens,
        metrics: BrokerMetrics,
        is_logging_prompts: bool = False,
    ) -> None:
        self.socket = socket  # received from here; replies go through `replies`
        self.watch = watch
        self.replies = replies
        self.requests = requests
        self.workers = workers  # read: the models served, and status
        self.dispatcher = dispatcher
        self.rules = rules
        self.answer_fills = answer_fills  # read: status
        self.tokens = tokens  # read: status
        self.peer_errors = peer_errors
        self.client_grace_s = client_grace_s
        # broker request id -> when its gone client's grace ends (a resend attaches it sooner)
        self.orphans: dict[str, float] = {}
        self.journal = journal  # written: accepted requests; read: resends
        self.access = access
        self.audit = audit  # written: admissions, refusals, cancels, admin actions
        self.tenant_tokens = tenant_tokens  # read: tokens each tenant made in the last minute
        self.is_logging_prompts = is_logging_prompts  # --log-prompts: text in the log, asked for
        self.metrics = metrics  # written: admissions
        self.hang_ups: dict[bytes, float] = {}  # revoked keys' connections -> when to close them
        self.num_rejected = 0
        self.num_rejected_by_code: Counter[str] = Counter()  # read: /metrics
        self.handlers: Handlers[None] = Handlers(
            "the broker's client socket",
            {
                pb.GenerateRequest: self.admit,
                pb.EmbedRequest: self.admit,
                pb.ClassifyRequest: self.admit,
                pb.Cancel: self.cancel,
                pb.StatusRequest: self.send_status,
                pb.DrainWorker: self.drain_worker,
            },
        )

    def drain(self) -> None:
        """Route the waiting messages; the requests they bring are journalled in one commit,
        then dispatched where they can start, and every reply is sent after that: the
        worker starts on a request while its client is told that it is accepted."""
        with self.replies.batch():
            self.route_waiting()
            self.replies.commit_batch()
            self.dispatcher.schedule(time.monotonic())

    def route_waiting(self) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            try:
                self.receive(identity, frames)
            except Exception:  # a bug must cost one message, not the broker
                self.peer_errors.internal(identity)

    def receive(self, identity: bytes, frames: list[zmq.Frame]) -> None:
        try:
            replaced = self.watch.note(frames[-1], identity)
        except zmq.ZMQError:
            # its requests could not be stopped when it leaves, so it may not make any
            self.refuse(
                identity, False, WireError(pb.MALFORMED_FRAME, "the connection does not speak ZMTP 3")
            )
            return
        if replaced is not None:
            self.forget_client(replaced)
        caller = self.access.caller(frames[-1])
        if caller is None:
            # admitted at its handshake, revoked since
            error = WireError(pb.PERMISSION_DENIED, "this key is not (or no longer) allowed")
            self.audit.refusal(error, None)
            self.refuse(identity, len(frames) == 3, error)
            return
        self.watch.note_key(identity, caller.public_key)
        self.route([frame.bytes for frame in frames], caller)

    def route(self, frames: list[bytes], caller: Caller = INSECURE_CALLER) -> None:
        split = router_frames(frames)
        if split is None:
            error = WireError(
                pb.MALFORMED_FRAME,
                "expected one frame holding an Envelope (DEALER) "
                "or an empty delimiter then the Envelope (REQ)",
            )
            self.refuse(frames[0], False, error)
            return
        identity, payload, has_delimiter = split
        try:
            self.handlers.route(payload, identity, has_delimiter, caller)
        except WireError as exc:
            if exc.code not in PROTOCOL_ERRORS:  # garbage is counted (peer_errors), not audited
                self.audit.refusal(exc, caller)
            self.refuse(identity, has_delimiter, exc)
        except Exception:  # a bug must cost one request, not the broker
            self.peer_errors.internal(identity)
            self.replies.reply(
                identity,
                has_delimiter,
                error_frame(pb.INTERNAL, "the broker hit an internal error; it is logged"),
            )

    def refuse(self, identity: bytes, has_delimiter: bool, error: WireError) -> None:
        """Count the refusal, log it (at a bounded rate where the client broke the
        protocol) and answer it with its code."""
        self.num_rejected += 1
        self.num_rejected_by_code[pb.ErrorCode.Name(error.code)] += 1
        if error.code in PROTOCOL_ERRORS:
            self.peer_errors.refused(pb.ErrorCode.Name(error.code), identity, error.message)
        else:
            log.debug("refused %s from client %r: %s", error.request_id or "frame", identity, error.message)
        self.replies.reply(
            identity,
            has_delimiter,
            error_frame(error.code, error.message, error.request_id, error.retry_after_ms),
        )

    # --- messages

    def admit(self, message: TaskRequest, identity: bytes, has_delimiter: bool, caller: Caller) -> None:
        # the key decides the tenant, so a resend attaches only to its own tenant's requests
        message.tenant = caller.tenant_for(message.tenant, message.request_id)
        if message.is_resend and self.attach(message, identity, has_delimiter):
            return
        admitted = self.rules.validate(message, self.workers.model_view())
        request_id, tier, tenant = admitted.request_id, admitted.tier, admitted.tenant
        caller.check_tier(tier, self.requests.queue.tiers, request_id)
        if self.requests.by_client(identity, request_id) is not None:
            raise WireError(
                pb.DUPLICATE_REQUEST, f"request '{request_id}' is already live on this connection", request_id
            )
        if self.journal.live_request((tenant, request_id)) is not None:
            raise WireError(
                pb.DUPLICATE_REQUEST,
                f"tenant '{tenant}' has a live request '{request_id}'; "
                "a client that lost its connection resends it with is_resend",
                request_id,
            )
        if not self.requests.queue.has_room(tier):
            raise WireError(
                pb.QUEUE_FULL,
                f"tier '{tier}' holds {self.requests.queue.max_depth[tier]} requests; retry later",
                request_id,
                QUEUE_FULL_RETRY_MS,
            )
        self.check_quotas(caller, tenant, request_id)
        self.journal.record_accepted(admitted)
        request, position = self.requests.add(identity, has_delimiter, admitted, time.monotonic())
        self.journal.track_accepted(request)
        self.audit.admission(request, caller)
        self.metrics.request_admitted(request)
        if self.is_logging_prompts:
            log.info(
                "prompt of %s tenant %s: %r", request.request_id, tenant, admitted.prompt or admitted.inputs
            )
        self.dispatcher.note_arrival(request)
        log.debug(
            "accepted %s (client id %s) tier %s tenant %s",
            request.request_id,
            request_id,
            tier,
            tenant,
            extra=log_fields(request_id=request.request_id, tenant=tenant, tier=tier),
        )
        self.replies.accept(
            request, pack(pb.Accepted(request_id=request_id, tier=tier, queue_position=position))
        )

    def check_quotas(self, caller: Caller, tenant: str, request_id: str) -> None:
        """Live requests (the key's limit, else the broker's per tenant) and tokens per minute."""
        entry = caller.entry
        quota = entry.max_live_requests if entry is not None and entry.max_live_requests else 0
        quota = quota or self.rules.quota(tenant)
        if quota and self.requests.num_live(tenant) >= quota:
            raise WireError(
                pb.QUOTA_EXCEEDED,
                f"tenant '{tenant}' has {quota} live requests, its quota; retry when one finishes",
                request_id,
                QUEUE_FULL_RETRY_MS,
            )
        tokens_per_minute = entry.tokens_per_minute if entry is not None else 0
        now_s = time.monotonic()
        if tokens_per_minute and self.tenant_tokens.used(tenant, now_s) >= tokens_per_minute:
            raise WireError(
                pb.QUOTA_EXCEEDED,
                f"tenant '{tenant}' generated its {tokens_per_minute} tokens of the last minute",
                request_id,
                self.tenant_tokens.retry_after_ms(tenant, tokens_per_minute, now_s),
            )

    def attach(self, message: TaskRequest, identity: bytes, has_delimiter: bool) -> bool:
        """A resend: this connection gets the request accepted under its key (tenant, id),
        live or finished and kept: Accepted, one chunk with the journalled tokens from
        `resume_from_index` on, then the live stream or the kept answer. False where
        the key is unknown (it was never accepted, or its answer expired)."""
        key = (message.tenant or DEFAULT_TENANT, message.request_id)
        from_index = message.resume_from_index if isinstance(message, pb.GenerateRequest) else 0
        request = self.journal.live_request(key)
        if request is not None:
            held = self.requests.by_client(identity, message.request_id)
            if held is not None and held is not request:
                raise WireError(
                    pb.DUPLICATE_REQUEST,
                    f"request '{message.request_id}' is already live on this connection",
                    message.request_id,
                )
            log.info(
                "resend of %s (client id %s) attached after %d tokens; the client holds %d",
                request.request_id,
                message.request_id,
                len(request.generated_token_ids),
                from_index,
            )
            self.requests.attach(request, identity, has_delimiter)
            self.send_catch_up(identity, has_delimiter, key, request.tier, from_index)
            return True
        finished = self.journal.finished(key)
        if finished is None:
            return False
        log.info("resend of finished %s: its kept answer", message.request_id)
        self.send_catch_up(identity, has_delimiter, key, finished.tier, from_index, finished.chunks)
        self.replies.reply(identity, has_delimiter, finished.answer)
        return True

    def send_catch_up(
        self,
        identity: bytes,
        has_delimiter: bool,
        key: JournalKey,
        tier: str,
        from_index: int,
        chunks: list[Chunk] | None = None,
    ) -> None:
        self.replies.reply(identity, has_delimiter, pack(pb.Accepted(request_id=key[1], tier=tier)))
        catch_up = self.journal.catch_up_chunk(key, from_index, chunks)
        if catch_up is not None:
            self.replies.reply(identity, has_delimiter, catch_up)

    def cancel(self, message: pb.Cancel, identity: bytes, has_delimiter: bool, caller: Caller) -> None:
        # by connection: a client reaches only the requests it sent on this one
        request = self.requests.by_client(identity, message.request_id)
        if request is None:
            raise WireError(
                pb.UNKNOWN_REQUEST,
                f"no live request '{message.request_id}' on this connection",
                message.request_id,
            )
        log.info(
            "cancelled %s tier %s on worker %s",
            request.request_id,
            request.tier,
            request.worker_id,
            extra=log_fields(
                request_id=request.request_id, tenant=request.admitted.tenant, tier=request.tier
            ),
        )
        self.audit.cancel(request, "the client cancelled it")
        self.dispatcher.cancel(request)
        self.replies.answer(
            request,
            pack(request.result(pb.FINISH_REASON_CANCELLED, request.worker_id or "", time.monotonic())),
        )

    def drain_worker(
        self, message: pb.DrainWorker, identity: bytes, has_delimiter: bool, caller: Caller
    ) -> None:
        """`llmos drain WORKER`: the worker finishes what it runs, takes nothing new, leaves."""
        caller.require_admin("draining a worker")
        self.audit.admin_action(caller, "drain", message.worker_id[:128])
        worker = self.workers.by_id(message.worker_id)
        if worker is None:
            raise WireError(pb.UNKNOWN_WORKER, f"no worker '{message.worker_id}' is registered")
        self.dispatcher.drain(worker, "asked by a client (llmos drain)")
        reply = pb.DrainReply(worker_id=worker.worker_id, num_running=len(worker.running_ids))
        self.replies.reply(identity, has_delimiter, pack(reply))

    def send_status(self, _: pb.StatusRequest, identity: bytes, has_delimiter: bool, caller: Caller) -> None:
        self.replies.reply(identity, has_delimiter, pack(self.status()))

    def status(self) -> pb.StatusReply:
        now_s = time.monotonic()
        running_by_tier = Counter(r.tier for w in self.workers for r in self.requests.on_worker(w))
        queue = self.requests.queue
        tiers = []
        for tier in queue.tiers:
            fill = self.answer_fills.fill(tier)
            tiers.append(
                pb.TierStatus(
                    tier=tier,
                    depth=queue.depth(tier),
                    max_depth=queue.max_depth[tier],
                    num_running=running_by_tier[tier],
                    num_answers=fill.num_answers,
                    answer_fill=fill.mean_fill,
                )
            )
        workers = [w.status(now_s) for w in self.workers]
        is_online, policy = self.dispatcher.scheduler_in_use()
        return pb.StatusReply(
            tiers=tiers,
            workers=workers,
            num_running=sum(w.num_running for w in workers),
            scheduler_online=is_online,
            scheduler_policy=policy,
            num_completed=self.replies.num_completed,
            num_rejected=self.num_rejected,
            tokens_per_s=self.tokens.per_s(now_s),
            num_refused_messages=self.peer_errors.total,
            num_journalled=self.journal.num_live,
        )

    # --- requests ending early

    def revoke_keys(self, public_keys: set[str]) -> None:
        """Keys just revoked: their requests are answered PERMISSION_DENIED and stopped,
        and their connections closed (the ZAP handler refuses them when they come back)
        a moment later, so that those answers leave first."""
        hang_up_at_s = time.monotonic() + HANG_UP_DELAY_S
        for identity in self.watch.identities_of_keys(public_keys):
            gone = self.requests.of_client(identity)
            log.warning("a revoked key's connection %r: ending its %d requests", identity, len(gone))
            for request in gone:
                self.audit.cancel(request, "its key was revoked")
                self.dispatcher.cancel(request)
                self.replies.answer(
                    request,
                    error_frame(
                        pb.PERMISSION_DENIED, "the key of this request was revoked", request.client_request_id
                    ),
                )
            self.hang_ups[identity] = hang_up_at_s

    def hang_up_revoked(self, now_s: float) -> None:
        for identity, hang_up_at_s in list(self.hang_ups.items()):
            if hang_up_at_s <= now_s:
                del self.hang_ups[identity]
                self.watch.hang_up(identity)

    def forget_client(self, identity: bytes) -> None:
        """The connection closed: its requests run on, detached, for `client_grace_s` so
        that a client that reconnects can resend them (see docs/protocol.md, Reconnecting);
        `purge_orphans` stops those nobody came back for."""
        gone = self.requests.of_client(identity)
        if not gone:
            return
        if self.client_grace_s <= 0:
            log.info("client %r is gone; stopping its %d requests", identity, len(gone))
            for request in gone:
                self.stop_orphan(request)
            return
        log.info(
            "client %r is gone; its %d requests wait %g s for it to resend them",
            identity,
            len(gone),
            self.client_grace_s,
        )
        give_up_at_s = time.monotonic() + self.client_grace_s
        for request in gone:
            self.requests.detach(request)
            self.orphans[request.request_id] = give_up_at_s

    def purge_orphans(self, now_s: float) -> None:
        """Stop the requests of gone clients that did not resend them within the grace."""
        for request_id, give_up_at_s in list(self.orphans.items()):
            if give_up_at_s > now_s:
                continue
            del self.orphans[request_id]
            request = self.requests.get(request_id)
            if request is not None and request.is_detached and not request.is_answered:
                log.info("no client came back for %s tier %s; stopping it", request_id, request.tier)
                self.stop_orphan(request)

    def stop_orphan(self, request: Request) -> None:
        self.dispatcher.cancel(request)
        self.replies.answer(request, None)

    def forget_disconnected_clients(self) -> None:
        """Clients whose connection closed, as the socket monitor reports them."""
        for identity in self.watch.disconnected():
            self.forget_client(identity)

    def forget_unreachable_clients(self) -> None:
        """Clients a reply could not reach since the last call."""
        for identity in self.replies.take_unreachable():
            self.forget_client(identity)

    def purge_deadlines(self, now_s: float) -> None:
        while (request := self.requests.next_expired(now_s)) is not None:
            log.info(
                "deadline passed for %s tier %s (%s)",
                request.request_id,
                request.tier,
                "running" if request.is_on_worker else "queued",
            )
            self.dispatcher.cancel(request)
            if request.is_on_worker and request.kind == pb.TASK_KIND_GENERATE:
                payload = pack(request.result(pb.FINISH_REASON_DEADLINE, request.worker_id or "", now_s))
            else:
                payload = error_frame(
                    pb.DEADLINE_EXCEEDED,
                    f"the deadline of "
                    f"{request.admitted.deadline_ms} ms passed before the "
                    "request could finish",
                    request.client_request_id,
                )
            self.replies.answer(request, payload)
