"""The whole stack end to end: real processes started through the CLI."""

from __future__ import annotations

import threading
import time

import pytest
import zmq
from e2e_helpers import Reference, StreamedAnswer, stream_answer
from service_process import ask, dealer
from stack import Stack

from llmos.client import query_kernel
from llmos.errors import LlmosError
from llmos.prefix import prompt_block_hashes
from llmos.wire import pb
from llmos.wire.constants import PROTOCOL_VERSION

pytestmark = pytest.mark.e2e

PROMPTS = [
    "Hello, how are you today?",
    "The quick brown fox",
    "Customer service: my order is late",
    "Once upon a time",
]


@pytest.fixture(scope="module", params=["batched", "paged"])
def stack(request, tiny_model_dir, tmp_path_factory):
    """The whole module runs against workers of each engine (`llmos worker --engine`)."""
    worker_args = ("--engine", request.param)
    with Stack(
        tiny_model_dir, tmp_path_factory.mktemp("logs"), num_workers=2, worker_args=worker_args
    ) as running:
        yield running


@pytest.fixture(scope="module")
def reference(tiny_model_dir) -> Reference:
    return Reference(tiny_model_dir)


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_streamed_greedy_answer_equals_transformers_generate(stack, reference, prompt):
    with stack.client() as client:
        answer = stream_answer(client, prompt, max_tokens=24)
    answer.assert_whole()
    assert answer.token_ids == reference.greedy(prompt, 24)
    assert answer.result.usage.prompt_tokens == len(reference.tokenizer(prompt)["input_ids"])


def test_a_final_only_request_gets_accepted_then_its_whole_result_and_no_chunk(stack, reference):
    prompt = PROMPTS[2]
    frame = generate_frame(request_id="whole", prompt=prompt, is_final_only=True, sampling={"max_tokens": 12})
    bodies = [reply.WhichOneof("body") for reply in raw_replies(stack, frame, until="result")]
    assert bodies == ["accepted", "result"]
    with stack.client() as client:  # the SDK's generate() asks for the result only, too
        result = client.generate(prompt, max_tokens=12)
    assert list(result.token_ids) == reference.greedy(prompt, 12)
    assert result.usage.time_to_first_token_s > 0


def test_twenty_concurrent_clients_all_get_complete_answers(stack, reference):
    answers: dict[int, StreamedAnswer] = {}
    errors: list[BaseException] = []

    def one_client(index: int) -> None:
        try:
            with stack.client() as client:
                answers[index] = stream_answer(
                    client,
                    PROMPTS[index % len(PROMPTS)],
                    max_tokens=12,
                    tier="batch" if index % 2 else "interactive",
                )
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(answers) == list(range(20))
    expected = {prompt: reference.greedy(prompt, 12) for prompt in PROMPTS}
    for index, answer in answers.items():
        answer.assert_whole()
        assert answer.token_ids == expected[PROMPTS[index % len(PROMPTS)]]


def raw_reply(stack: Stack, frames: list[bytes]) -> pb.Envelope:
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(stack.broker_address)
    try:
        socket.send_multipart(frames)
        assert socket.poll(30_000), "the broker did not answer"
        reply = pb.Envelope()
        reply.ParseFromString(socket.recv_multipart()[-1])
        return reply
    finally:
        socket.close()


def raw_replies(stack: Stack, frame: bytes, until: str) -> list[pb.Envelope]:
    """Every message the broker sends for one request, up to the first `until` body."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(stack.broker_address)
    replies: list[pb.Envelope] = []
    try:
        socket.send(frame)
        while not replies or replies[-1].WhichOneof("body") not in (until, "error"):
            assert socket.poll(30_000), "the broker did not answer"
            replies.append(pb.Envelope.FromString(socket.recv()))
        return replies
    finally:
        socket.close()


def generate_frame(version: int = PROTOCOL_VERSION, **fields) -> bytes:
    sampling = fields.pop("sampling", {})
    fields.setdefault("request_id", "hostile")
    envelope = pb.Envelope(version=version)
    envelope.generate.CopyFrom(pb.GenerateRequest(**fields))
    for name, value in sampling.items():
        setattr(envelope.generate.sampling, name, value)
    return envelope.SerializeToString()


UNKNOWN_ONEOF = pb.Envelope(version=PROTOCOL_VERSION).SerializeToString() + b"\x82\x06\x00"
NOT_FOR_CLIENTS = pb.Envelope(version=PROTOCOL_VERSION, dispatch=pb.Dispatch()).SerializeToString()


@pytest.mark.parametrize(
    "frames, code",
    [
        ([b"\xff\x00garbage\x13\x37"], pb.MALFORMED_FRAME),
        ([b"not-empty", b"two frames"], pb.MALFORMED_FRAME),
        ([generate_frame(version=99, prompt="hi")], pb.UNSUPPORTED_VERSION),
        ([UNKNOWN_ONEOF], pb.UNKNOWN_MESSAGE),
        ([NOT_FOR_CLIENTS], pb.UNKNOWN_MESSAGE),
        ([generate_frame(prompt="x" * (10 * 1024 * 1024))], pb.TOO_LARGE),
        ([generate_frame(prompt="hi", sampling={"max_tokens": -5})], pb.INVALID_ARGUMENT),
        ([generate_frame(prompt="")], pb.INVALID_ARGUMENT),
        ([generate_frame(prompt="hi", model="no-such-model")], pb.UNKNOWN_MODEL),
        ([generate_frame(prompt="hi", tier="platinum")], pb.INVALID_ARGUMENT),
    ],
)
def test_hostile_input_gets_an_error_reply_and_the_stack_keeps_serving(stack, frames, code):
    reply = raw_reply(stack, frames)
    assert reply.WhichOneof("body") == "error"
    assert reply.error.code == code, reply.error.message
    assert reply.error.message
    with stack.client() as client:
        assert client.generate("still serving?", max_tokens=4).usage.generated_tokens > 0


def test_client_sdk_raises_typed_errors(stack):
    with stack.client() as client, pytest.raises(LlmosError) as caught:
        client.generate("hi", max_tokens=-1)
    assert caught.value.code == pb.INVALID_ARGUMENT
    assert "max_tokens" in caught.value.message


def test_stop_strings_and_cancel(stack, reference):
    full = reference.tokenizer.decode(reference.greedy(PROMPTS[0], 24), skip_special_tokens=True)
    stop = full[5:8]
    with stack.client() as client:
        result = client.generate(PROMPTS[0], max_tokens=24, stop=[stop])
        assert result.finish_reason == pb.FINISH_REASON_STOP
        assert result.text == full[: full.index(stop)]
        request_id = client.submit(PROMPTS[1], max_tokens=2000, tier="batch")
        client.cancel(request_id)
        chunks = list(client.stream(request_id))
        assert client.result(request_id).finish_reason == pb.FINISH_REASON_CANCELLED
        assert len(chunks) < 2000


def test_kv_blocks_are_held_while_running_and_return_to_zero(stack):
    # The stack is shared: wait until earlier tests' requests hold no blocks.
    wait_for_view(stack, lambda v: sum(w.num_requests_holding_blocks for w in v.workers) == 0)
    with stack.client() as client:
        request_id = client.submit("count my blocks", max_tokens=400, tier="batch")
        next(iter(client.stream(request_id)))  # running now: its blocks are allocated
        view = wait_for_view(stack, lambda v: sum(w.kv_blocks_used for w in v.workers) > 0)
        assert sum(w.num_requests_holding_blocks for w in view.workers) == 1
        client.cancel(request_id)
    view = wait_for_view(stack, lambda v: sum(w.kv_blocks_used for w in v.workers) == 0)
    assert len(view.workers) == 2
    assert all(worker.kv_blocks_total > 0 for worker in view.workers)


def wait_for_view(stack: Stack, condition, attempts: int = 100) -> pb.ResourceView:
    """Poll the kernel until `condition(view)` holds (bounded by count, not by a clock)."""
    for _ in range(attempts):
        view = query_kernel(stack.kernel_address, timeout_s=10)
        if condition(view):
            return view
        time.sleep(0.1)
    raise AssertionError(f"kernel view never satisfied the condition: {view}")


def test_status_shows_workers_tiers_and_scheduler(stack):
    with stack.client() as client:
        status = client.status()
    assert sorted(w.worker_id for w in status.workers) == ["worker-0", "worker-1"]
    assert [t.tier for t in status.tiers] == ["interactive", "standard", "batch"]
    assert status.scheduler_online and status.scheduler_policy == "priority"


SYSTEM_PROMPT = (
    "You are the support assistant of a small bakery. Answer politely, in one or two "
    "sentences, and never promise a delivery date you cannot keep. Customer: "
)


def test_requests_go_to_the_worker_whose_cache_holds_their_prefix(stack, reference):
    """The worker reports its cached prefixes to the kernel; the scheduler places by them."""
    with stack.client() as client:
        first = client.generate(SYSTEM_PROMPT + "Hello!", max_tokens=4)
        hashes = prompt_block_hashes(SYSTEM_PROMPT)
        assert len(hashes) >= 2
        wait_for_view(
            stack,
            lambda v: any(
                set(hashes) <= set(w.cached_prefix_hashes)
                for w in v.workers
                if w.worker_id == first.worker_id
            ),
        )
        prompts = [SYSTEM_PROMPT + f"Where is my order number {i}?" for i in range(4)]
        wait_for_scheduler_to_place(stack, prompts[0], first.model, first.worker_id)
        request_ids = [client.submit(prompt, max_tokens=6) for prompt in prompts]  # at once
        results = [client.result(request_id) for request_id in request_ids]

    # the other worker is idle, so only the cached prefix can draw all four to this one
    assert [r.worker_id for r in results] == [first.worker_id] * 4
    for prompt, result in zip(prompts, results):
        assert list(result.token_ids) == reference.greedy(prompt, 6)  # computed from the cache


def wait_for_scheduler_to_place(
    stack: Stack, prompt: str, model: str, expected_worker: str, attempts: int = 100
) -> None:
    """Ask the scheduler, as the broker does, where a request for `prompt` would go until it
    says `expected_worker`: the kernel's view reaches it by PUB, a moment after the kernel."""
    with dealer(stack.ports.scheduler_address) as socket:
        for batch_id in range(1, attempts + 1):
            request = pb.ScheduleRequest(batch_id=batch_id)
            request.pending.add(
                request_id="probe",
                tier="interactive",
                model=model,
                prompt_chars=len(prompt),
                max_tokens=6,
                prefix_hashes=prompt_block_hashes(prompt),
            )
            for index in range(2):  # busier, the expected one wins only by the cached prefix
                worker_id = f"worker-{index}"
                request.workers.add(
                    worker_id=worker_id,
                    models=[model],
                    max_num_seqs=16,
                    num_running=8 if worker_id == expected_worker else 0,
                )
            name, decision = ask(socket, request, {"schedule_decision", "error"})
            assert name == "schedule_decision", decision
            if [p.worker_id for p in decision.placements] == [expected_worker]:
                return
            time.sleep(0.1)
    raise AssertionError(f"the scheduler never placed the prompt on {expected_worker}")
