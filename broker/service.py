"""The broker process: its sockets, its parts and the loop (mechanism only).

    poll → route client / worker / scheduler messages → forget gone clients,
         purge dead workers, expired deadlines and expired kept answers
         → schedule → send heartbeats

The Broker builds the parts and hands each what it may touch:

    RequestTable    every request, its status and the queue      (broker.request_table)
    WorkerPool      connected workers and their slots            (broker.worker_pool)
    ClientReplies   sends to clients, notes unreachable ones     (broker.client_replies)
    Dispatcher      who runs where: asks the scheduler, places,
                    preempts, takes slots back                   (broker.dispatcher)
    WorkerFrontEnd  what workers send                            (broker.worker_front)
    ClientFrontEnd  what clients send; clients leaving; resends  (broker.client_front)
    RequestJournal  accepted requests, relayed tokens and answers
                    in a durable journal; restores them on start  (broker.request_journal,
                                                                   broker.journal)

Decisions live further out: admission in `broker.admission` and `broker.tiers`,
queue order in `broker.queues`, placement and preemption in
`scheduler_svc.policies` (through the scheduler process or, when it is down,
locally through `SchedulerLink`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import zmq

from broker.access import Access
from broker.admission import AdmissionRules
from broker.answers import AnswerFills
from broker.audit_trail import AuditTrail
from broker.client_front import ClientFrontEnd
from broker.client_replies import ClientReplies
from broker.client_watch import ClientWatch
from broker.config import BrokerConfig
from broker.dispatcher import Dispatcher
from broker.journal import Journal
from broker.metrics import BrokerCollector, BrokerMetrics
from broker.queues import TieredQueue
from broker.rates import RateMeter
from broker.request_journal import RequestJournal
from broker.request_table import RequestTable
from broker.scheduler_link import SchedulerLink
from broker.tenant_tokens import TenantTokens
from broker.worker_front import WorkerFrontEnd
from broker.worker_pool import WorkerPool
from llmos.observability import start_metrics
from llmos.security.authenticator import CLIENTS_DOMAIN, WORKERS_DOMAIN
from llmos.security.service_keys import open_service_keys
from llmos.service import run_service
from llmos.service_metrics import RefusalCollector
from llmos.wire.peer_errors import PeerErrors
from llmos.wire.sockets import bind_router

log = logging.getLogger(__name__)


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        # first: a journal another broker holds stops this one before it binds anything
        self.journal = RequestJournal(Journal(config.journal_path, config.journal_sync), config.result_ttl_s)
        # every refusal of a peer's message, from any socket, counted and logged at a bounded rate
        self.peer_errors = PeerErrors(log)
        rules = AdmissionRules(config)
        heartbeat_interval_s = config.heartbeat_interval_ms / 1000
        self.audit = AuditTrail(config.audit_log_path, config.audit_fsync)
        self.context = zmq.Context()
        # the ZAP handler first: libzmq asks it at every CURVE handshake on the sockets below
        self.keys = open_service_keys(
            "broker", config.insecure, config.keys_dir, self.context, self.audit.auth_failure
        )
        self.audit.start(self.keys.is_secure)
        self.client_socket = bind_router(self.context, config.client_bind, self.keys.server(CLIENTS_DOMAIN))
        self.client_watch = ClientWatch(self.client_socket)
        self.worker_socket = bind_router(self.context, config.worker_bind, self.keys.server(WORKERS_DOMAIN))
        tenant_tokens = TenantTokens()
        self.scheduler = SchedulerLink(
            self.context,
            config.scheduler_address,
            config.scheduler_timeout_ms,
            config.scheduler_retry_ms,
            config.fallback_policy,
            config.tenant_weights,
            self.peer_errors,
            self.keys.client_of("scheduler"),
        )
        self.requests = RequestTable(TieredQueue(config.tier_names, rules.max_queue_depths()))
        self.workers = WorkerPool(heartbeat_interval_s, config.model_grace_s)
        answer_fills, tokens = AnswerFills(), RateMeter()
        self.metrics = BrokerMetrics(config.metrics_max_tenants)  # counted whether or not a port serves them
        self.replies = ClientReplies(self.client_socket, self.requests, self.journal, self.audit)
        self.dispatcher = Dispatcher(
            self.worker_socket,
            self.requests,
            self.workers,
            self.scheduler,
            answer_fills,
            self.replies,
            config.max_restarts,
            config.preemption_check_ms / 1000,
            self.metrics,
            config.direct_placement,
        )
        self.worker_front = WorkerFrontEnd(
            self.worker_socket,
            self.workers,
            self.requests,
            self.dispatcher,
            self.replies,
            self.journal,
            answer_fills,
            tokens,
            heartbeat_interval_s,
            self.peer_errors,
            self.keys,
            tenant_tokens,
            self.metrics,
        )
        self.client_front = ClientFrontEnd(
            self.client_socket,
            self.client_watch,
            self.replies,
            self.requests,
            self.workers,
            self.dispatcher,
            rules,
            answer_fills,
            tokens,
            self.peer_errors,
            self.journal,
            config.client_grace_ms / 1000,
            Access(self.keys),
            self.audit,
            tenant_tokens,
            self.metrics,
            config.log_prompts,
        )
        self.metrics.registry.register(BrokerCollector(self))
        self.metrics.registry.register(RefusalCollector(self.peer_errors))
        self.metrics_server = start_metrics(
            config.metrics_host, config.metrics_port, self.metrics.registry, self.readiness
        )
        self.poller = zmq.Poller()
        for socket in (
            self.client_socket,
            self.worker_socket,
            self.scheduler.socket,
            self.client_watch.monitor,
        ):
            self.poller.register(socket, zmq.POLLIN)

    def serve(self, stopping: threading.Event) -> None:
        num_restored = self.journal.restore(self.requests, time.monotonic())
        if num_restored:
            log.info("resuming %d journalled requests", num_restored)
            self.dispatcher.wake()
        log.info(
            "broker serving clients on %s, workers on %s, tiers %s",
            self.config.client_bind,
            self.config.worker_bind,
            ",".join(self.requests.queue.tiers),
        )
        while not stopping.is_set():
            events = dict(self.poller.poll(self.poll_timeout_ms()))
            turn_start_s = time.monotonic()
            if self.client_watch.monitor in events:
                self.run_step("client watch", self.client_front.forget_disconnected_clients)
            if self.client_socket in events:
                self.run_step("client socket", self.client_front.drain)
            if self.worker_socket in events:
                self.run_step("worker socket", self.worker_front.drain)
            if self.scheduler.socket in events:
                self.run_step("scheduler link", self.dispatcher.receive_decisions)
            now_s = time.monotonic()
            self.run_step("unreachable clients", self.client_front.forget_unreachable_clients)
            self.run_step("worker purge", self.worker_front.purge_expired, now_s)
            self.run_step("deadlines", self.client_front.purge_deadlines, now_s)
            self.run_step("gone clients", self.client_front.purge_orphans, now_s)
            self.run_step("journal purge", self.journal.purge_expired, now_s)
            self.run_step("schedule", self.dispatcher.schedule, now_s)
            self.run_step("heartbeats", self.worker_front.send_heartbeats, now_s)
            self.run_step("allowlist", self.reload_keys, now_s)
            self.run_step("revoked connections", self.client_front.hang_up_revoked, now_s)
            self.run_step("audit flush", self.audit.flush)  # what the turn logged without a reply
            self.metrics.broker_loop_lag_s.observe(time.monotonic() - turn_start_s)

    def reload_keys(self, now_s: float) -> None:
        """A changed allowlist (SIGHUP, `llmos keys revoke`): audit it, end what revoked keys hold."""
        changes = self.keys.poll_changes(now_s)
        if changes is None:
            return
        self.audit.key_change(changes)
        gone = {entry.public_key for entry in (*changes.revoked, *changes.removed)}
        if gone:
            self.client_front.revoke_keys(gone)

    def run_step(self, what: str, step: Callable[..., None], *args: float) -> None:
        """Run one step of the loop; a bug in it is counted and logged, and the loop goes on
        (the fronts catch what one message causes; this catches the rest)."""
        try:
            step(*args)
        except Exception:
            self.peer_errors.internal(what)

    def readiness(self) -> tuple[bool, str]:
        """Ready once some worker is registered (a request has somewhere to go)."""
        return (len(self.workers) > 0, "no worker is registered yet")

    def num_running(self) -> int:
        return sum(len(worker.running_ids) for worker in self.workers)

    def poll_timeout_ms(self) -> int:
        now_s = time.monotonic()
        wake_s = [
            self.worker_front.next_heartbeat_s,
            self.requests.next_deadline_s,
            self.dispatcher.wake_at_s,
            self.journal.next_purge_s,
        ]
        wait_s = max(0.0, min(s for s in wake_s if s is not None) - now_s)
        if self.scheduler.is_waiting:
            wait_s = min(wait_s, self.scheduler.seconds_left(now_s))
        return int(wait_s * 1000) + 1

    def close(self) -> None:
        self.client_socket.disable_monitor()
        self.client_watch.close()
        for socket in (self.client_socket, self.worker_socket):
            socket.close()
        self.scheduler.close()
        self.keys.close()
        self.context.term()
        self.journal.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.audit.close()


def run(config: BrokerConfig) -> None:
    run_service("broker", lambda: Broker(config), config.log_format)
