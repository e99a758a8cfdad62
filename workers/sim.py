"""Simulated workers: the real worker protocol, a latency model instead of a model.

`llmos worker --engine sim --profile FILE [--sim-workers N]` runs N workers in
one process (no torch). Each registers with the kernel and the broker, sends
heartbeats, takes dispatches, cancels and preemptions, accounts its KV blocks
at the kernel, and every engine step sends ONE StepProgress for all of its
requests — but a step costs the time the profile predicts for its batch
instead of a forward pass, and its tokens go out when that time is up (a
newcomer's first token takes a whole step, as after a real prefill). It lets
one machine put hundreds of workers behind the real broker, scheduler and
kernel processes.

The profile is a linear model of one engine step, fitted from the real engine
(`llmos bench engine --write-profile FILE`):

    step_s = base_ms + per_seq_ms * running + per_prefill_token_ms * prefill tokens
             + per_context_token_us * tokens in the running contexts

Like the real engine's prefix cache, a simulated worker keeps what a request it
was told to preempt had computed: when the request is dispatched to it again,
its prefill costs only the tokens made since. It reports those requests'
prompt block hashes to the kernel, so the scheduler's prefix-aware placement
sends them back. (Prompts that other requests share are not simulated.)

Like the real engine, which takes commands between steps, a worker told to
preempt a request in the step in flight lets that step end first: the request
keeps the step's token, then leaves.

Like a real worker, a simulated one drains (`workers.drain`) when the broker
tells it to, and all of them do on SIGTERM: each finishes what it runs, hands
back a dispatch that crossed its Drain, then says Disconnect; the process exits
once every one has left.

A simulated answer runs to its `max_tokens` (finish reason `length`), unless
its prompt carries the test and benchmark hook SIM_ANSWER_TOKENS_HOOK:
`sim-answer-tokens=N` anywhere in the prompt ends the answer after N tokens
with `eos`, as a real model decides from its prompt when to stop. Only this
engine reads the hook (to a real model it is plain prompt text); tests and
benchmarks (`llmos_bench.workload`) use it to give requests a `max_tokens`
looser than their answers. It is not part of the protocol.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import re
import selectors
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import zmq

from llmos.observability import start_metrics
from llmos.prefix import prompt_block_hashes
from llmos.security.service_keys import open_service_keys
from llmos.service import run_service
from llmos.service_metrics import WorkerCollector, WorkerGauges
from llmos.wire import Handlers, WireError, pack, pb
from llmos.wire.constants import DEFAULT_BLOCK_SIZE, HEARTBEAT_LIVENESS
from llmos.wire.kv_batch import KvOutbox, batch_answers
from llmos.wire.liveness import is_heartbeat_due
from llmos.wire.sockets import connect_dealer
from workers.config import WorkerConfig
from workers.drain import Drain
from workers.progress_hold import ProgressHold

log = logging.getLogger(__name__)

SIM_TOKEN_ID = 42
SIM_TOKEN_TEXT = " tok"
CHARS_PER_TOKEN = 4  # the broker sends text; a simulated tokenizer only needs a length
CACHE_FRACTION = 0.5  # preempted requests' tokens a worker keeps, as a share of its KV capacity
MAX_STEP_LATENESS_S = 0.003  # a step end noticed this late still starts the next one on time
# test and benchmark hook, read by this engine only (see the module doc)
SIM_ANSWER_TOKENS_HOOK = "sim-answer-tokens="
_SIM_ANSWER_TOKENS = re.compile(re.escape(SIM_ANSWER_TOKENS_HOOK) + r"(\d+)")


def sim_answer_tokens_hook(num_tokens: int) -> str:
    """Prompt text that ends a simulated answer after `num_tokens` tokens (with `eos`)."""
    return f"{SIM_ANSWER_TOKENS_HOOK}{num_tokens}"


def stop_at_tokens(prompt: str, max_tokens: int) -> int:
    """How many tokens a simulated answer to `prompt` makes: the hook's count, at most
    `max_tokens`; `max_tokens` without the hook."""
    hook = _SIM_ANSWER_TOKENS.search(prompt)
    return min(max_tokens, max(1, int(hook.group(1)))) if hook else max_tokens


@dataclass(frozen=True)
class LatencyProfile:
    base_ms: float = 4.0
    per_seq_ms: float = 0.25
    per_prefill_token_ms: float = 0.02
    per_context_token_us: float = 0.05
    source: str = "built-in default"

    @classmethod
    def load(cls, path: str) -> LatencyProfile:
        if not path:
            return cls()
        fields = json.loads(Path(path).read_text())
        return cls(**{k: v for k, v in fields.items() if k in cls.__dataclass_fields__})

    @classmethod
    def fit(
        cls, tpot_s_by_concurrency: dict[int, float], ttft_s_alone: float, prompt_len: int, source: str
    ) -> LatencyProfile:
        """Least squares of step time against batch size (decode steps), plus the
        prefill cost per token from a lone request's time to first token. The
        context term is folded into per_seq_ms."""
        points = sorted(tpot_s_by_concurrency.items())
        mean_c = sum(c for c, _ in points) / len(points)
        mean_ms = sum(t * 1e3 for _, t in points) / len(points)
        spread = sum((c - mean_c) ** 2 for c, _ in points)
        per_seq_ms = sum((c - mean_c) * (t * 1e3 - mean_ms) for c, t in points) / spread if spread else 0.0
        per_seq_ms = max(0.0, per_seq_ms)
        base_ms = max(0.0, mean_ms - per_seq_ms * mean_c)
        prefill_ms = ttft_s_alone * 1e3 - base_ms - per_seq_ms
        return cls(
            base_ms=round(base_ms, 4),
            per_seq_ms=round(per_seq_ms, 4),
            per_prefill_token_ms=round(max(0.0, prefill_ms) / max(1, prompt_len), 6),
            per_context_token_us=0.0,
            source=source,
        )

    def save(self, path: str) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def step_s(self, num_seqs: int, num_prefill_tokens: int, num_context_tokens: int) -> float:
        return (
            self.base_ms + self.per_seq_ms * num_seqs + self.per_prefill_token_ms * num_prefill_tokens
        ) / 1e3 + self.per_context_token_us * num_context_tokens / 1e6


def step_start_s(due_s: float, now_s: float) -> float:
    """When a worker's next step starts, its last one having ended at `due_s` and been
    noticed at `now_s`: at `due_s`, so steps last what the profile says although the
    loop wakes up a little late (poll counts whole milliseconds); at `now_s` when the
    loop is further behind than that (a busy machine), rather than crowd steps together."""
    return due_s if now_s - due_s <= MAX_STEP_LATENESS_S else now_s


def final_delta(request_id: str, finish_reason: int) -> pb.RequestDelta:
    """The last delta of a request that ends without a new token (cancelled, preempted,
    resumed with nothing left to make)."""
    return pb.RequestDelta(request_id=request_id, is_finished=True, finish_reason=finish_reason)


@dataclass
class SimRequest:
    request_id: str
    prompt_tokens: int
    max_tokens: int
    num_generated: int  # resumed requests arrive with tokens already sent
    num_blocks: int
    prefix_hashes: tuple[int, ...] = ()  # of its prompt text, as the broker computes them
    stop_at: int = 0  # tokens its answer makes in all (0: max_tokens)
    num_cached_tokens: int = 0  # kept from before a preemption: its prefill skips them
    is_prefilled: bool = False  # a step has paid for its prompt
    is_reported: bool = False  # its first delta (with prompt_tokens) went out
    is_preempting: bool = False  # told to preempt while in the step in flight: leaves at its end

    @property
    def answer_tokens(self) -> int:
        """The tokens it makes in all before it finishes."""
        return self.stop_at or self.max_tokens

    @property
    def finish_reason(self) -> int:
        """`length` at its max_tokens, `eos` where its answer ends before."""
        return pb.FINISH_REASON_LENGTH if self.answer_tokens >= self.max_tokens else pb.FINISH_REASON_EOS


@dataclass
class SimWorker:
    worker_id: str
    socket: zmq.Socket
    max_num_seqs: int
    kv_blocks_total: int
    block_size: int = DEFAULT_BLOCK_SIZE
    running: dict[str, SimRequest] = field(default_factory=dict)
    waiting: list[SimRequest] = field(default_factory=list)
    in_step: list[SimRequest] = field(default_factory=list)  # what the step in flight runs
    pending_deltas: list[pb.RequestDelta] = field(default_factory=list)
    num_blocks_used: int = 0
    next_step_s: float = math.inf
    broker_seen_s: float = 0.0
    broker_sent_s: float = 0.0  # its last frame to the broker: a heartbeat is due only once it is quiet
    hold: ProgressHold[pb.RequestDelta] = field(default_factory=ProgressHold)  # final-only requests' tokens
    is_heard: bool = False  # the broker sent something since the last registration
    # preempted requests' computed tokens, least recently kept first: request id ->
    # (tokens, prompt block hashes); bounded by CACHE_FRACTION of the KV capacity
    cached: OrderedDict[str, tuple[int, tuple[int, ...]]] = field(default_factory=OrderedDict)
    num_kept_tokens: int = 0  # the tokens `cached` holds, in all
    is_cache_report_due: bool = False
    drain: Drain | None = None
    has_left: bool = False  # drained and said Disconnect: its socket is closed

    def registration(self, heartbeat_interval_ms: int) -> pb.WorkerRegister:
        return pb.WorkerRegister(
            worker_id=self.worker_id,
            models=[],
            device="sim",
            max_num_seqs=self.max_num_seqs,
            kv_blocks_total=self.kv_blocks_total,
            block_size=self.block_size,
            heartbeat_interval_ms=heartbeat_interval_ms,
        )

    def admit(self) -> list[SimRequest]:
        """Start waiting requests while slots and blocks allow; the ones started."""
        started = []
        while (
            self.waiting
            and len(self.running) < self.max_num_seqs
            and self.num_blocks_used + self.waiting[0].num_blocks <= self.kv_blocks_total
        ):
            request = self.waiting.pop(0)
            self.running[request.request_id] = request
            self.num_blocks_used += request.num_blocks
            started.append(request)
        return started

    def drop(self, request_id: str) -> SimRequest | None:
        request = self.running.pop(request_id, None)
        if request is not None:
            self.num_blocks_used -= request.num_blocks
            return request
        for index, waiting in enumerate(self.waiting):
            if waiting.request_id == request_id:
                return self.waiting.pop(index)
        return None

    def begin_step(self, profile: LatencyProfile) -> float:
        """Start one engine step over every running request; its seconds.

        Its tokens appear when it ends (`end_step`), as a real engine's do after
        the forward pass: a newcomer's first token costs a whole step, its prefill
        included. Requests admitted while it runs join the next step."""
        self.in_step = list(self.running.values())
        prefill = sum(
            r.prompt_tokens + r.num_generated - r.num_cached_tokens
            for r in self.in_step
            if not r.is_prefilled
        )
        context = sum(r.prompt_tokens + r.num_generated for r in self.in_step)
        for request in self.in_step:
            request.is_prefilled = True
        return profile.step_s(len(self.in_step), prefill, context)

    def keep_computed(self, request: SimRequest) -> None:
        """A preempted request's computed tokens stay here (least recently kept go first)."""
        num_tokens = (
            request.prompt_tokens + request.num_generated - 1
            if request.is_prefilled
            else request.num_cached_tokens
        )
        if num_tokens <= 0:
            return
        self.forget_computed(request.request_id)
        self.cached[request.request_id] = (num_tokens, request.prefix_hashes)
        self.num_kept_tokens += num_tokens
        capacity = CACHE_FRACTION * self.kv_blocks_total * self.block_size
        while self.num_kept_tokens > capacity:
            self.forget_computed(next(iter(self.cached)))
        self.is_cache_report_due = True

    def forget_computed(self, request_id: str) -> tuple[int, tuple[int, ...]] | None:
        """Drop what this worker kept of a request; what it was (None: nothing)."""
        kept = self.cached.pop(request_id, None)
        if kept is not None:
            self.num_kept_tokens -= kept[0]
        return kept

    def take_computed(self, request: SimRequest) -> None:
        """A request dispatched here again starts from what this worker kept of it."""
        kept = self.forget_computed(request.request_id)
        if kept is not None:
            request.num_cached_tokens = min(kept[0], request.prompt_tokens + request.num_generated - 1)
            self.is_cache_report_due = True

    def cached_prefix_hashes(self) -> list[int]:
        return list(dict.fromkeys(h for _, hashes in self.cached.values() for h in hashes))

    def end_step(self) -> list[SimRequest]:
        """End the step in flight: a token for each of its requests still running
        (one cancelled meanwhile gets none); the ones told to preempt while it ran
        leave after theirs, with a PREEMPTED delta. The requests that left (finished
        or preempted)."""
        finished, preempted = [], []
        for request in self.in_step:
            if self.running.get(request.request_id) is not request:
                continue  # cancelled while the step ran
            delta = pb.RequestDelta(
                request_id=request.request_id, token_ids=[SIM_TOKEN_ID], text=SIM_TOKEN_TEXT
            )
            if not request.is_reported:
                delta.prompt_tokens = request.prompt_tokens
                request.is_reported = True
            request.num_generated += 1
            if request.num_generated >= request.answer_tokens:
                delta.is_finished = True
                delta.finish_reason = request.finish_reason
                finished.append(request)
            elif request.is_preempting:
                preempted.append(request)
            self.pending_deltas.append(delta)
        self.in_step = []
        for request in [*finished, *preempted]:
            self.drop(request.request_id)
        for request in preempted:
            self.keep_computed(request)
            self.pending_deltas.append(final_delta(request.request_id, pb.FINISH_REASON_PREEMPTED))
        return [*finished, *preempted]

    def defer_preempt(self, request_id: str) -> bool:
        """A request in the step in flight leaves at the step's end, with its token
        (True); any other can leave now (False)."""
        request = self.running.get(request_id)
        if request is None or request not in self.in_step:
            return False
        request.is_preempting = True
        return True


class SimPool:
    """N simulated workers behind one loop; one broker DEALER each, one shared kernel DEALER."""

    def __init__(self, config: WorkerConfig, profile: LatencyProfile) -> None:
        self.config = config
        self.profile = profile
        self.interval_s = config.heartbeat_interval_ms / 1000
        self.context = zmq.Context()
        keys = open_service_keys("worker", config.insecure, config.keys_dir)
        self.kernel = connect_dealer(self.context, config.kernel_address, curve=keys.client_of("kernel"))
        # epoll on each socket's ZMQ_FD: a wait costs what is ready, not what is open (zmq_poll
        # looks at every socket on every turn). The FD only says "look again", and any send
        # may take that news, so the loop reads every socket it sent on too.
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.kernel.FD, selectors.EVENT_READ, None)
        self.unchecked: set[str] = set()  # ids of the workers whose socket to read before waiting
        self.is_kernel_unchecked = False  # sent on since it was last read
        self.kv_outbox = KvOutbox()  # the workers' allocations and frees of this turn
        self.num_kernel_registrations_unanswered = 0  # the kernel answers each on the one socket
        self.kernel_registered_again_at_s = -math.inf
        base_id = config.worker_id or "sim"
        count = max(1, config.sim_workers)
        kv_blocks = max(1, config.kv_cache_tokens // DEFAULT_BLOCK_SIZE) if config.kv_cache_tokens else 4096
        self.workers: dict[zmq.Socket, SimWorker] = {}
        for index in range(count):
            worker_id = base_id if count == 1 else f"{base_id}-{index}"
            socket = connect_dealer(
                self.context, config.broker_worker_address, identity=worker_id, curve=keys.client_of("broker")
            )
            self.workers[socket] = SimWorker(worker_id, socket, config.max_num_seqs, kv_blocks)
            self.selector.register(socket.FD, selectors.EVENT_READ, self.workers[socket])
        self.model_name = config.model_name or "sim"
        self.steps: list[tuple[float, str]] = []  # heap of (next step time, worker id)
        self.by_id = {w.worker_id: w for w in self.workers.values()}
        self.next_heartbeat_s = 0.0
        self.drain_requested = threading.Event()  # set by the first SIGTERM (llmos.service)
        self.is_draining_all = False  # the drain asked for has begun on every worker
        self.draining: dict[str, SimWorker] = {}  # draining and not gone yet, by id
        self.num_left = 0
        # one table for every worker's broker socket: each handler also takes the worker
        self.from_broker: Handlers[None] = Handlers(
            "a simulated worker's broker socket",
            {
                pb.Dispatch: self.accept,
                pb.Cancel: self.cancel,
                pb.Preempt: self.preempt,
                pb.Heartbeat: self.note_broker_message,
                pb.Error: self.note_broker_message,
                pb.Disconnect: self.register_again,
                pb.Drain: self.accept_drain,
            },
        )
        self.from_kernel: Handlers[None] = Handlers(
            "the simulated workers' kernel socket",
            {
                pb.KernelReply: self.note_kernel_reply,
                pb.Error: self.accept_kernel_error,
                pb.KvBatchReply: self.note_kv_batch_reply,
            },
        )
        self.metrics = start_metrics(
            config.metrics_host, config.metrics_port, WorkerCollector(self.read_gauges), self.readiness
        )

    def read_gauges(self) -> list[WorkerGauges]:
        """What /metrics shows, one row a simulated worker, read from the metrics thread."""
        return [
            WorkerGauges(w.worker_id, len(w.running), w.num_blocks_used, w.is_heard and not w.has_left)
            for w in list(self.workers.values())
        ]

    def readiness(self) -> tuple[bool, str]:
        """Ready while every worker still here has heard from the broker since it registered."""
        waiting = [w.worker_id for w in list(self.workers.values()) if not w.has_left and not w.is_heard]
        return (not waiting, f"not registered with the broker (yet): {', '.join(waiting[:10])}")

    def register_all(self) -> None:
        for worker in self.workers.values():
            self.register(worker)

    def register_with_kernel(self, worker: SimWorker) -> None:
        self.num_kernel_registrations_unanswered += 1
        self.send_to_kernel(
            pack(
                pb.KernelRegister(
                    worker_id=worker.worker_id,
                    models=[self.model_name],
                    device="sim",
                    kv_capacity_tokens=worker.kv_blocks_total * worker.block_size,
                    max_num_seqs=worker.max_num_seqs,
                )
            )
        )

    def register(self, worker: SimWorker) -> None:
        self.register_with_kernel(worker)
        registration = worker.registration(self.config.heartbeat_interval_ms)
        registration.models.append(self.model_name)
        self.send_to_broker(worker, pack(registration))
        worker.broker_seen_s = time.monotonic()
        worker.is_heard = False

    def serve(self, stopping: threading.Event) -> None:
        """Register every worker, then poll -> route -> run due steps -> heartbeats until
        `stopping` is set or every worker has drained and left."""
        self.register_all()
        log.info(
            "%d simulated workers serving '%s' (profile: %s)",
            len(self.workers),
            self.model_name,
            self.profile.source,
        )
        while not stopping.is_set() and not self.have_all_left():
            now_s = time.monotonic()
            wake_s = min(self.next_heartbeat_s, self.steps[0][0] if self.steps else math.inf)
            # none when a step is due (a zero-time step ends at once) or a socket is unread
            is_unchecked = self.unchecked or self.is_kernel_unchecked
            timeout_s = 0.0 if is_unchecked else max(0.0, wake_s - now_s)
            for key, _ in self.selector.select(timeout_s):
                if key.data is not None:
                    self.unchecked.add(key.data.worker_id)
            self.drain_kernel()  # one socket, and nearly every turn sends on it
            while self.unchecked:
                self.drain_broker(self.by_id[self.unchecked.pop()])
            self.run_due_steps(time.monotonic())
            self.send_heartbeats(time.monotonic())
            self.flush_kv()  # the turn's allocations and frees, every worker's, in one message

    def close(self) -> None:
        """Every worker still here says goodbye to the broker and the kernel; the sockets close."""
        for worker in self.workers.values():
            if not worker.has_left:
                self.say_goodbye(worker, "stopping")
        self.selector.close()
        for socket in [*self.workers, self.kernel]:
            socket.close(linger=100)
        self.context.term()
        if self.metrics is not None:
            self.metrics.stop()

    def say_goodbye(self, worker: SimWorker, reason: str) -> None:
        self.send_to_broker(worker, pack(pb.Disconnect(worker_id=worker.worker_id, reason=reason)))
        self.send_to_kernel(pack(pb.Disconnect(worker_id=worker.worker_id, reason=reason)))

    # ---------------------------------------------------------------- draining

    def have_all_left(self) -> bool:
        """Whether every worker has drained and left; the first stop signal drains them all."""
        if self.drain_requested.is_set() and not self.is_draining_all:
            for worker in self.workers.values():
                self.begin_drain(worker, "SIGTERM")
            self.is_draining_all = True
        now_s = time.monotonic()
        for worker in list(self.draining.values()):
            num_live = len(worker.running) + len(worker.waiting)
            if worker.drain is not None and worker.drain.is_over(num_live, now_s):
                self.leave(worker, worker.drain.goodbye(num_live))
        return self.num_left == len(self.workers)

    def begin_drain(self, worker: SimWorker, reason: str) -> None:
        if worker.drain is not None:
            return
        worker.drain = Drain(reason, time.monotonic() + self.config.drain_timeout_s)
        self.draining[worker.worker_id] = worker
        self.send_to_broker(worker, pack(pb.Drain(reason=reason)))
        log.info(
            "worker %s draining (%s): %d requests to finish",
            worker.worker_id,
            reason,
            len(worker.running) + len(worker.waiting),
        )

    def accept_drain(self, drain: pb.Drain, worker: SimWorker) -> None:
        self.begin_drain(worker, f"the broker: {drain.reason or 'no reason given'}")

    def leave(self, worker: SimWorker, reason: str) -> None:
        """A drained worker (or one whose drain timed out) deregisters and closes its socket."""
        if worker.running or worker.waiting:
            log.warning("worker %s leaves with requests running: %s", worker.worker_id, reason)
        self.forget_all(worker)
        self.say_goodbye(worker, reason)
        self.selector.unregister(worker.socket.FD)
        self.unchecked.discard(worker.worker_id)
        self.draining.pop(worker.worker_id, None)
        worker.has_left = True
        self.num_left += 1
        log.info("worker %s left: %s", worker.worker_id, reason)

    def send_to_broker(self, worker: SimWorker, payload: bytes) -> None:
        worker.socket.send(payload)
        worker.broker_sent_s = time.monotonic()
        self.unchecked.add(worker.worker_id)  # the send may have taken the FD's news of a message in

    def drain_broker(self, worker: SimWorker) -> None:
        if worker.has_left:
            return
        while worker.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            payload = worker.socket.recv()
            worker.broker_seen_s = time.monotonic()  # any frame is a sign of life
            worker.is_heard = True  # a Disconnect registers again, and that clears it
            try:
                self.from_broker.route(payload, worker)
            except WireError as exc:
                log.warning("worker %s refused a frame: %s", worker.worker_id, exc.message)

    def note_broker_message(self, message: pb.Heartbeat | pb.Error, worker: SimWorker) -> None:
        """Nothing to do: the frame was a sign of life (drain_broker counted it)."""

    def register_again(self, disconnect: pb.Disconnect, worker: SimWorker) -> None:
        """The broker forgot the worker: it drops every request (re-queued there) and registers,
        unless it drains (then it has nothing left to run, and leaves)."""
        self.forget_all(worker)
        if worker.drain is None:
            self.register(worker)

    def accept(self, dispatch: pb.Dispatch, worker: SimWorker) -> None:
        if worker.drain is not None:  # handed back: the broker re-queues it (workers.drain)
            self.send_final(worker, final_delta(dispatch.request_id, pb.FINISH_REASON_PREEMPTED))
            return
        prompt_tokens = max(1, len(dispatch.prompt) // CHARS_PER_TOKEN)
        max_tokens = dispatch.sampling.max_tokens
        total = prompt_tokens + max_tokens
        request = SimRequest(
            dispatch.request_id,
            prompt_tokens,
            max_tokens,
            len(dispatch.generated_token_ids),
            math.ceil(total / worker.block_size),
            tuple(prompt_block_hashes(dispatch.prompt)),
            stop_at=stop_at_tokens(dispatch.prompt, max_tokens),
        )
        worker.take_computed(request)
        if request.num_generated >= request.answer_tokens:  # resumed with nothing left to make
            self.send_final(worker, final_delta(request.request_id, request.finish_reason))
            return
        worker.hold.watch(dispatch)
        worker.waiting.append(request)
        self.start_waiting(worker, time.monotonic())

    def start_waiting(self, worker: SimWorker, now_s: float) -> None:
        self.admit_waiting(worker)
        if worker.running and worker.next_step_s == math.inf:
            worker.next_step_s = now_s  # an idle worker starts a step at once
            heapq.heappush(self.steps, (now_s, worker.worker_id))

    def admit_waiting(self, worker: SimWorker) -> None:
        for request in worker.admit():
            self.kv_outbox.add(
                pb.KvAllocate(
                    worker_id=worker.worker_id, request_id=request.request_id, num_blocks=request.num_blocks
                )
            )

    def cancel(self, cancel: pb.Cancel, worker: SimWorker) -> None:
        request = worker.drop(cancel.request_id)
        self.send_stopped(worker, cancel.request_id, request, pb.FINISH_REASON_CANCELLED)

    def preempt(self, preempt: pb.Preempt, worker: SimWorker) -> None:
        """A request in the step in flight leaves at its end; any other leaves now, and
        what it computed stays here for its resume."""
        if worker.defer_preempt(preempt.request_id):
            return
        request = worker.drop(preempt.request_id)
        if request is not None:
            worker.keep_computed(request)
        self.send_stopped(worker, preempt.request_id, request, pb.FINISH_REASON_PREEMPTED)

    def send_stopped(
        self, worker: SimWorker, request_id: str, request: SimRequest | None, finish_reason: int
    ) -> None:
        """Free a request that left before its end at the kernel and tell the broker; its
        slot goes to the next waiting request. Answered even when unknown here."""
        self.kv_outbox.add(pb.KvFree(worker_id=worker.worker_id, request_id=request_id))
        self.send_final(worker, final_delta(request_id, finish_reason))
        if request is not None:
            self.start_waiting(worker, time.monotonic())

    def send_final(self, worker: SimWorker, delta: pb.RequestDelta) -> None:
        self.send_progress(worker, [delta], time.monotonic())

    def send_progress(self, worker: SimWorker, deltas: list[pb.RequestDelta], now_s: float) -> None:
        deltas = worker.hold.take(deltas, now_s)
        if deltas:
            self.send_to_broker(worker, pack(pb.StepProgress(worker_id=worker.worker_id, deltas=deltas)))

    def forget_all(self, worker: SimWorker) -> None:
        for request_id in [*worker.running, *(r.request_id for r in worker.waiting)]:
            worker.drop(request_id)
            self.kv_outbox.add(pb.KvFree(worker_id=worker.worker_id, request_id=request_id))
        worker.hold.clear()

    def run_due_steps(self, now_s: float) -> None:
        """End each due step (its tokens go out in one StepProgress), then start the
        worker's next step with whatever runs now."""
        while self.steps and self.steps[0][0] <= now_s:
            due_s, worker_id = heapq.heappop(self.steps)
            worker = self.by_id[worker_id]
            if worker.has_left:
                continue
            finished = worker.end_step()
            if worker.pending_deltas:
                self.send_progress(worker, worker.pending_deltas, now_s)
                worker.pending_deltas = []
            for request in finished:  # after the broker's answer, as a real worker frees them
                self.kv_outbox.add(pb.KvFree(worker_id=worker.worker_id, request_id=request.request_id))
            self.admit_waiting(worker)
            self.report_cache(worker)
            worker.next_step_s = math.inf
            if worker.running:
                worker.next_step_s = step_start_s(due_s, now_s) + worker.begin_step(self.profile)
                heapq.heappush(self.steps, (worker.next_step_s, worker.worker_id))

    def report_cache(self, worker: SimWorker) -> None:
        """Tell the kernel what the worker keeps, when that changed (at most once a step)."""
        if worker.is_cache_report_due:
            self.send_to_kernel(
                pack(
                    pb.KvPrefixReport(worker_id=worker.worker_id, block_hashes=worker.cached_prefix_hashes())
                )
            )
            worker.is_cache_report_due = False

    def send_to_kernel(self, payload: bytes) -> None:
        """Send after the allocations and frees queued before it, in order."""
        self.flush_kv()
        self.kernel.send(payload)
        self.is_kernel_unchecked = True  # as send_to_broker

    def flush_kv(self) -> None:
        """The allocations and frees queued since the last flush, in one message (`KvBatch`)."""
        for message in self.kv_outbox.take():
            self.kernel.send(pack(message))
            self.is_kernel_unchecked = True

    def drain_kernel(self) -> None:
        self.is_kernel_unchecked = False
        while self.kernel.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                self.from_kernel.route(self.kernel.recv())
            except WireError:
                continue  # the kernel's answers carry nothing a simulated worker needs

    def note_kernel_reply(self, reply: pb.KernelReply) -> None:
        """A registration's answer is counted; else nothing: a simulated worker counts its
        own blocks."""
        if not reply.request_id and self.num_kernel_registrations_unanswered:
            self.num_kernel_registrations_unanswered -= 1

    def note_kv_batch_reply(self, reply: pb.KvBatchReply) -> None:
        """Each answer of a KvBatch as if it came alone."""
        for answer in batch_answers(reply):
            if isinstance(answer, pb.Error):
                self.accept_kernel_error(answer)
            else:
                self.note_kernel_reply(answer)

    def accept_kernel_error(self, error: pb.Error) -> None:
        """A kernel that forgot the workers (restarted) refuses every message sent before
        they register again: one round of registrations answers them all, unless it is
        still unanswered an interval later."""
        if error.code != pb.UNKNOWN_WORKER:
            return
        now_s = time.monotonic()
        if (
            self.num_kernel_registrations_unanswered
            and now_s - self.kernel_registered_again_at_s < self.interval_s
        ):
            return
        log.info("the kernel forgot the simulated workers: registering again")
        self.num_kernel_registrations_unanswered = 0  # a round left unanswered is given up
        self.kernel_registered_again_at_s = now_s
        for worker in self.workers.values():
            self.register_with_kernel(worker)

    def send_heartbeats(self, now_s: float) -> None:
        if now_s < self.next_heartbeat_s:
            return
        self.next_heartbeat_s = now_s + self.interval_s
        for worker in self.workers.values():
            if worker.has_left:
                continue
            if now_s - worker.broker_seen_s > HEARTBEAT_LIVENESS * self.interval_s:
                log.warning("broker silent for worker %s: registering again", worker.worker_id)
                self.register_again(pb.Disconnect(reason="broker silent"), worker)
                continue
            if is_heartbeat_due(worker.broker_sent_s, now_s, self.interval_s):
                self.send_to_broker(
                    worker,
                    pack(
                        pb.Heartbeat(
                            worker_id=worker.worker_id,
                            num_running=len(worker.running),
                            kv_blocks_used=worker.num_blocks_used,
                        )
                    ),
                )
            self.send_to_kernel(
                pack(pb.KernelHeartbeat(worker_id=worker.worker_id, num_running=len(worker.running)))
            )


def run(config: WorkerConfig) -> None:
    run_service("worker-sim", lambda: build_pool(config), config.log_format)


def build_pool(config: WorkerConfig) -> SimPool:
    profile = LatencyProfile.load(config.profile)
    if config.profile:
        profile = LatencyProfile(**{**asdict(profile), "source": config.profile})
    return SimPool(config, profile)
