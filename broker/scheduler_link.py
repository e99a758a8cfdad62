"""The broker's line to the scheduler process, with a local fallback.

The broker asks for placements in batches (one ScheduleRequest covers every
pending request it sends), never waits more than `timeout_ms` for an answer,
and when the scheduler is down or slow it runs the same policy code itself
(`scheduler_svc.policies.decide`), logging the switch both ways.
"""

from __future__ import annotations

import logging

import zmq

from llmos.wire import WireError, pack, pb
from llmos.wire.handlers import Handlers
from llmos.wire.peer_errors import PeerErrors
from llmos.wire.sockets import CurveOptions, connect_dealer
from scheduler_svc.policies import decide, make_policy

log = logging.getLogger(__name__)

# one slow answer (a busy machine) costs one batch decided locally; only this
# many in a row mark the scheduler offline for `retry_ms`
TIMEOUTS_BEFORE_OFFLINE = 2
# an answer waiting unread in the socket excuses a timeout for this many timeouts at most
UNREAD_GRACE_TIMEOUTS = 4


class SchedulerLink:
    def __init__(
        self,
        context: zmq.Context,
        address: str,
        timeout_ms: int,
        retry_ms: int,
        fallback_policy: str,
        tenant_weights: str = "",
        peer_errors: PeerErrors | None = None,
        curve: CurveOptions | None = None,
    ) -> None:
        self.address = address
        self.peer_errors = peer_errors or PeerErrors(log)
        self.timeout_s = timeout_ms / 1000
        self.retry_s = retry_ms / 1000
        self.fallback = make_policy(fallback_policy, tenant_weights=tenant_weights)
        # a send fails at once while no scheduler is connected, instead of
        # queueing stale batches for it
        self.socket = connect_dealer(context, address, is_immediate=True, curve=curve)
        self.is_online = True
        self.policy_name = ""
        self._next_batch_id = 1
        self._waiting_batch_id: int | None = None
        self._waiting_since_s = 0.0
        self._retry_at_s = 0.0
        self._num_timeouts_in_a_row = 0
        self._from_scheduler: Handlers[pb.ScheduleDecision | None] = Handlers(
            "the broker's scheduler link",
            {pb.ScheduleDecision: self._take_decision, pb.Error: self._take_refusal},
        )

    @property
    def is_waiting(self) -> bool:
        return self._waiting_batch_id is not None

    def can_ask(self, now_s: float) -> bool:
        return not self.is_waiting and (self.is_online or now_s >= self._retry_at_s)

    def ask(self, request: pb.ScheduleRequest, now_s: float) -> bool:
        """Send a batch to the scheduler; False if it cannot be sent now."""
        request.batch_id = self._next_batch_id
        try:
            self.socket.send(pack(request), zmq.NOBLOCK)
        except zmq.Again:
            self.mark_offline(now_s, "not connected")
            return False
        self._next_batch_id += 1
        self._waiting_batch_id = request.batch_id
        self._waiting_since_s = now_s
        return True

    def seconds_left(self, now_s: float) -> float:
        return max(0.0, self._waiting_since_s + self.timeout_s - now_s)

    def is_timed_out(self, now_s: float) -> bool:
        """Waited `timeout_s` for the batch's answer, and nothing has come. A message
        already in the socket, which the broker's loop has not read yet, is no timeout
        until UNREAD_GRACE_TIMEOUTS have passed: under load one turn of the loop can
        outlast `timeout_s`, and that is the broker's slowness, not the scheduler's (the
        next turn reads it). The bound keeps a scheduler that sends anything but the
        answer, late answers to earlier batches included, from holding a batch forever."""
        if not self.is_waiting or self.seconds_left(now_s) > 0.0:
            return False
        is_in_grace = now_s < self._waiting_since_s + UNREAD_GRACE_TIMEOUTS * self.timeout_s
        return not (is_in_grace and self.socket.poll(0))

    def time_out(self, now_s: float) -> None:
        """The batch we wait for took too long: stop waiting (the caller decides it)."""
        self._waiting_batch_id = None
        self._num_timeouts_in_a_row += 1
        if self._num_timeouts_in_a_row >= TIMEOUTS_BEFORE_OFFLINE:
            self.mark_offline(
                now_s,
                f"{self._num_timeouts_in_a_row} batches in a row without a "
                f"decision within {self.timeout_s * 1000:.0f} ms",
            )
        else:
            log.info("scheduler slow: deciding one batch locally")

    def mark_offline(self, now_s: float, reason: str) -> None:
        if self.is_online:
            log.warning(
                "scheduler at %s unavailable (%s); broker falls back to its built-in '%s' order",
                self.address,
                reason,
                self.fallback.name,
            )
        self.is_online = False
        self._waiting_batch_id = None
        self._retry_at_s = now_s + self.retry_s

    def receive(self) -> pb.ScheduleDecision | None:
        """Read one reply; the decision if it answers the batch we wait for."""
        frame = self.socket.recv()
        try:
            return self._from_scheduler.route(frame)
        except WireError as exc:
            self.peer_errors.refused(pb.ErrorCode.Name(exc.code), "scheduler", exc.message)
            return None

    def _take_refusal(self, error: pb.Error) -> None:
        log.error("scheduler refused batch: %s", error.message[:500])
        self._waiting_batch_id = None
        return None

    def _take_decision(self, decision: pb.ScheduleDecision) -> pb.ScheduleDecision | None:
        if decision.batch_id != self._waiting_batch_id:
            return None  # a late answer to a batch we already decided ourselves
        self._waiting_batch_id = None
        self._num_timeouts_in_a_row = 0
        if not self.is_online:
            log.info("scheduler at %s is back; using its '%s' policy", self.address, decision.policy)
        self.is_online = True
        self.policy_name = decision.policy
        return decision

    def decide_locally(self, request: pb.ScheduleRequest) -> pb.ScheduleDecision:
        return decide(self.fallback, request, None)

    def close(self) -> None:
        self.socket.close()
