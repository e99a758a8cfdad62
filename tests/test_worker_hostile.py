"""The worker process against a broker and a kernel that send what they should not:
prompts far past the model's context, token ids past its vocabulary, garbage
frames, a kernel granting more KV than was registered. The worker refuses with
coded errors before it spends time on them, and keeps heartbeating and serving."""

from __future__ import annotations

import pytest
from test_worker_service import (
    STARTUP_TIMEOUT_S,
    FakePeer,
    answer_as_broker,
    answer_as_kernel,
    collect_answers,
    dispatch,
    running_worker,
)

from llmos.wire import pb
from workers.dispatch_checks import MAX_BYTES_PER_TOKEN
from workers.tokenize_queue import TokenizeQueue

pytestmark = pytest.mark.e2e

NUM_HUGE_PROMPTS = 40
MIB = 1 << 20


def final_error(broker: FakePeer, request_id: str) -> pb.RequestDelta:
    final = collect_answers(broker, {request_id})[request_id].final
    assert final.finish_reason == pb.FINISH_REASON_ERROR, final
    return final


def test_the_worker_refuses_what_it_cannot_run_before_tokenizing_and_keeps_serving(tiny_model_dir, tmp_path):
    with (
        FakePeer(answer_as_broker) as broker,
        FakePeer(answer_as_kernel) as kernel,
        running_worker(tiny_model_dir, broker.address, kernel.address, 1000, tmp_path) as worker,
    ):
        identity, register = broker.expect("worker_register", STARTUP_TIMEOUT_S)
        assert register.max_model_len > 0
        limit_bytes = register.max_model_len * MAX_BYTES_PER_TOKEN

        broker.send(identity, dispatch("r-over", max_tokens=4, prompt="a" * (limit_bytes + 1)))
        over = final_error(broker, "r-over")
        # refused before tokenizing: no prompt token count is known
        assert (over.error.code, over.prompt_tokens) == (pb.TOO_LARGE, 0)
        for i in range(NUM_HUGE_PROMPTS):
            broker.send(identity, dispatch(f"r-huge-{i}", max_tokens=4, prompt="word " * (MIB // 5)))
        huge = collect_answers(broker, {f"r-huge-{i}" for i in range(NUM_HUGE_PROMPTS)})
        assert {answer.final.error.code for answer in huge.values()} == {pb.TOO_LARGE}

        bad_ids = dispatch("r-bad-ids", max_tokens=4)
        bad_ids.generated_token_ids.extend([1, 2**31 - 1])
        broker.send(identity, bad_ids)
        assert final_error(broker, "r-bad-ids").error.code == pb.INVALID_ARGUMENT

        broker.send(identity, b"not an envelope")
        broker.send(identity, pb.Preempt(request_id="r" * 10_000))
        broker.send(identity, pb.Cancel(request_id="never-dispatched"))
        _, cancelled = broker.expect("progress")  # answered although unknown; the long id was not
        assert [(d.request_id, d.finish_reason) for d in cancelled.deltas] == [
            ("never-dispatched", pb.FINISH_REASON_CANCELLED)
        ]
        kernel.send(
            kernel.expect("kernel_heartbeat")[0], pb.KernelReply(block_size=0, kv_blocks_total=2**32 - 1)
        )

        broker.send(identity, dispatch("r-ok", max_tokens=4))
        ok = collect_answers(broker, {"r-ok"})["r-ok"]
        assert (ok.final.finish_reason, len(ok.token_ids)) == (pb.FINISH_REASON_LENGTH, 4)
        broker.expect("heartbeat")
        assert worker.poll() is None


def test_a_burst_of_prompts_is_tokenized_a_bounded_amount_per_loop_turn():
    queue = TokenizeQueue(max_bytes_per_turn=100)
    for request_id, num_chars in (("a", 60), ("b", 30), ("c", 20), ("d", 500), ("e", 1)):
        queue.add(pb.Dispatch(request_id=request_id, prompt="x" * num_chars))
    queue.discard("e")  # cancelled while it waited

    turns = [[d.request_id for d in queue.take_turn()] for _ in range(4)]

    assert turns == [["a", "b"], ["c"], ["d"], []]  # one prompt a turn at least, however long
