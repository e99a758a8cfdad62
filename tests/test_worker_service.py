"""The worker process, started as a user starts it, against a fake broker and kernel.

The test binds the ROUTER sockets the worker connects to; each is served by a
thread (`FakePeer`) that records what arrives and answers the routine messages,
so the worker's heartbeats and KV requests are answered even while the test
waits on something else.
"""

from __future__ import annotations

import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import zmq
from google.protobuf.message import Message
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmos.wire import pack, pb, unpack
from llmos.wire.constants import DEFAULT_BLOCK_SIZE
from llmos.wire.sockets import bind_router, send_reply

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
ALL_MESSAGES = frozenset(f.name for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields)
STARTUP_TIMEOUT_S = 90.0  # a fresh process imports torch and transformers on a busy machine
REPLY_TIMEOUT_S = 30.0
KERNEL_BLOCK_SIZE = 8
PROMPT = "The harbour was quiet before dawn."

Answerer = Callable[["FakePeer", str, Message], list[Message]]


class FakePeer:
    """A ROUTER on a free loopback port, owned by its own thread (a socket
    belongs to one thread): it records every message and sends `answer`'s replies."""

    def __init__(self, answer: Answerer) -> None:
        self.answer = answer
        self.is_answering = True
        self.refuse_once: set[str] = set()  # kernel: request ids whose first kv_allocate is refused
        self.has_forgotten_worker = False  # kernel: as if restarted, UNKNOWN_WORKER until a registration
        self.inbox: queue.Queue[tuple[bytes, str, Message]] = queue.Queue()
        self.outbox: queue.Queue[tuple[bytes, bytes]] = queue.Queue()
        self.context = zmq.Context()
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.address = ""
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> FakePeer:
        self.thread.start()
        assert self.ready.wait(10), "fake peer did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.context.term()

    def run(self) -> None:
        router = bind_router(self.context, "tcp://127.0.0.1:*")
        self.address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.ready.set()
        try:
            while not self.stopping.is_set():
                if router.poll(20):
                    identity, payload = router.recv_multipart()
                    name, message = unpack(payload, ALL_MESSAGES)
                    if name == "kv_batch":
                        replies = [self.answer_batch(identity, message)]
                    else:
                        self.inbox.put((identity, name, message))
                        replies = self.answer(self, name, message)
                    if self.is_answering:
                        for reply in replies:
                            # a peer gone (a drained worker closes after its last message) is dropped
                            send_reply(router, identity, False, pack(reply))
                while not self.outbox.empty():
                    identity, payload = self.outbox.get()
                    send_reply(router, identity, False, payload)
        finally:
            router.close(linger=0)

    def answer_batch(self, identity: bytes, batch: pb.KvBatch) -> pb.KvBatchReply:
        """A kernel's answer to a kv_batch: each change recorded and answered as if alone."""
        reply = pb.KvBatchReply()
        for change in batch.changes:
            name = f"kv_{change.WhichOneof('change')}"
            message = getattr(change, change.WhichOneof("change"))
            self.inbox.put((identity, name, message))
            (answer,) = self.answer(self, name, message)
            result = reply.results.add()
            (result.error if isinstance(answer, pb.Error) else result.reply).CopyFrom(answer)
        return reply

    def send(self, identity: bytes, message: Message | bytes) -> None:
        self.outbox.put((identity, message if isinstance(message, bytes) else pack(message)))

    def expect(self, name: str, timeout_s: float = REPLY_TIMEOUT_S) -> tuple[bytes, Message]:
        """The next `name` message (others before it are passed over)."""
        try:
            while True:
                identity, got, message = self.inbox.get(timeout=timeout_s)
                if got == name:
                    return identity, message
        except queue.Empty:
            raise AssertionError(f"no {name} within {timeout_s} s") from None


def answer_as_broker(peer: FakePeer, name: str, message: Message) -> list[Message]:
    return [pb.Heartbeat()] if name == "heartbeat" else []


def answer_as_kernel(peer: FakePeer, name: str, message: Message) -> list[Message]:
    if peer.has_forgotten_worker and name != "kernel_register":
        request_id = getattr(message, "request_id", "")
        return [pb.Error(code=pb.UNKNOWN_WORKER, message="no such worker", request_id=request_id)]
    if name == "kernel_register":
        peer.has_forgotten_worker = False
        total = message.kv_capacity_tokens // KERNEL_BLOCK_SIZE
        return [pb.KernelReply(block_size=KERNEL_BLOCK_SIZE, kv_blocks_total=total, num_free_blocks=total)]
    if name == "kv_allocate" and message.request_id in peer.refuse_once:
        peer.refuse_once.discard(message.request_id)
        return [pb.Error(code=pb.NOT_ENOUGH_BLOCKS, message="no blocks now", request_id=message.request_id)]
    if name == "kv_allocate":
        return [
            pb.KernelReply(
                request_id=message.request_id,
                block_ids=range(message.num_blocks),
                block_size=KERNEL_BLOCK_SIZE,
            )
        ]
    if name == "kv_free":
        return [pb.KernelReply(request_id=message.request_id, block_size=KERNEL_BLOCK_SIZE)]
    return []


@dataclass
class Answer:
    deltas: list[pb.RequestDelta] = field(default_factory=list)

    @property
    def token_ids(self) -> list[int]:
        return [t for d in self.deltas for t in d.token_ids]

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)

    @property
    def final(self) -> pb.RequestDelta:
        return self.deltas[-1]


def collect_answers(
    broker: FakePeer, request_ids: set[str], seen: tuple[pb.StepProgress, ...] = ()
) -> dict[str, Answer]:
    """Every request's deltas, from the progress already `seen` on until each finished."""
    answers = {request_id: Answer() for request_id in request_ids}
    unfinished = set(request_ids)
    pending = list(seen)
    while unfinished:
        progress = pending.pop(0) if pending else broker.expect("progress")[1]
        assert progress.worker_id
        for delta in progress.deltas:
            answers[delta.request_id].deltas.append(delta)
            if delta.is_finished:
                unfinished.discard(delta.request_id)
    return answers


def unused_tcp_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


@contextmanager
def running_worker(
    model_dir: Path,
    broker_address: str,
    kernel_address: str,
    heartbeat_interval_ms: int,
    log_dir: Path,
    *extra: str,
) -> Iterator[subprocess.Popen]:
    command = [
        sys.executable,
        "-m",
        "workers",
        "--broker-worker-address",
        broker_address,
        "--kernel-address",
        kernel_address,
        "--model",
        str(model_dir),
        "--threads",
        "1",
        "--heartbeat-interval-ms",
        str(heartbeat_interval_ms),
        *extra,
    ]
    env = {**os.environ, "LLMOS_HOME": str(log_dir / "home")}
    with open(log_dir / "worker.log", "ab") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@contextmanager
def registered_worker(model_dir: Path, log_dir: Path) -> Iterator[tuple[FakePeer, FakePeer, bytes]]:
    """A worker with a 4,096-token KV cache and 1 s heartbeats, registered with a fake
    broker and kernel: (broker, kernel, the worker's identity at the broker)."""
    with (
        FakePeer(answer_as_broker) as broker,
        FakePeer(answer_as_kernel) as kernel,
        running_worker(model_dir, broker.address, kernel.address, 1000, log_dir, "--kv-cache-tokens", "4096"),
    ):
        identity, _ = broker.expect("worker_register", STARTUP_TIMEOUT_S)
        yield broker, kernel, identity


class Reference:
    def __init__(self, model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def greedy(self, prompt: str, max_new_tokens: int) -> list[int]:
        input_ids = torch.tensor([self.tokenizer.encode(prompt)])
        output = self.model.generate(input_ids, do_sample=False, max_new_tokens=max_new_tokens)
        return output[0, input_ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def reference(tiny_model_dir) -> Reference:
    return Reference(tiny_model_dir)


def dispatch(request_id: str, max_tokens: int, prompt: str = PROMPT, **sampling) -> pb.Dispatch:
    return pb.Dispatch(
        request_id=request_id,
        model="llmos-tiny",
        prompt=prompt,
        sampling=pb.SamplingParams(max_tokens=max_tokens, **sampling),
    )


def test_importing_the_worker_command_does_not_import_torch():
    check = "import sys, workers.main; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"

    assert subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT).returncode == 0


@pytest.mark.e2e
def test_worker_waits_for_kv_blocks_from_the_kernel_and_streams_the_greedy_answer(
    tiny_model_dir, reference, tmp_path
):
    with (
        FakePeer(answer_as_broker) as broker,
        FakePeer(answer_as_kernel) as kernel,
        running_worker(
            tiny_model_dir, broker.address, kernel.address, 1000, tmp_path, "--kv-cache-tokens", "4096"
        ) as worker,
    ):
        _, kernel_register = kernel.expect("kernel_register", STARTUP_TIMEOUT_S)
        identity, register = broker.expect("worker_register", STARTUP_TIMEOUT_S)
        assert identity == register.worker_id.encode() and register.worker_id.startswith("worker-")
        assert list(register.models) == ["llmos-tiny"]
        assert (kernel_register.kv_capacity_tokens, kernel_register.max_num_seqs) == (4096, 16)
        assert (register.block_size, register.kv_blocks_total) == (
            KERNEL_BLOCK_SIZE,
            4096 // KERNEL_BLOCK_SIZE,
        )

        kernel.refuse_once.add("r1")  # the worker waits, then asks again
        broker.send(identity, dispatch("r1", max_tokens=12))
        _, refused = kernel.expect("kv_allocate")
        _, allocate = kernel.expect("kv_allocate")
        answer = collect_answers(broker, {"r1"})["r1"]
        _, free = kernel.expect("kv_free")

        prompt_tokens = len(reference.tokenizer.encode(PROMPT))
        assert refused == allocate
        assert (allocate.request_id, allocate.num_blocks) == ("r1", math.ceil((prompt_tokens + 12) / 8))
        expected = reference.greedy(PROMPT, 12)
        assert answer.token_ids == expected
        assert answer.text == reference.tokenizer.decode(expected, skip_special_tokens=True)
        assert answer.deltas[0].prompt_tokens == prompt_tokens
        assert answer.final.finish_reason == pb.FINISH_REASON_LENGTH
        assert free.request_id == "r1"

        worker.send_signal(signal.SIGTERM)
        broker.expect("disconnect")
        kernel.expect("disconnect")
        assert worker.wait(REPLY_TIMEOUT_S) == 0


@pytest.mark.e2e
def test_a_kernel_that_forgot_the_worker_gets_one_registration_then_each_allocation_once(
    tiny_model_dir, reference, tmp_path
):
    """A restarted kernel refuses every allocation in flight with UNKNOWN_WORKER: the
    worker registers again once, and asks once more for each request's blocks behind
    that registration (twice would hold them twice in the kernel's ledger)."""
    request_ids = [f"r{index}" for index in range(4)]
    with (
        FakePeer(answer_as_broker) as broker,
        FakePeer(answer_as_kernel) as kernel,
        running_worker(
            tiny_model_dir, broker.address, kernel.address, 1000, tmp_path, "--kv-cache-tokens", "4096"
        ),
    ):
        kernel.expect("kernel_register", STARTUP_TIMEOUT_S)
        identity, _ = broker.expect("worker_register", STARTUP_TIMEOUT_S)
        kernel.has_forgotten_worker = True
        for request_id in request_ids:  # together: their allocations are in flight at once
            broker.send(identity, dispatch(request_id, max_tokens=6))
        answers = collect_answers(broker, set(request_ids))

    kernel_messages = []
    while not kernel.inbox.empty():
        _, name, message = kernel.inbox.get()
        kernel_messages.append((name, getattr(message, "request_id", "")))
    registrations = [i for i, (name, _) in enumerate(kernel_messages) if name == "kernel_register"]
    assert len(registrations) == 1  # the second one: the first was taken by expect()
    asked_again = [rid for name, rid in kernel_messages[registrations[0] :] if name == "kv_allocate"]
    assert sorted(asked_again) == request_ids
    for request_id in request_ids:
        assert answers[request_id].token_ids == reference.greedy(PROMPT, 6)


@pytest.mark.e2e
def test_worker_serves_without_a_kernel_and_re_registers_with_a_silent_broker(
    tiny_model_dir, reference, tmp_path
):
    with (
        FakePeer(answer_as_broker) as broker,
        running_worker(
            tiny_model_dir, broker.address, unused_tcp_address(), 200, tmp_path, "--kv-cache-tokens", "4096"
        ) as worker,
    ):
        identity, register = broker.expect("worker_register", STARTUP_TIMEOUT_S)
        assert (register.block_size, register.kv_blocks_total) == (
            DEFAULT_BLOCK_SIZE,
            4096 // DEFAULT_BLOCK_SIZE,
        )

        broker.send(identity, b"not an envelope")  # ignored, never fatal
        broker.send(identity, dispatch("long", max_tokens=2000))
        broker.send(identity, dispatch("short", max_tokens=10))
        _, first = broker.expect("progress")
        broker.send(identity, pb.Cancel(request_id="long"))
        answers = collect_answers(broker, {"short", "long"}, seen=(first,))

        assert answers["short"].token_ids == reference.greedy(PROMPT, 10)
        assert answers["long"].final.finish_reason == pb.FINISH_REASON_CANCELLED

        broker.send(identity, pb.Disconnect(reason="who are you?"))
        assert broker.expect("worker_register")[0] == identity

        broker.is_answering = False  # silent: the worker reconnects after 3 intervals
        again, _ = broker.expect("worker_register", timeout_s=10)
        assert again == identity
        assert worker.poll() is None


@pytest.mark.e2e
def test_preempt_stops_a_running_request_frees_its_blocks_and_reports_every_token(
    tiny_model_dir, reference, tmp_path
):
    with registered_worker(tiny_model_dir, tmp_path) as (broker, kernel, identity):
        broker.send(identity, dispatch("long", max_tokens=1500))
        _, first = broker.expect("progress")
        broker.send(identity, pb.Preempt(request_id="long"))
        answer = collect_answers(broker, {"long"}, seen=(first,))["long"]
        _, free = kernel.expect("kv_free")

        assert answer.final.finish_reason == pb.FINISH_REASON_PREEMPTED
        assert list(answer.final.token_ids) == [] and 0 < len(answer.token_ids) < 1500
        assert answer.token_ids == reference.greedy(PROMPT, len(answer.token_ids))
        assert free.request_id == "long"


@pytest.mark.e2e
def test_a_waiting_request_runs_in_the_step_after_the_one_that_frees_its_slot(
    tiny_model_dir, reference, tmp_path
):
    """Two slots: "long" keeps the engine stepping (its tokens count the steps) while
    shorts take turns in the other slot. Each short takes its blocks from the kernel
    while the one before it makes its last token, so it starts in the very next step.
    Without that, the engine has begun the next step before the blocks come, and the
    slot stays empty for one step every time (a gap of 5 steps, never 4). On a busy
    machine the worker's loop can lag the engine by a step, making a refill late (a CI
    run had 3 of 7 on time, a run on a loaded machine none of 11), so the test asks for one
    refill on time of 23, not most."""
    num_shorts, short_tokens = 24, 4
    shorts = [f"short-{index}" for index in range(num_shorts)]
    with (
        FakePeer(answer_as_broker) as broker,
        FakePeer(answer_as_kernel) as kernel,
        running_worker(
            tiny_model_dir,
            broker.address,
            kernel.address,
            1000,
            tmp_path,
            "--kv-cache-tokens",
            "4096",
            "--max-num-seqs",
            "2",
        ),
    ):
        identity, _ = broker.expect("worker_register", STARTUP_TIMEOUT_S)
        for request_id in ["long", *shorts]:
            broker.send(
                identity, dispatch(request_id, max_tokens=1000 if request_id == "long" else short_tokens)
            )
        steps: list[pb.StepProgress] = []
        while not any(d.request_id == shorts[-1] and d.is_finished for step in steps for d in step.deltas):
            steps.append(broker.expect("progress")[1])
        broker.send(identity, pb.Cancel(request_id="long"))

    first_step = {
        request_id: min(
            index for index, step in enumerate(steps) if any(d.request_id == request_id for d in step.deltas)
        )
        for request_id in shorts
    }
    gaps = [first_step[after] - first_step[before] for before, after in zip(shorts, shorts[1:])]
    assert all(gap >= short_tokens for gap in gaps)  # one slot: never two shorts at once
    assert short_tokens in gaps, gaps  # without the early ask, every gap is short_tokens + 1
    expected = reference.greedy(PROMPT, short_tokens)
    for request_id in shorts:
        assert [
            t for step in steps for d in step.deltas if d.request_id == request_id for t in d.token_ids
        ] == expected


@pytest.mark.e2e
def test_a_final_only_request_is_reported_in_fewer_deltas_with_the_same_tokens(
    tiny_model_dir, reference, tmp_path
):
    """Beside a streamed request, a final-only one reports its first token at once, then
    everything up to one token short of its max_tokens, then its last token (more deltas
    only where a step outlasts the report interval)."""
    max_tokens = 12
    with registered_worker(tiny_model_dir, tmp_path) as (broker, _, identity):
        whole = dispatch("whole", max_tokens=max_tokens)
        whole.is_final_only = True
        broker.send(identity, whole)
        broker.send(identity, dispatch("streamed", max_tokens=max_tokens))
        answers = collect_answers(broker, {"whole", "streamed"})

    expected = reference.greedy(PROMPT, max_tokens)
    assert answers["whole"].token_ids == answers["streamed"].token_ids == expected
    assert len(answers["streamed"].deltas) == max_tokens
    deltas = answers["whole"].deltas
    assert len(deltas[0].token_ids) == 1
    assert deltas[0].prompt_tokens == len(reference.tokenizer.encode(PROMPT))
    assert len(deltas) < max_tokens  # 3 unless most steps outlast the 0.25 s report interval
    reported = [sum(len(d.token_ids) for d in deltas[: index + 1]) for index in range(len(deltas))]
    assert reported[-2:] == [max_tokens - 1, max_tokens]
    assert deltas[-1].is_finished and deltas[-1].finish_reason == pb.FINISH_REASON_LENGTH
