"""The broker process: sockets and the loop (mechanism only).

    poll → route client / worker / scheduler messages → purge dead workers,
         expired deadlines and vanished clients → schedule → send heartbeats

The loop lives here; what each message does lives in the three mixins
(`broker.client_side`, `broker.worker_side`, `broker.scheduling`). Decisions
live further out: admission in `broker.admission` and `broker.tiers`, queue
order in `broker.queues`, placement and preemption in `scheduler_svc.policies`
(via the scheduler process or, when it is down, locally through `SchedulerLink`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter

import zmq

from broker.answers import AnswerFills
from broker.client_side import ClientSide
from broker.client_watch import ClientWatch
from broker.config import BrokerConfig
from broker.queues import TieredQueue
from broker.rates import RateMeter
from broker.worker_pool import WorkerPool
from broker.requests import Request
from broker.scheduler_link import SchedulerLink
from broker.scheduling import Scheduling
from broker.tiers import parse_tenant_quotas, parse_tier_limits
from broker.worker_side import WorkerSide
from llmos.logs import setup_logging
from llmos.signals import stop_on_signals
from llmos.wire.sockets import bind_router

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_POLL = 1000       # per socket, so one busy socket cannot starve the others


class Broker(ClientSide, WorkerSide, Scheduling):
    def __init__(self, config: BrokerConfig, context: zmq.Context) -> None:
        self.config = config
        self.tier_limits = parse_tier_limits(config)
        self.tenant_quotas = parse_tenant_quotas(config.tenant_quotas)
        self.clients = bind_router(context, config.client_bind)
        self.client_watch = ClientWatch(self.clients)
        self.workers_socket = bind_router(context, config.worker_bind)
        self.scheduler = SchedulerLink(context, config.scheduler_address, config.scheduler_timeout_ms,
                                       config.scheduler_retry_ms, config.fallback_policy,
                                       config.tenant_weights)
        self.queue = TieredQueue(config.tier_names, {tier: limits.max_queue_depth
                                                     for tier, limits in self.tier_limits.items()})
        self.heartbeat_interval_s = config.heartbeat_interval_ms / 1000
        self.workers = WorkerPool(self.heartbeat_interval_s)
        self.requests: dict[str, Request] = {}
        self.request_by_client: dict[tuple[bytes, str], str] = {}
        self.live_by_tenant: Counter[str] = Counter()
        self.deadlines: list[tuple[float, str]] = []  # heap; stale entries are skipped
        self._ids = itertools.count(1)
        self.needs_schedule = False  # set when a request, a slot or a worker appears
        self.next_preemption_check_s = 0.0
        self.last_preemption_check_s = 0.0
        self.is_lower_tier_running = False  # as of the last ScheduleRequest
        self.next_heartbeat_s = 0.0
        self.num_completed = 0
        self.num_rejected = 0
        self.tokens = RateMeter()
        self.answer_fills = AnswerFills()
        self.from_clients = self.client_handlers()
        self.from_workers = self.worker_handlers()
        self.poller = zmq.Poller()
        for socket in (self.clients, self.workers_socket, self.scheduler.socket,
                       self.client_watch.monitor):
            self.poller.register(socket, zmq.POLLIN)

    def run(self, stopping: threading.Event) -> None:
        log.info("broker serving clients on %s, workers on %s, tiers %s",
                 self.config.client_bind, self.config.worker_bind, ",".join(self.queue.tiers))
        while not stopping.is_set():
            events = dict(self.poller.poll(self.poll_timeout_ms()))
            if self.client_watch.monitor in events:
                self.forget_disconnected_clients()
            if self.clients in events:
                self.drain_clients()
            if self.workers_socket in events:
                self.drain_workers()
            if self.scheduler.socket in events:
                self.drain_scheduler()
            now_s = time.monotonic()
            self.purge_expired(now_s)
            self.purge_deadlines(now_s)
            self.schedule(now_s)
            self.send_heartbeats(now_s)

    def poll_timeout_ms(self) -> int:
        now_s = time.monotonic()
        wake_s = [self.next_heartbeat_s]
        if self.deadlines:
            wake_s.append(self.deadlines[0][0])
        if self.needs_schedule:
            wake_s.append(self.next_preemption_check_s)
        wait_s = max(0.0, min(wake_s) - now_s)
        if self.scheduler.is_waiting:
            wait_s = min(wait_s, self.scheduler.seconds_left(now_s))
        return int(wait_s * 1000) + 1

    def drain_clients(self) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.clients.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            replaced = self.client_watch.note(frames[-1], identity)
            if replaced is not None:
                self.forget_client(replaced)
            self.route_client([frame.bytes for frame in frames])

    def drain_workers(self) -> None:
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                frames = self.workers_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.route_worker(frames)

    def drain_scheduler(self) -> None:
        while self.scheduler.socket.poll(0):
            decision = self.scheduler.receive()
            if decision is not None:
                self.apply(decision)

    def close(self) -> None:
        self.clients.disable_monitor()
        self.client_watch.close()
        for socket in (self.clients, self.workers_socket):
            socket.close()
        self.scheduler.close()

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
