"""Micro-benchmark of the scheduler's decision time (`llmos bench sched` calls it).

A synthetic cluster: `num_workers` workers serving two models, most of them
partly busy and some full, each caching a few prompt prefixes that the pending
requests share (so prefix-aware placement has work to do), plus running
requests a preempting policy may pick from. `decide` runs on the same
ScheduleRequest and KernelView several times; the best run counts.
"""

from __future__ import annotations

import random
import time

from llmos.wire import pb
from scheduler_svc.convert import kernel_view_from_proto
from scheduler_svc.policies import decide, make_policy

MODELS = ("tiny", "small")
BLOCK_SIZE = 16
NUM_PROMPT_FAMILIES = 64  # shared prompt prefixes (system prompts, few-shot headers)
FAMILY_BLOCKS = 4  # blocks of a family's shared prefix
MAX_NUM_SEQS = 8
KV_BLOCKS_TOTAL = 2048


def synthetic_batch(
    num_workers: int, num_pending: int, seed: int = 0
) -> tuple[pb.ScheduleRequest, pb.ResourceView]:
    rng = random.Random(seed)
    families = [[rng.getrandbits(63) for _ in range(FAMILY_BLOCKS)] for _ in range(NUM_PROMPT_FAMILIES)]
    request = pb.ScheduleRequest(batch_id=1)
    view = pb.ResourceView(version=1, block_size=BLOCK_SIZE)
    for index in range(num_workers):
        worker_id = f"w{index:04}"
        num_running = rng.randint(MAX_NUM_SEQS // 2, MAX_NUM_SEQS)
        request.workers.add(
            worker_id=worker_id,
            models=[MODELS[index % len(MODELS)]],
            num_running=num_running,
            max_num_seqs=MAX_NUM_SEQS,
        )
        cached = [block for family in rng.sample(families, 3) for block in family]
        view.workers.add(
            worker_id=worker_id,
            kv_blocks_total=KV_BLOCKS_TOTAL,
            kv_blocks_used=rng.randint(0, KV_BLOCKS_TOTAL),
            cached_prefix_hashes=cached,
        )
        for slot in range(num_running):
            request.running.add(
                request_id=f"run-{index}-{slot}",
                worker_id=worker_id,
                tier_rank=rng.randint(0, 2),
                tenant=f"tenant-{rng.randint(0, 9)}",
                prompt_chars=rng.randint(40, 4000),
                generated_tokens=rng.randint(0, 300),
                max_tokens=512,
                running_s=rng.uniform(0, 30),
                tokens_since_dispatch=rng.randint(0, 20),
            )
    for index in range(num_pending):
        family = rng.choice(families)
        own_blocks = [rng.getrandbits(63) for _ in range(rng.randint(0, 4))]
        request.pending.add(
            request_id=f"req-{index}",
            tier_rank=rng.randint(0, 2),
            tenant=f"tenant-{rng.randint(0, 9)}",
            model=MODELS[index % len(MODELS)],
            prompt_chars=rng.randint(40, 4000),
            max_tokens=rng.choice((16, 64, 256)),
            arrival_seq=index,
            prefix_hashes=family + own_blocks,
            waited_s=rng.uniform(0, 20),
        )
    return request, view


def decision_time_us_per_request(
    num_workers: int, num_pending: int, policy: str = "priority", repetitions: int = 5
) -> float:
    """Microseconds `decide` spends per pending request, best of `repetitions`.

    The kernel view is converted beforehand, as the scheduler does once per view
    it receives; the conversion of the ScheduleRequest itself is timed.
    """
    assert num_pending > 0 and repetitions > 0
    request, view = synthetic_batch(num_workers, num_pending)
    kernel_view = kernel_view_from_proto(view)
    best_s = float("inf")
    for _ in range(repetitions):
        scheduler = make_policy(policy)  # fresh each time: `fair` keeps state across calls
        started_s = time.perf_counter()
        decide(scheduler, request, kernel_view)
        best_s = min(best_s, time.perf_counter() - started_s)
    return best_s / num_pending * 1e6
