"""The scheduler process: a ROUTER the broker asks, a SUB for the kernel's views.

One loop (STYLE.md 1): poll → take the newest view / answer each batch or
policy switch → expire a stale view. The decision itself is `policies.decide`,
the same code the broker runs when this process is down.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq
from google.protobuf.message import Message

from llmos.logs import setup_logging
from llmos.wire import WireError, pb, unpack
from llmos.wire.constants import HEARTBEAT_LIVENESS, RESOURCE_TOPIC
from llmos.signals import stop_on_signals
from llmos.wire.router import answer_request
from llmos.wire.sockets import bind_router, connect_sub
from scheduler_svc.config import SchedulerConfig
from scheduler_svc.convert import kernel_view_from_proto
from scheduler_svc.data import KernelView
from scheduler_svc.policies import PolicyName, SchedulingPolicy, decide, make_policy

log = logging.getLogger("scheduler")

POLL_TIMEOUT_MS = 100  # bounds how late a stale view is dropped or a shutdown noticed
_ACCEPTED = frozenset({"schedule_request", "set_policy"})
_ACCEPTED_ON_SUB = frozenset({"resource_view"})


class Scheduler:
    def __init__(self, policy: SchedulingPolicy, router: zmq.Socket, sub: zmq.Socket,
                 view_expiry_s: float, policy_options: dict[str, Any] | None = None) -> None:
        self.policy = policy
        self.policy_options = policy_options or {}  # for the policies `set_policy` makes
        self.router = router
        self.sub = sub
        self.view_expiry_s = view_expiry_s
        self.view: KernelView | None = None
        self._view_received_at_s = 0.0

    def take_views(self, now_s: float) -> None:
        """Keep the newest view the kernel published; older ones are worthless."""
        newest: pb.ResourceView | None = None
        while True:
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                _, newest = unpack(frames[-1], _ACCEPTED_ON_SUB)
            except WireError as error:
                log.warning("ignored a bad resource view from the kernel: %s", error.message)
        if newest is None:
            return
        if self.view is None:
            log.info("kernel view received: %d workers", len(newest.workers))
        self.view = kernel_view_from_proto(newest)  # once per view, not once per batch
        self._view_received_at_s = now_s

    def expire_view(self, now_s: float) -> None:
        """Forget a view the kernel stopped refreshing: no view beats a wrong one."""
        if self.view is not None and now_s - self._view_received_at_s > self.view_expiry_s:
            log.warning("no kernel view for %.1f s: scheduling without KV block counts",
                        self.view_expiry_s)
            self.view = None

    def route_pending(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.route(frames)

    def route(self, frames: list[bytes]) -> None:
        answer_request(self.router, frames, _ACCEPTED, self.handle, self.log_refusal)

    def handle(self, name: str, request: Message) -> Message:
        return self.set_policy(request.policy) if name == "set_policy" else self.decide(request)

    def decide(self, request: pb.ScheduleRequest) -> pb.ScheduleDecision:
        decision = decide(self.policy, request, self.view)
        log.debug("batch %d: placed %d of %d pending on %d workers, preempted %d, in %d us",
                  request.batch_id, len(decision.placements), len(request.pending),
                  len(request.workers), len(decision.preemptions), decision.decision_us)
        for preemption in decision.preemptions:
            log.info("preempt %s on worker %s: %s", preemption.request_id, preemption.worker_id,
                     preemption.reason)
        return decision

    def set_policy(self, name: str) -> pb.PolicyStatus:
        """Switch to policy `name` (empty: just report). The current policy object,
        and any state it keeps, stays when `name` is the policy already in use."""
        if name and name != self.policy.name.value:
            try:
                policy = make_policy(name, **self.policy_options)
            except ValueError as exc:
                raise WireError(pb.INVALID_ARGUMENT, str(exc)) from None
            log.info("policy switched from %s to %s", self.policy.name, policy.name)
            self.policy = policy
        return pb.PolicyStatus(policy=self.policy.name.value, available=PolicyName.choices())

    @staticmethod
    def log_refusal(identity: bytes, error: WireError) -> None:
        log.warning("refused a message from peer %r: %s", identity, error.message)


def run(config: SchedulerConfig) -> None:
    setup_logging("scheduler")
    policy = make_policy(config.policy, **config.policy_options())
    context = zmq.Context()
    router = bind_router(context, config.scheduler_bind)
    sub = connect_sub(context, config.kernel_pub_address, RESOURCE_TOPIC)
    view_expiry_s = HEARTBEAT_LIVENESS * config.heartbeat_interval_ms / 1000
    scheduler = Scheduler(policy, router, sub, view_expiry_s, config.policy_options())
    stopping = stop_on_signals()
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(sub, zmq.POLLIN)
    log.info("scheduler serving on %s with policy %s, views from %s",
             config.scheduler_bind, policy.name.value, config.kernel_pub_address)
    try:
        while not stopping.is_set():
            events = dict(poller.poll(POLL_TIMEOUT_MS))
            now_s = time.monotonic()
            # views first, so a batch waiting beside a fresh view is decided with it
            if sub in events:
                scheduler.take_views(now_s)
            if router in events:
                scheduler.route_pending()
            scheduler.expire_view(now_s)
    finally:
        router.close()
        sub.close()
        context.term()
    log.info("scheduler stopped")
