"""The broker's scheduling: ask the scheduler (or decide locally), then act.

A mixin of `broker.service.Broker`, which owns the state it uses: `scheduler`
(the SchedulerLink), `queue`, `requests`, `workers`, `needs_schedule`, `answer_fills`,
the preemption check's times, and `is_lower_tier_running` (as of the last ask).
"""

from __future__ import annotations

import logging
import time

from broker.requests import RequestStatus
from llmos.wire import pack, pb

log = logging.getLogger(__name__)

MAX_PENDING_PER_TIER_ASKED = 2048   # bounds one ScheduleRequest
# A top-tier arrival, while lower tiers hold slots, brings the next preemption check
# this close to the last one: a user should not wait out the usual interval (several
# steps) for a slot that a batch request can give up. Arrivals into a full stack of
# top-tier work keep the usual interval, so a flood of them cannot make the broker
# build a ScheduleRequest per arrival.
TOP_TIER_CHECK_INTERVAL_S = 0.01


class Scheduling:
    def schedule(self, now_s: float) -> None:
        is_timed_out = self.scheduler.is_timed_out(now_s)
        if is_timed_out:
            self.scheduler.time_out(now_s)
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
            self.last_preemption_check_s = now_s
            self.next_preemption_check_s = now_s + self.config.preemption_check_ms / 1000
        self.needs_schedule = False
        request = self.schedule_request(now_s)
        if not is_timed_out and self.scheduler.can_ask(now_s) and self.scheduler.ask(request, now_s):
            return
        self.apply(self.scheduler.decide_locally(request))

    def schedule_request(self, now_s: float) -> pb.ScheduleRequest:
        workers = [w.slots() for w in self.workers]
        pending = [self.requests[i].pending(now_s)
                   for i in self.queue.in_order(MAX_PENDING_PER_TIER_ASKED)]
        running, leaving = [], []
        for request in (self.requests[i] for w in self.workers for i in w.running_ids):
            if not request.is_answered:
                (leaving if request.is_leaving else running).append(request.running(now_s))
        self.is_lower_tier_running = any(r.tier_rank > 0 for r in running)
        return pb.ScheduleRequest(pending=pending, workers=workers, running=running,
                                  leaving=leaving, tier_answers=self.answer_fills.tier_answers())

    def hurry_preemption_check(self) -> None:
        """A top-tier request arrived: where lower tiers held slots at the last ask, the
        next preemption check comes TOP_TIER_CHECK_INTERVAL_S after the last one."""
        if self.is_lower_tier_running:
            self.next_preemption_check_s = min(
                self.next_preemption_check_s,
                self.last_preemption_check_s + TOP_TIER_CHECK_INTERVAL_S)

    def apply(self, decision: pb.ScheduleDecision) -> None:
        """Act on each preemption and placement that still holds."""
        for preemption in decision.preemptions:
            request = self.requests.get(preemption.request_id)
            if (request is None or request.status is not RequestStatus.RUNNING
                    or request.worker_id != preemption.worker_id):
                continue
            worker = self.workers.by_id(preemption.worker_id)
            if worker is not None:
                log.info("preempting %s tier %s on worker %s: %s", request.request_id,
                         request.tier, worker.worker_id, preemption.reason)
                request.move_to(RequestStatus.PREEMPTING)
                worker.mark_leaving(request.request_id)
                self.send_worker(worker, pack(pb.Preempt(request_id=request.request_id)))
        now_s = time.monotonic()
        for placement in decision.placements:
            request = self.requests.get(placement.request_id)
            worker = self.workers.by_id(placement.worker_id)
            if (request is None or request.status is not RequestStatus.QUEUED or worker is None
                    or not worker.has_capacity or not worker.serves(request.model)):
                continue
            self.queue.remove(request.request_id)
            request.move_to(RequestStatus.RUNNING)
            request.worker_id = worker.worker_id
            request.dispatched_at_s = request.dispatched_at_s or now_s
            request.running_since_s = now_s
            request.tokens_at_dispatch = len(request.generated_token_ids)
            worker.take_slot(request.request_id)
            log.debug("dispatch %s tier %s to worker %s", request.request_id, request.tier,
                      worker.worker_id)
            self.send_worker(worker, pack(request.dispatch()))
