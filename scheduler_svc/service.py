"""The scheduler process: a ROUTER the broker asks, a SUB for the kernel's views.

One loop: poll → take the newest view / answer each batch or policy switch →
expire a stale view. The decision itself is `policies.decide`,
the same code the broker runs when this process is down.
"""

from __future__ import annotations

import logging
import threading
import time

import zmq
from google.protobuf.message import Message

from llmos.observability import always_ready, start_metrics
from llmos.security.authenticator import SCHEDULER_DOMAIN
from llmos.security.service_keys import ADMIN_ROLE, open_service_keys
from llmos.service import run_service
from llmos.service_metrics import RefusalCollector, SchedulerCollector, decision_histogram, registry_of
from llmos.wire import WireError, pb
from llmos.wire.constants import ERROR_NAMES, HEARTBEAT_LIVENESS, RESOURCE_TOPIC
from llmos.wire.envelope import error_frame
from llmos.wire.handlers import Handlers
from llmos.wire.peer_errors import PeerErrors
from llmos.wire.router import answer_request
from llmos.wire.sockets import bind_router, connect_sub, router_frames, send_reply
from scheduler_svc import limits
from scheduler_svc.config import SchedulerConfig
from scheduler_svc.convert import kernel_view_from_proto
from scheduler_svc.data import KernelView
from scheduler_svc.policies import PolicyName, decide, make_policy

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 100  # bounds how late a stale view is dropped or a shutdown noticed
# Messages read from one socket before the loop turns to the other, so a flood on one
# (batches, or views) cannot starve the other or the view's expiry.
MAX_MESSAGES_PER_POLL = 1000


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.policy_options = config.policy_options()  # for the policies `set_policy` makes
        self.policy = make_policy(config.policy, **self.policy_options)
        self.context = zmq.Context()
        # the ZAP handler first: libzmq asks it at every CURVE handshake on the router
        self.keys = open_service_keys("scheduler", config.insecure, config.keys_dir, self.context)
        self.router = bind_router(self.context, config.scheduler_bind, self.keys.server(SCHEDULER_DOMAIN))
        self.sub = connect_sub(
            self.context, config.kernel_pub_address, RESOURCE_TOPIC, self.keys.client_of("kernel")
        )
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.sub, zmq.POLLIN)
        self.view_expiry_s = HEARTBEAT_LIVENESS * config.heartbeat_interval_ms / 1000
        self.view: KernelView | None = None
        self._view_received_at_s = 0.0
        self.peer_errors = PeerErrors(log)
        self.handlers: Handlers[Message] = Handlers(
            "the scheduler's port",
            {
                pb.ScheduleRequest: self.decide,
                pb.SetPolicy: self.set_policy,
            },
        )
        registry = registry_of(
            SchedulerCollector(lambda: self.policy.name.value, lambda: self.view is not None),
            RefusalCollector(self.peer_errors),
        )
        self.decision_s = decision_histogram(registry)
        self.metrics = start_metrics(config.metrics_host, config.metrics_port, registry, always_ready)
        self.view_handlers: Handlers[pb.ResourceView] = Handlers(
            "the kernel's resource feed", {pb.ResourceView: lambda view: view}
        )

    # ---------------------------------------------------------------- the loop

    def serve(self, stopping: threading.Event) -> None:
        log.info(
            "scheduler serving on %s with policy %s, views from %s",
            self.config.scheduler_bind,
            self.policy.name.value,
            self.config.kernel_pub_address,
        )
        while not stopping.is_set():
            events = dict(self.poller.poll(POLL_TIMEOUT_MS))
            now_s = time.monotonic()
            # views first, so a batch waiting beside a fresh view is decided with it
            if self.sub in events:
                self.take_views(now_s)
            if self.router in events:
                self.route_pending()
            self.expire_view(now_s)
            self.keys.poll_changes(now_s)  # the ZAP handler admits by the allowlist read last

    def close(self) -> None:
        self.router.close()
        self.sub.close()
        self.keys.close()
        self.context.term()
        if self.metrics is not None:
            self.metrics.stop()

    # ---------------------------------------------------------------- views

    def take_views(self, now_s: float) -> None:
        """Keep the newest view the kernel published; older ones are worthless."""
        newest: pb.ResourceView | None = None
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                newest = self.view_handlers.route(frames[-1])
            except WireError as error:
                self.peer_errors.refused("bad view", "the kernel", error.message)
        if newest is None:
            return
        if self.view is None:
            log.info("kernel view received: %d workers", len(newest.workers))
        try:
            self.view = kernel_view_from_proto(newest)  # once per view, not once per batch
        except Exception:  # a view this code cannot read: keep the last one, and the loop
            self.peer_errors.internal("the kernel")
            return
        self._view_received_at_s = now_s

    def expire_view(self, now_s: float) -> None:
        """Forget a view the kernel stopped refreshing: no view beats a wrong one."""
        if self.view is not None and now_s - self._view_received_at_s > self.view_expiry_s:
            log.warning("no kernel view for %.1f s: scheduling without KV block counts", self.view_expiry_s)
            self.view = None

    # ---------------------------------------------------------------- routing

    def route_pending(self) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.route([frame.bytes for frame in frames], self.keys.role_of(frames[-1]))

    def route(self, frames: list[bytes], role: str) -> None:
        """Answer one message; whatever its bytes, nothing raises out of here."""
        identity = frames[0]
        try:
            answer_request(self.router, frames, self.handlers, self.log_refusal, role)
        except Exception:  # a bug: it costs this batch its answer (the broker decides it), not the loop
            self.peer_errors.internal(identity)
            split = router_frames(frames)
            has_delimiter = split is not None and split[2]
            send_reply(
                self.router, identity, has_delimiter, error_frame(pb.INTERNAL, "scheduler error; logged")
            )

    def decide(self, request: pb.ScheduleRequest, role: str) -> pb.ScheduleDecision:
        limits.check_schedule_request(request)
        decision = decide(self.policy, request, self.view)
        self.decision_s.labels(self.policy.name.value).observe(decision.decision_us / 1_000_000)
        log.debug(
            "batch %d: placed %d of %d pending on %d workers, preempted %d, in %d us",
            request.batch_id,
            len(decision.placements),
            len(request.pending),
            len(request.workers),
            len(decision.preemptions),
            decision.decision_us,
        )
        for preemption in decision.preemptions:
            log.info(
                "preempt %s on worker %s: %s", preemption.request_id, preemption.worker_id, preemption.reason
            )
        return decision

    def set_policy(self, request: pb.SetPolicy, role: str) -> pb.PolicyStatus:
        """Switch to the policy named (empty: just report); only an admin key may switch.
        The current policy object, and any state it keeps, stays when the name is the
        policy already in use."""
        name = request.policy
        if name and role != ADMIN_ROLE:
            raise WireError(
                pb.PERMISSION_DENIED, f"switching the policy needs an admin key, not a {role} key"
            )
        limits.check_policy_name(name)
        if name and name != self.policy.name.value:
            try:
                policy = make_policy(name, **self.policy_options)
            except ValueError as exc:
                raise WireError(pb.INVALID_ARGUMENT, str(exc)) from None
            log.info("policy switched from %s to %s", self.policy.name, policy.name)
            self.policy = policy
        return pb.PolicyStatus(policy=self.policy.name.value, available=PolicyName.choices())

    def log_refusal(self, identity: bytes, error: WireError) -> None:
        self.peer_errors.refused(ERROR_NAMES.get(error.code, str(error.code)), identity, error.message)


def run(config: SchedulerConfig) -> None:
    run_service("scheduler", lambda: Scheduler(config), config.log_format)
