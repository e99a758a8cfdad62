"""The broker's dispatcher: who runs where.

It asks the scheduler (or, when the scheduler is down or slow, decides locally
through the same policy code) which queued request goes to which worker's slot
and which running request to preempt, and acts on each that still holds. One
case it places without asking (`place_directly`): a request alone in the queue
whose model has exactly one worker with a free slot, that worker idle, under a
policy that keeps no state between asks. Every policy would place it there, so
the scheduler's round trip would only delay its first token. It is
the one sender of request messages to workers (dispatch, preempt, cancel), and
it takes slots back: when a request leaves its worker, and when a worker is lost
(its requests go back to the head of their lanes).
"""

from __future__ import annotations

import logging
import time

import zmq

from broker.answers import AnswerFills
from broker.client_replies import ClientReplies
from broker.metrics import BrokerMetrics
from broker.request_table import RequestTable
from broker.requests import Request, RequestStatus
from broker.scheduler_link import SchedulerLink
from broker.worker_pool import ConnectedWorker, WorkerPool
from llmos.wire import error_frame, pack, pb
from llmos.wire.sockets import send_reply
from scheduler_svc.policies import is_stateless_policy

log = logging.getLogger(__name__)

MAX_PENDING_PER_TIER_ASKED = 2048  # bounds one ScheduleRequest
MAX_DECISIONS_PER_POLL = 100  # the scheduler answers one batch at a time; more is a flood
# A top-tier arrival, while lower tiers hold slots, brings the next preemption check
# this close to the last one: a user should not wait out the usual interval (several
# steps) for a slot that a batch request can give up. Arrivals into a full stack of
# top-tier work keep the usual interval, so a flood of them cannot make the broker
# build a ScheduleRequest per arrival.
TOP_TIER_CHECK_INTERVAL_S = 0.01


class Dispatcher:
    def __init__(
        self,
        socket: zmq.Socket,
        requests: RequestTable,
        workers: WorkerPool,
        scheduler: SchedulerLink,
        answer_fills: AnswerFills,
        replies: ClientReplies,
        max_restarts: int,
        preemption_check_s: float,
        metrics: BrokerMetrics,
        is_direct_placement_on: bool = True,
    ) -> None:
        self.socket = socket  # the workers' ROUTER, for sends only
        self.requests = requests
        self.workers = workers
        self.scheduler = scheduler
        self.answer_fills = answer_fills  # read: sent to the scheduler with each ask
        self.replies = replies  # answers requests that lost too many workers
        self.max_restarts = max_restarts
        self.preemption_check_s = preemption_check_s
        self.needs_schedule = False  # set when a request, a slot or a worker appears
        self.next_preemption_check_s = 0.0
        self.last_preemption_check_s = 0.0
        self.is_lower_tier_running = False  # as of the last ScheduleRequest
        self.metrics = metrics  # written: re-queues, batches decided locally, direct placements
        self.is_direct_placement_on = is_direct_placement_on

    # --- when to schedule

    def wake(self) -> None:
        """Something a placement may use appeared: a worker, or a slot about to free."""
        self.needs_schedule = True

    def note_arrival(self, request: Request) -> None:
        """A request joined the queue. A top-tier one, where lower tiers held slots at
        the last ask, brings the next preemption check to TOP_TIER_CHECK_INTERVAL_S
        after the last one."""
        self.needs_schedule = True
        if request.tier_rank == 0 and self.is_lower_tier_running:
            self.next_preemption_check_s = min(
                self.next_preemption_check_s, self.last_preemption_check_s + TOP_TIER_CHECK_INTERVAL_S
            )

    @property
    def wake_at_s(self) -> float | None:
        """When the loop must run `schedule` again, if it waits on anything."""
        return self.next_preemption_check_s if self.needs_schedule else None

    def scheduler_in_use(self) -> tuple[bool, str]:
        """(is the scheduler online, the policy deciding placements)."""
        if self.scheduler.is_online:
            return True, self.scheduler.policy_name
        return False, self.scheduler.fallback.name

    # --- asking and applying

    def schedule(self, now_s: float) -> None:
        is_timed_out = self.scheduler.is_timed_out(now_s)
        if is_timed_out:
            self.scheduler.time_out(now_s)
            self.needs_schedule = True
        if not self.needs_schedule or self.scheduler.is_waiting:
            return
        if not len(self.requests.queue) or not len(self.workers):
            self.needs_schedule = False  # set again by a new request, a freed slot, a new worker
            return
        if self.place_directly(now_s):
            self.needs_schedule = False
            return
        if not any(w.has_capacity for w in self.workers):
            # every slot is busy: only a preemption can help; ask now and then, not per message
            if now_s < self.next_preemption_check_s:
                return
            self.last_preemption_check_s = now_s
            self.next_preemption_check_s = now_s + self.preemption_check_s
        self.needs_schedule = False
        request = self.schedule_request(now_s)
        if not is_timed_out and self.scheduler.can_ask(now_s) and self.scheduler.ask(request, now_s):
            return
        self.metrics.scheduler_fallbacks.inc()
        self.apply(self.scheduler.decide_locally(request))

    def place_directly(self, now_s: float) -> bool:
        """The idle stack's fast path: place the one queued request, without asking, on
        the one worker with a free slot for its model, where that worker runs nothing and
        the policy in use is stateless. With one candidate there is no choice to make
        (prefix, KV blocks, speed only rank candidates), an idle worker has its KV blocks
        free, and nothing else waits: every policy places it there. False where the
        scheduler must be asked."""
        if not self.is_direct_placement_on or len(self.requests.queue) != 1:
            return False
        if not is_stateless_policy(self.scheduler_in_use()[1]):
            return False
        request = next(self.requests.queued_in_order(1))
        candidates = [w for w in self.workers if w.has_capacity and w.serves(request.model)]
        if len(candidates) != 1 or candidates[0].running_ids:
            return False
        self.is_lower_tier_running = self.is_lower_tier_running or request.tier_rank > 0
        self.metrics.direct_placements.inc()
        self.place(pb.Placement(request_id=request.request_id, worker_id=candidates[0].worker_id), now_s)
        return True

    def schedule_request(self, now_s: float) -> pb.ScheduleRequest:
        """What the scheduler decides on. A draining worker offers no slot, and its
        requests are no victims (a slot freed there would take nothing): they are
        listed as leaving, which still counts their tokens."""
        asked = pb.ScheduleRequest(tier_answers=self.answer_fills.tier_answers())
        # each list is filled in place: a message built apart would be copied in whole
        for worker in self.workers:
            if not worker.is_draining:
                worker.add_slots(asked.workers)
        for queued in self.requests.queued_in_order(MAX_PENDING_PER_TIER_ASKED):
            queued.add_pending(asked.pending, now_s)
        is_lower_tier_running = False
        for worker in self.workers:
            for request in self.requests.on_worker(worker):
                if request.is_answered:
                    continue
                if request.is_leaving or worker.is_draining:
                    request.add_running(asked.leaving, now_s)
                else:
                    request.add_running(asked.running, now_s)
                    is_lower_tier_running = is_lower_tier_running or request.tier_rank > 0
        self.is_lower_tier_running = is_lower_tier_running
        return asked

    def receive_decisions(self) -> None:
        for _ in range(MAX_DECISIONS_PER_POLL):
            if not self.scheduler.socket.poll(0):
                return
            decision = self.scheduler.receive()
            if decision is not None:
                self.apply(decision)

    def apply(self, decision: pb.ScheduleDecision) -> None:
        """Act on each preemption and placement that still holds."""
        for preemption in decision.preemptions:
            self.preempt(preemption)
        now_s = time.monotonic()
        for placement in decision.placements:
            self.place(placement, now_s)

    def preempt(self, preemption: pb.Preemption) -> None:
        request = self.requests.get(preemption.request_id)
        worker = self.workers.by_id(preemption.worker_id)
        if (
            request is None
            or request.status is not RequestStatus.RUNNING
            or request.worker_id != preemption.worker_id
            or worker is None
        ):
            return
        log.info(
            "preempting %s tier %s on worker %s: %s",
            request.request_id,
            request.tier,
            worker.worker_id,
            preemption.reason,
        )
        request.move_to(RequestStatus.PREEMPTING)
        worker.mark_leaving(request.request_id)
        self.send_worker(worker, pack(pb.Preempt(request_id=request.request_id)))

    def place(self, placement: pb.Placement, now_s: float) -> None:
        request = self.requests.get(placement.request_id)
        worker = self.workers.by_id(placement.worker_id)
        if (
            request is None
            or request.status is not RequestStatus.QUEUED
            or worker is None
            or not worker.has_capacity
            or not worker.serves(request.model)
        ):
            return
        self.requests.start(request, worker.worker_id, now_s)
        worker.take_slot(request.request_id)
        log.debug("dispatch %s tier %s to worker %s", request.request_id, request.tier, worker.worker_id)
        self.send_worker(worker, pack(request.dispatch()))

    def drain(self, worker: ConnectedWorker, reason: str) -> None:
        """Tell the worker to finish what it runs and leave; dispatch nothing more to it."""
        if not self.workers.mark_draining(worker):
            return  # told already, or it drains on its own (SIGTERM): it leaves anyway
        log.info(
            "draining worker %s (%s): %d requests to finish",
            worker.worker_id,
            reason,
            len(worker.running_ids),
        )
        self.send_worker(worker, pack(pb.Drain(reason=reason)))

    # --- slots coming free

    def mark_finishing(self, request: Request, worker: ConnectedWorker) -> None:
        """RUNNING -> FINISHING: the step in flight makes the request's last token, so
        its slot counts as free and the next request is dispatched into it now. That
        one then waits in the worker's queue and starts on the very next step;
        dispatched once the last token is reported, it would reach the worker after
        that next step began, and the slot would sit idle for a step."""
        request.move_to(RequestStatus.FINISHING)
        worker.mark_leaving(request.request_id)
        self.needs_schedule = True

    def release_slot(self, request: Request, worker: ConnectedWorker) -> None:
        """The worker let go of an ANSWERED request: free its slot, forget the request."""
        worker.release_slot(request.request_id)
        self.needs_schedule = True
        self.requests.forget(request)

    def take_back(self, request: Request, worker: ConnectedWorker, now_s: float) -> None:
        """The worker let go of a request still to answer: free its slot, re-queue it."""
        worker.release_slot(request.request_id)
        self.needs_schedule = True
        self.requests.requeue(request, now_s)

    def cancel(self, request: Request) -> None:
        """Tell the worker holding the request, if one does, to drop it."""
        worker = None if request.worker_id is None else self.workers.by_id(request.worker_id)
        if worker is not None:
            self.send_worker(worker, pack(pb.Cancel(request_id=request.request_id)))

    # --- sending, and losing workers

    def send_worker(self, worker: ConnectedWorker, payload: bytes) -> None:
        """Send to a registered worker; one that cannot be reached is deleted at once."""
        if send_reply(self.socket, worker.identity, False, payload):
            worker.sent_at_s = time.monotonic()
        else:
            self.delete_worker(worker, "unreachable")

    def delete_worker(self, worker: ConnectedWorker, reason: str) -> None:
        if self.workers.delete_worker(worker.identity) is not None:
            log.warning(
                "worker %s is dead (%s); re-queueing %d requests",
                worker.worker_id,
                reason,
                len(worker.running_ids),
            )
            self.requeue_running(worker)

    def requeue_running(self, worker: ConnectedWorker) -> None:
        """Put a lost worker's requests back at the head of their lanes; a request that
        has lost more than `max_restarts` workers is answered WORKER_FAILED instead."""
        now_s = time.monotonic()
        for request in self.requests.on_worker(worker):
            if not request.is_answered:
                request.num_restarts += 1
                if request.num_restarts > self.max_restarts:
                    self.replies.answer(
                        request,
                        error_frame(
                            pb.WORKER_FAILED,
                            f"request lost its worker {request.num_restarts} times; giving up",
                            request.client_request_id,
                        ),
                    )
            if request.is_answered:
                self.release_slot(request, worker)
                continue
            log.warning(
                "re-queueing %s tier %s from worker %s after %d tokens",
                request.request_id,
                request.tier,
                worker.worker_id,
                len(request.generated_token_ids),
            )
            self.metrics.requests_requeued.inc()
            self.take_back(request, worker, now_s)
        worker.running_ids.clear()
        worker.leaving_ids.clear()
