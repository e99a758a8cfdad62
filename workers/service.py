"""The worker process: its sockets and its one loop.

The main thread owns every network socket (`workers.links`) and runs
    poll -> route engine outputs, broker and kernel messages -> admit -> expire -> heartbeats.
The engine runs in its own thread (`workers.engine_thread`); which dispatched
requests may start is decided by `workers.admission_gate`. When the broker forgets
this worker or goes silent, every request is dropped: the broker re-queues them.
SIGTERM or the broker's Drain makes it drain (`workers.drain`): the loop returns
once what it runs is finished, and it leaves.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import torch
import zmq

from llmos.observability import start_metrics
from llmos.security.service_keys import open_service_keys
from llmos.service import run_service
from llmos.service_metrics import WorkerCollector, WorkerGauges
from llmos.wire import Handlers, WireError, pb
from llmos.wire.constants import DEFAULT_BLOCK_SIZE, ERROR_NAMES, HEARTBEAT_LIVENESS
from llmos.wire.kv_batch import batch_answers
from llmos.wire.peer_errors import PeerErrors
from workers import dispatch_checks, engine_factory
from workers.admission_gate import AdmissionGate
from workers.config import WorkerConfig, default_worker_id
from workers.drain import Drain
from workers.engine_thread import EngineOutput, EngineThread
from workers.links import BrokerLink, KernelLink
from workers.messages import engine_request, request_delta
from workers.model_facts import model_vocab_size
from workers.model_loader import LoadedModel, load_model, load_tokenizer
from workers.progress_hold import ProgressHold
from workers.requests import Delta, EngineRequest, cancelled_delta, check_request, error_delta
from workers.tokenize_queue import TokenizeQueue

log = logging.getLogger(__name__)

MAX_POLL_MS = 100  # bounds how long a stop signal waits for the loop to notice
MAX_LOGGED_CHARS = 256  # of a reason or message a peer sent: it may be megabytes
ENGINE_STOP_TIMEOUT_S = 5.0


def run(config: WorkerConfig) -> None:
    run_service("worker", lambda: build_worker(config), config.log_format)


def build_worker(config: WorkerConfig) -> Worker:
    """Load the model and build the worker that serves it (generate, or embed / classify)."""
    if not config.worker_id:
        config = replace(config, worker_id=default_worker_id())
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    loaded = load_model(config)
    log.info(
        "worker %s loaded %s from %s on %s (%s): max_model_len %d, KV capacity %d tokens",
        config.worker_id,
        loaded.name,
        loaded.path,
        loaded.device,
        loaded.dtype,
        loaded.max_model_len,
        loaded.kv_capacity_tokens,
    )
    if loaded.task == pb.TASK_KIND_GENERATE:
        return Worker(config, loaded)
    from workers.pooling_service import PoolingWorker  # a Worker subclass: imports this module

    return PoolingWorker(config, loaded)


class Worker:
    def __init__(self, config: WorkerConfig, loaded: LoadedModel) -> None:
        self.config = config
        self.worker_id = config.worker_id
        self.loaded = loaded
        self.interval_s = config.heartbeat_interval_ms / 1000
        self.tokenizer = load_tokenizer(loaded.path)  # this thread's; the engine has its own
        self.tokenize_queue = TokenizeQueue()
        self.peer_errors = PeerErrors(log)
        self.context = zmq.Context()
        self.poller = zmq.Poller()
        self.pipe = self.context.socket(zmq.PAIR)
        pipe_address = f"inproc://engine-{id(self)}"
        self.pipe.bind(pipe_address)
        self.poller.register(self.pipe, zmq.POLLIN)
        self.engine_thread = EngineThread(self.make_engine(), self.context, pipe_address)
        self.gate = AdmissionGate(
            config.max_num_seqs,
            loaded.max_model_len,
            DEFAULT_BLOCK_SIZE,
            loaded.kv_capacity_tokens // DEFAULT_BLOCK_SIZE,
        )
        keys = open_service_keys("worker", config.insecure, config.keys_dir)
        self.kernel = KernelLink(
            self.context,
            self.poller,
            config.kernel_address,
            self.worker_id,
            self.interval_s,
            keys.client_of("kernel"),
            registration=self.kernel_registration(),
        )
        self.broker = BrokerLink(
            self.context,
            self.poller,
            config.broker_worker_address,
            self.worker_id,
            self.interval_s,
            keys.client_of("broker"),
        )
        self.next_heartbeat_at_s = 0.0
        self.tenant_by_request: dict[str, str] = {}  # for the kernel's per-tenant usage
        # the tokens of final-only requests, held between reports
        self.progress_hold: ProgressHold[Delta] = ProgressHold()
        self.prefix_hashes: list[int] = []  # what the engine's prefix cache holds (text blocks)
        self.is_prefix_report_due = False
        self.epoch = 0  # bumped whenever every request is dropped (see engine_thread)
        self.drain_requested = threading.Event()  # set by the first SIGTERM (llmos.service)
        self.drain: Drain | None = None
        collector = WorkerCollector(self.read_gauges)
        self.metrics = start_metrics(config.metrics_host, config.metrics_port, collector, self.readiness)
        self.from_broker: Handlers[None] = Handlers(
            "the worker's broker socket",
            {
                pb.Dispatch: self.accept_dispatch,
                pb.Cancel: self.cancel_request,
                pb.Preempt: self.preempt_request,
                pb.Heartbeat: self.note_broker_heartbeat,
                pb.Disconnect: self.register_again,
                pb.Drain: self.accept_drain,
                pb.Error: self.log_broker_error,
            },
        )
        self.from_kernel: Handlers[None] = Handlers(
            "the worker's kernel socket",
            {
                pb.KernelReply: self.accept_kernel_reply,
                pb.Error: self.accept_kernel_error,
                pb.KvBatchReply: self.accept_kv_batch_reply,
            },
        )

    def make_engine(self) -> engine_factory.GenerateEngine:
        """The engine the engine thread drives (workers.pooling_service overrides it).
        Its KV budget is the kernel's once the kernel answers (adopt_kernel_geometry)."""
        try:
            return engine_factory.make_engine(
                self.config.engine,
                self.loaded.model,
                load_tokenizer(self.loaded.path),
                max_num_seqs=self.config.max_num_seqs,
                max_model_len=self.loaded.max_model_len,
                worker_id=self.worker_id,
                block_size=DEFAULT_BLOCK_SIZE,
                num_blocks=self.loaded.kv_capacity_tokens // DEFAULT_BLOCK_SIZE,
                max_num_batched_tokens=self.config.max_num_batched_tokens,
                prefix_caching=self.config.prefix_caching,
                mixed_steps=self.config.mixed_steps,
                cpu_weights=self.config.cpu_weights,
                release_unused_weights=True,  # the model serves this engine alone
                kv_cache_dtype=self.config.kv_cache_dtype,
                cuda_graphs=self.config.cuda_graphs,
            )
        except ValueError as exc:
            raise SystemExit(f"llmos worker: {exc}") from None

    # ---------------------------------------------------------------- the loop

    def serve(self, stopping: threading.Event) -> None:
        """Register, then poll -> route -> admit -> expire -> heartbeats until `stopping`
        is set or a drain is over."""
        self.engine_thread.start()
        self.register_with_kernel()
        self.broker.connect(self.broker_registration())
        while not stopping.is_set() and not self.is_drained():
            # prompts left to tokenize: look at the sockets, but do not wait on them
            poll_ms = 0 if self.tokenize_queue else min(self.config.heartbeat_interval_ms, MAX_POLL_MS)
            events = dict(self.poller.poll(poll_ms))
            if self.pipe in events:
                self.route_engine_outputs()
            if self.broker.socket in events:
                self.route_broker_messages()
            if self.kernel.socket in events:
                self.route_kernel_messages()
            self.tokenize_dispatched()
            self.admit_requests()
            self.purge_expired()
            self.send_heartbeats()
            self.report_prefixes()
            self.kernel.flush()  # the turn's allocations and frees, in one message
        log.info("worker %s stopping", self.worker_id)

    def is_drained(self) -> bool:
        """Whether a drain is over (see workers.drain); the first stop signal starts one."""
        if self.drain_requested.is_set():
            self.begin_drain("SIGTERM")
        if self.drain is None:
            return False
        num_live = self.num_live_requests
        if not self.drain.is_over(num_live, time.monotonic()):
            return False
        if num_live:
            log.warning(
                "worker %s: drain timed out after %g s with %d requests left; leaving",
                self.worker_id,
                self.config.drain_timeout_s,
                num_live,
            )
        return True

    @property
    def num_live_requests(self) -> int:
        return len(self.tokenize_queue) + len(self.gate.waiting) + self.gate.num_running

    def begin_drain(self, reason: str) -> None:
        """Finish what runs, take nothing new; the broker hears it first (no-op once draining)."""
        if self.drain is not None:
            return
        self.drain = Drain(reason, time.monotonic() + self.config.drain_timeout_s)
        self.broker.send(pb.Drain(reason=reason))
        log.info(
            "worker %s draining (%s): %d requests to finish within %g s",
            self.worker_id,
            reason,
            self.num_live_requests,
            self.config.drain_timeout_s,
        )

    def register_with_kernel(self) -> None:
        """Learn the kernel's block geometry before telling the broker; wait one interval at most."""
        self.kernel.register(time.monotonic(), fresh_socket=True)
        deadline_s = time.monotonic() + self.interval_s
        while not self.kernel.is_online and (left_s := deadline_s - time.monotonic()) > 0:
            if self.kernel.socket.poll(int(left_s * 1000) + 1):
                self.route_kernel_messages()
        if not self.kernel.is_online:
            self.kernel.go_offline(f"no answer to KernelRegister within {self.interval_s:.1f} s")

    def broker_registration(self) -> pb.WorkerRegister:
        return pb.WorkerRegister(
            worker_id=self.worker_id,
            models=[self.loaded.name],
            device=str(self.loaded.device),
            max_num_seqs=self.config.max_num_seqs,
            kv_blocks_total=self.gate.kv_blocks_total,
            block_size=self.gate.block_size,
            heartbeat_interval_ms=self.config.heartbeat_interval_ms,
            max_model_len=self.loaded.max_model_len,
        )

    # ---------------------------------------------------------------- routing

    def route_engine_outputs(self) -> None:
        while True:
            try:
                output: EngineOutput = self.pipe.recv_pyobj(zmq.NOBLOCK)
            except zmq.Again:
                return
            if output.prefix_hashes is not None:
                self.prefix_hashes, self.is_prefix_report_due = output.prefix_hashes, True
            if output.epoch != self.epoch:
                continue  # computed before every request was dropped
            # a request cancelled meanwhile may still show up once; it is gone
            deltas = [d for d in output.deltas if d.request_id in self.gate.running]
            for delta in deltas:
                if not delta.is_finished and delta.token_ids:
                    self.gate.count_tokens(delta.request_id, len(delta.token_ids))
            if deltas:
                self.send_progress(deltas)
            # the broker's answer first, the kernel's bookkeeping after: a client waits on one
            for delta in deltas:
                if delta.is_finished:
                    self.finish_request(delta)

    def route_broker_messages(self) -> None:
        self.route_each(self.from_broker, self.broker.receive())

    def route_kernel_messages(self) -> None:
        self.route_each(self.from_kernel, self.kernel.receive())

    def route_each(self, handlers: Handlers[None], payloads: list[bytes]) -> None:
        """Hand each payload to its handler; one the table refuses is counted, never fatal."""
        for payload in payloads:
            try:
                handlers.route(payload)
            except WireError as exc:
                self.peer_errors.refused(ERROR_NAMES.get(exc.code, "refused"), handlers.where, exc.message)
            except Exception:  # a bug on a peer's message costs that message, not the worker
                self.peer_errors.internal(handlers.where)

    # ---------------------------------------------------------------- from the broker

    def note_broker_heartbeat(self, heartbeat: pb.Heartbeat) -> None:
        """Nothing to do: any frame from the broker is a sign of life, and the link counted it."""

    def register_again(self, disconnect: pb.Disconnect) -> None:
        """The broker forgot this worker: drop every request (it re-queues them) and register
        again on the same connection, which is fine; a draining worker has nothing left
        to run then, and leaves."""
        log.warning(
            "worker %s: the broker says register again (%s)",
            self.worker_id,
            disconnect.reason[:MAX_LOGGED_CHARS] or "no reason given",
        )
        self.drop_all_requests("the broker asked this worker to register again")
        if self.drain is None:
            self.broker.send(self.broker_registration())

    def accept_drain(self, drain: pb.Drain) -> None:
        self.begin_drain(f"the broker: {drain.reason or 'no reason given'}")

    def log_broker_error(self, error: pb.Error) -> None:
        self.log_peer_error("broker", error)

    def log_peer_error(self, peer: str, error: pb.Error) -> None:
        log.warning(
            "worker %s: %s error %s for request %r: %s",
            self.worker_id,
            peer,
            ERROR_NAMES.get(error.code, error.code),
            error.request_id[:MAX_LOGGED_CHARS],
            error.message[:MAX_LOGGED_CHARS],
        )

    # ---------------------------------------------------------------- from the kernel

    def accept_kernel_reply(self, reply: pb.KernelReply) -> None:
        """The answer to a KernelRegister (no request id), a KvAllocate or a KvFree."""
        if not reply.request_id:
            problem = dispatch_checks.kernel_geometry_problem(reply, self.loaded.kv_capacity_tokens)
            if problem is not None:  # the registration stays unanswered: it is sent again
                self.peer_errors.refused("kernel geometry", "the kernel", problem)
                return
            self.adopt_kernel_geometry(reply)
        else:
            self.start_granted(reply.request_id)

    def accept_kv_batch_reply(self, reply: pb.KvBatchReply) -> None:
        """The answers to a KvBatch's allocations and frees, each as if it came alone."""
        for answer in batch_answers(reply):
            if isinstance(answer, pb.Error):
                self.accept_kernel_error(answer)
            else:
                self.accept_kernel_reply(answer)

    def accept_kernel_error(self, error: pb.Error) -> None:
        if error.code == pb.NOT_ENOUGH_BLOCKS:
            self.wait_for_blocks(error.request_id)
        elif error.code == pb.UNKNOWN_WORKER:
            if self.kernel.is_registering:
                # one registration answers every message sent before it (a restarted
                # kernel refuses each allocation, heartbeat and free in flight): the
                # allocations asked for again behind it must not be abandoned twice
                return
            log.warning("worker %s: the kernel does not know this worker; registering again", self.worker_id)
            self.gate.abandon_allocations()
            self.kernel.register(time.monotonic(), fresh_socket=False)
        else:
            self.log_peer_error("kernel", error)

    # ---------------------------------------------------------------- requests

    def is_new_dispatch_for_this_model(self, dispatch: pb.Dispatch) -> bool:
        """False for a second dispatch of a live request (ignored), one that reaches a
        draining worker (handed back) or one for another model (answered with UNKNOWN_MODEL)."""
        request_id = dispatch.request_id
        if not dispatch_checks.is_valid_request_id(request_id):
            self.peer_errors.refused("dispatch", "the broker", "request_id empty or too long")
            return False
        if self.gate.is_live(request_id) or request_id in self.tokenize_queue:
            log.warning("worker %s ignored a second dispatch of request %s", self.worker_id, request_id)
            return False
        if self.drain is not None:
            # a final PREEMPTED delta with no token: the broker re-queues it, as if never dispatched
            self.send_progress(
                [Delta(request_id, is_finished=True, finish_reason=pb.FINISH_REASON_PREEMPTED)]
            )
            log.info("worker %s request %s handed back: this worker is draining", self.worker_id, request_id)
            return False
        if dispatch.model and dispatch.model != self.loaded.name:
            message = f"this worker serves {self.loaded.name}, not {dispatch.model}"
            self.send_progress([error_delta(request_id, pb.UNKNOWN_MODEL, message)])
            return False
        return True

    def accept_dispatch(self, dispatch: pb.Dispatch) -> None:
        """Check what costs nothing to check, then queue the prompt for tokenizing."""
        if not self.is_new_dispatch_for_this_model(dispatch):
            return
        problem = dispatch_checks.check_generate_dispatch(
            dispatch, self.loaded.max_model_len, model_vocab_size(self.loaded.model)
        )
        if problem is not None:
            log.warning(
                "worker %s request %s refused: %s", self.worker_id, dispatch.request_id, problem.error_message
            )
            self.send_progress([problem])
            return
        self.tokenize_queue.add(dispatch)

    def tokenize_dispatched(self) -> None:
        for dispatch in self.tokenize_queue.take_turn():
            self.queue_tokenized(dispatch)

    def queue_tokenized(self, dispatch: pb.Dispatch) -> None:
        request_id = dispatch.request_id
        try:
            prompt_token_ids = self.tokenizer.encode(dispatch.prompt)
        except Exception as exc:  # a tokenizer bug must cost one request, not the worker
            log.exception("worker %s request %s: tokenizer failed", self.worker_id, request_id)
            self.send_progress([error_delta(request_id, pb.WORKER_FAILED, f"tokenizer failed: {exc}")])
            return
        request = engine_request(dispatch, prompt_token_ids)
        num_tokens = len(prompt_token_ids) + request.sampling.max_tokens
        problem = check_request(request, self.loaded.max_model_len) or self.check_fits(request, num_tokens)
        if problem is not None:
            log.warning("worker %s request %s refused: %s", self.worker_id, request_id, problem.error_message)
            self.send_progress([problem])
            return
        self.gate.add(request, num_tokens, len(prompt_token_ids) + len(request.generated_token_ids))
        self.tenant_by_request[request_id] = dispatch.tenant
        self.progress_hold.watch(dispatch)
        # debug, as the start: this thread shares the GIL with the engine's, so it logs one
        # info line a request (its end), not three
        log.debug(
            "worker %s request %s queued: %d prompt tokens, %d resumed, max_tokens %d",
            self.worker_id,
            request_id,
            len(prompt_token_ids),
            len(request.generated_token_ids),
            request.sampling.max_tokens,
        )

    def check_fits(self, request: EngineRequest, num_tokens: int) -> Delta | None:
        if self.gate.can_ever_fit(num_tokens):
            return None
        return error_delta(
            request.request_id,
            pb.TOO_LARGE,
            f"the request needs {self.gate.blocks_for(num_tokens)} KV blocks but "
            f"this worker has only {self.gate.kv_blocks_total}",
            prompt_tokens=len(request.prompt_token_ids),
        )

    def admit_requests(self) -> None:
        """Start waiting requests in order: blocks from the kernel, or locally while it is down.
        Several may ask at once (the gate says which); each starts on its grant."""
        while (allocation := self.gate.next_allocation()) is not None:
            request_id = allocation.request.request_id
            if self.kernel.is_online:
                num_blocks = self.gate.start_allocation(request_id, time.monotonic())
                self.kernel.queue_change(
                    pb.KvAllocate(
                        worker_id=self.worker_id,
                        request_id=request_id,
                        num_blocks=num_blocks,
                        tenant=self.tenant_by_request.get(request_id, ""),
                    )
                )
                continue
            if not self.gate.can_allocate_locally(allocation):
                return
            self.start_request(request_id)

    def start_granted(self, request_id: str) -> None:
        if self.gate.is_asking(request_id):
            self.start_request(request_id)
        # else: the answer to a KvFree, or to an allocation given up on; nothing to do

    def wait_for_blocks(self, request_id: str) -> None:
        """The kernel refused an allocation in flight (no request id: the oldest one)."""
        if not request_id:
            oldest = self.gate.in_flight()
            request_id = oldest.request.request_id if oldest is not None else ""
        if self.gate.is_asking(request_id):
            log.info("worker %s request %s waits for KV blocks", self.worker_id, request_id)
            self.gate.refuse(request_id)

    def start_request(self, request_id: str) -> None:
        self.engine_thread.submit(self.gate.grant(request_id))
        log.debug("worker %s request %s started", self.worker_id, request_id)

    def finish_request(self, delta: Delta) -> None:
        self.release_blocks(delta.request_id)
        reason = pb.FinishReason.Name(delta.finish_reason)
        if delta.error_code:
            log.warning(
                "worker %s request %s failed: %s", self.worker_id, delta.request_id, delta.error_message
            )
        else:
            log.info("worker %s request %s finished: %s", self.worker_id, delta.request_id, reason)

    def cancel_request(self, cancel: pb.Cancel) -> None:
        request_id = cancel.request_id
        if not dispatch_checks.is_valid_request_id(request_id):
            self.peer_errors.refused("cancel", "the broker", "request_id empty or too long")
            return
        self.tokenize_queue.discard(request_id)
        if request_id in self.gate.running:
            self.engine_thread.cancel(request_id)
        self.release_blocks(request_id)
        # answered even when unknown here, so a broker never waits on a request
        # this worker lost; a broker ignores deltas of requests it already finished
        self.send_progress([cancelled_delta(request_id)])
        log.info("worker %s request %s cancelled", self.worker_id, request_id)

    def preempt_request(self, preempt: pb.Preempt) -> None:
        """A running request stops at the engine's next step boundary: its final PREEMPTED
        delta follows every token it made, and frees its blocks (finish_request)."""
        request_id = preempt.request_id
        if not dispatch_checks.is_valid_request_id(request_id):
            self.peer_errors.refused("preempt", "the broker", "request_id empty or too long")
            return
        self.tokenize_queue.discard(request_id)
        if request_id in self.gate.running:
            self.engine_thread.preempt(request_id)
            self.gate.mark_leaving(request_id)
            log.info("worker %s request %s preempting", self.worker_id, request_id)
            return
        # not started here (or unknown): answered at once, as a cancel is
        self.release_blocks(request_id)
        self.send_progress([Delta(request_id, is_finished=True, finish_reason=pb.FINISH_REASON_PREEMPTED)])
        log.info("worker %s request %s preempted before it started", self.worker_id, request_id)

    def release_blocks(self, request_id: str) -> None:
        self.tenant_by_request.pop(request_id, None)
        if self.gate.release(request_id) and self.kernel.is_online:
            self.kernel.queue_change(pb.KvFree(worker_id=self.worker_id, request_id=request_id))

    def drop_all_requests(self, why: str) -> None:
        self.tokenize_queue.clear()  # the broker re-queues them too
        request_ids = self.gate.clear()
        self.tenant_by_request.clear()
        self.progress_hold.clear()
        if not request_ids:
            return
        self.epoch += 1
        self.engine_thread.drop_all(self.epoch)
        if self.kernel.is_online:
            for request_id in request_ids:
                self.kernel.queue_change(pb.KvFree(worker_id=self.worker_id, request_id=request_id))
        log.warning("worker %s dropped requests %s: %s", self.worker_id, ", ".join(request_ids), why)

    def adopt_kernel_geometry(self, reply: pb.KernelReply) -> None:
        self.kernel.mark_registered(reply)
        too_large = self.gate.configure(reply.block_size or DEFAULT_BLOCK_SIZE, reply.kv_blocks_total)
        self.engine_thread.set_kv_budget(reply.kv_blocks_total, reply.block_size or DEFAULT_BLOCK_SIZE)
        for request in too_large:
            self.send_progress(
                [self.check_fits(request, len(request.prompt_token_ids) + request.sampling.max_tokens)]
            )
        self.is_prefix_report_due = bool(self.prefix_hashes)  # a new kernel has no index of them
        # (re-)registering freed every block the kernel had for this worker:
        # restate what the running requests hold (the answers need no action)
        for request_id, num_blocks in self.gate.running.items():
            self.kernel.queue_change(
                pb.KvAllocate(
                    worker_id=self.worker_id,
                    request_id=request_id,
                    num_blocks=num_blocks,
                    tenant=self.tenant_by_request.get(request_id, ""),
                )
            )

    # ---------------------------------------------------------------- timers

    def purge_expired(self) -> None:
        now_s = time.monotonic()
        if self.broker.is_silent(now_s):
            log.warning(
                "worker %s: broker silent for %d intervals; reconnecting", self.worker_id, HEARTBEAT_LIVENESS
            )
            self.drop_all_requests("the broker went silent and re-queues them")
            if self.drain is None:  # a draining one has nothing left to run: it leaves
                self.broker.connect(self.broker_registration())
        allocation = self.gate.in_flight()
        if allocation is not None and now_s - allocation.allocate_sent_at_s > self.interval_s:
            self.kernel.go_offline(f"KvAllocate for request {allocation.request.request_id} unanswered")
            self.gate.abandon_allocations()
        if self.kernel.is_register_expired(now_s):
            self.kernel.go_offline("KernelRegister unanswered")

    def send_heartbeats(self) -> None:
        now_s = time.monotonic()
        if now_s < self.next_heartbeat_at_s:
            return
        self.next_heartbeat_at_s = now_s + self.interval_s
        num_running = self.gate.num_running
        if self.broker.is_quiet(now_s):
            self.broker.send(
                pb.Heartbeat(
                    worker_id=self.worker_id,
                    num_running=num_running,
                    kv_blocks_used=self.gate.num_used_blocks,
                )
            )
        if self.kernel.is_online:
            self.kernel.send(pb.KernelHeartbeat(worker_id=self.worker_id, num_running=num_running))
        else:
            self.kernel.register(now_s, fresh_socket=True)
        self.gate.unblock()  # retry a refused allocation at least once an interval

    def report_prefixes(self) -> None:
        """Tell the kernel which prompt prefixes this worker's KV cache holds (for
        prefix-aware placement), when that changed: the engine thread makes a report at
        most every PREFIX_REPORT_INTERVAL_S."""
        if not self.is_prefix_report_due or not self.kernel.is_online:
            return
        self.kernel.send(pb.KvPrefixReport(worker_id=self.worker_id, block_hashes=self.prefix_hashes))
        self.is_prefix_report_due = False

    # ---------------------------------------------------------------- sending

    def send_progress(self, deltas: list[Delta]) -> None:
        sent = self.progress_hold.take(deltas, time.monotonic())
        if sent:
            self.broker.send(
                pb.StepProgress(worker_id=self.worker_id, deltas=[request_delta(d) for d in sent])
            )

    def kernel_registration(self) -> pb.KernelRegister:
        return pb.KernelRegister(
            worker_id=self.worker_id,
            models=[self.loaded.name],
            device=str(self.loaded.device),
            memory_bytes_total=self.loaded.memory_bytes_total,
            memory_bytes_used=self.loaded.memory_bytes_used,
            kv_capacity_tokens=self.loaded.kv_capacity_tokens,
            max_num_seqs=self.config.max_num_seqs,
        )

    def is_registered(self) -> bool:
        """The broker answered since this worker last (re)connected, and not long ago."""
        return self.broker.is_heard and not self.broker.is_silent(time.monotonic())

    def read_gauges(self) -> list[WorkerGauges]:
        """What /metrics shows, read from the metrics thread. The prefix cache's hit
        count is an int the engine thread bumps; an engine without one has none."""
        prefix_caching = getattr(self.engine_thread.engine, "prefix_caching", None)
        return [
            WorkerGauges(
                self.worker_id,
                self.gate.num_running,
                self.gate.num_used_blocks,
                self.is_registered(),
                getattr(prefix_caching, "num_hit_tokens", None),
            )
        ]

    def readiness(self) -> tuple[bool, str]:
        # the model is loaded: this object exists only once it is
        return (self.is_registered(), "not registered with the broker (yet)")

    def close(self) -> None:
        """Say goodbye to the broker and the kernel, stop the engine thread, close the sockets."""
        if self.metrics is not None:
            self.metrics.stop()
        reason = "worker shutting down" if self.drain is None else self.drain.goodbye(self.num_live_requests)
        goodbye = pb.Disconnect(worker_id=self.worker_id, reason=reason)
        for link in (self.broker, self.kernel):
            if link.socket is not None:
                link.send(goodbye)
        self.engine_thread.stop(ENGINE_STOP_TIMEOUT_S)
        self.broker.close()
        self.kernel.close()
        self.pipe.close()
        if not self.engine_thread.thread.is_alive():
            self.context.term()  # waits up to LINGER for the Disconnects to leave
        log.info("worker %s stopped", self.worker_id)
