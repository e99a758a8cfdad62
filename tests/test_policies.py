"""fcfs and priority, the factory, and `decide`, driven without sockets."""

from __future__ import annotations

import pytest
from policy_helpers import (
    make_request,
    make_running,
    make_view,
    make_worker,
    placed,
    placed_ids,
    preempted,
    schedule,
)

from llmos.wire import WireError, pb
from scheduler_svc.policies import PolicyName, decide, make_policy

# (request id, tier rank, arrival seq), listed out of order on purpose
MIXED_TIERS = [("batch-1", 1, 1), ("inter-3", 0, 3), ("batch-0", 1, 0), ("inter-2", 0, 2)]


def mixed_tiers() -> list:
    return [make_request(rid, rank, seq) for rid, rank, seq in MIXED_TIERS]


def test_priority_places_higher_tiers_first_then_fifo() -> None:
    decision = schedule("priority", mixed_tiers(), [make_worker("w1")])
    assert placed_ids(decision) == ["inter-2", "inter-3", "batch-0", "batch-1"]


def test_fcfs_places_in_arrival_order_whatever_the_tier() -> None:
    decision = schedule("fcfs", mixed_tiers(), [make_worker("w1")])
    assert placed_ids(decision) == ["batch-0", "batch-1", "inter-2", "inter-3"]


def test_priority_breaks_ties_within_a_tier_by_earliest_deadline() -> None:
    pending = [
        make_request("no-deadline", arrival_seq=0),
        make_request("due-late", arrival_seq=1, deadline_in_s=9.0),
        make_request("due-soon", arrival_seq=2, deadline_in_s=1.5),
        make_request("batch-due-now", tier_rank=1, arrival_seq=3, deadline_in_s=0.1),
    ]
    decision = schedule("priority", pending, [make_worker("w1")])
    assert placed_ids(decision) == ["due-soon", "due-late", "no-deadline", "batch-due-now"]


# ---------------------------------------------------------------- priority preemption


def full_worker(worker_id: str, models: tuple[str, ...] = ("tiny",)):
    return make_worker(worker_id, models=models, num_running=1, max_num_seqs=1)


def test_priority_preempts_the_lowest_tier_most_recently_started_request() -> None:
    workers = [full_worker("w-std"), full_worker("w-old"), full_worker("w-new")]
    running = [
        make_running("standard", "w-std", tier_rank=1, running_s=0.5),
        make_running("batch-old", "w-old", tier_rank=2, running_s=30.0),
        make_running("batch-new", "w-new", tier_rank=2, running_s=1.0),
    ]
    decision = schedule("priority", [make_request("inter", tier_rank=0)], workers, running)
    assert preempted(decision) == [("batch-new", "w-new")]
    assert "inter" in decision.preemptions[0].reason
    assert placed(decision) == [("inter", "w-new")]


def test_priority_never_preempts_the_same_or_a_higher_tier() -> None:
    workers = [full_worker("w1"), full_worker("w2")]
    running = [make_running("same-tier", "w1", tier_rank=1), make_running("higher-tier", "w2", tier_rank=0)]
    decision = schedule("priority", [make_request("standard", tier_rank=1)], workers, running)
    assert decision.preemptions == [] and decision.placements == []


def test_priority_preempts_at_most_once_per_waiting_request() -> None:
    workers = [full_worker(f"w{i}") for i in range(3)]
    running = [make_running(f"batch-{i}", f"w{i}", tier_rank=2, running_s=float(i)) for i in range(3)]
    pending = [make_request("inter-0", arrival_seq=0), make_request("inter-1", arrival_seq=1)]
    decision = schedule("priority", pending, workers, running)
    assert preempted(decision) == [("batch-0", "w0"), ("batch-1", "w1")]
    assert placed(decision) == [("inter-0", "w0"), ("inter-1", "w1")]


def test_priority_counts_on_a_slot_already_being_freed_before_preempting_again() -> None:
    # w-leaving runs one request more than `running` lists: the broker is preempting it
    workers = [full_worker("w-leaving"), full_worker("w-batch")]
    running = [make_running("batch", "w-batch", tier_rank=2)]
    decision = schedule("priority", [make_request("inter-0", arrival_seq=0)], workers, running)
    assert decision.preemptions == [] and decision.placements == []
    pending = [make_request("inter-0", arrival_seq=0), make_request("inter-1", arrival_seq=1)]
    decision = schedule("priority", pending, workers, running)
    assert preempted(decision) == [("batch", "w-batch")]  # one slot each: inter-1 needs another
    assert placed(decision) == [("inter-1", "w-batch")]


def test_priority_places_before_it_preempts() -> None:
    workers = [full_worker("w-full"), make_worker("w-free", max_num_seqs=1)]
    running = [make_running("batch", "w-full", tier_rank=2)]
    decision = schedule("priority", [make_request("inter")], workers, running)
    assert decision.preemptions == []
    assert placed(decision) == [("inter", "w-free")]


def test_priority_preempts_only_on_a_worker_serving_the_model() -> None:
    workers = [full_worker("w-big", models=("big",))]
    running = [make_running("batch", "w-big", tier_rank=2)]
    decision = schedule("priority", [make_request("inter", model="tiny")], workers, running)
    assert decision.preemptions == [] and decision.placements == []


def test_priority_preempts_only_where_the_victim_frees_enough_blocks() -> None:
    # the waiting request needs (64 prompt chars / 4 + 64 tokens) / 16 = 5 blocks
    workers = [
        make_worker("w-small", num_running=1, max_num_seqs=1, kv_blocks_free=0),
        make_worker("w-big", num_running=1, max_num_seqs=1, kv_blocks_free=2),
    ]
    running = [
        make_running("small", "w-small", tier_rank=2, prompt_chars=64, running_s=1.0),
        make_running("big", "w-big", tier_rank=2, prompt_chars=64, generated_tokens=40, running_s=9.0),
    ]
    decision = schedule(
        "priority", [make_request("inter", prompt_chars=64, max_tokens=64)], workers, running, make_view()
    )
    assert preempted(decision) == [("big", "w-big")]  # it holds 4 blocks: 2 + 4 >= 5
    assert placed(decision) == [("inter", "w-big")]


def test_fcfs_never_preempts() -> None:
    running = [make_running("batch", "w1", tier_rank=2)]
    decision = schedule("fcfs", [make_request("inter")], [full_worker("w1")], running)
    assert decision.preemptions == [] and decision.placements == []


# ---------------------------------------------------------------- factory and decide


def test_make_policy_knows_every_name_and_rejects_others_clearly() -> None:
    assert {make_policy(name.value).name for name in PolicyName} == set(PolicyName)
    with pytest.raises(ValueError, match=r"unknown scheduling policy 'lottery'.*fcfs, priority, mlfq, fair"):
        make_policy("lottery")


def test_make_policy_passes_options_to_the_policy() -> None:
    policy = make_policy("fair", tenant_weights="a=1,b=3")
    assert (policy.weight("a"), policy.weight("b"), policy.weight("stranger")) == (1.0, 3.0, 1.0)
    with pytest.raises(ValueError, match="mlfq_base_quantum"):
        make_policy("mlfq", mlfq_base_quantum=0)


def test_decide_converts_protos_and_uses_kernel_free_blocks() -> None:
    request = pb.ScheduleRequest(batch_id=7)
    request.pending.add(request_id="r0", tier_rank=1, arrival_seq=0, model="tiny")
    request.pending.add(request_id="r1", tier_rank=0, arrival_seq=1, model="tiny")
    request.workers.add(worker_id="w1", models=["tiny"], num_running=0, max_num_seqs=1)
    request.workers.add(worker_id="w2", models=["tiny"], num_running=0, max_num_seqs=1)
    view = pb.ResourceView(version=3, block_size=16)
    view.workers.add(worker_id="w2", kv_blocks_total=10, kv_blocks_used=2)

    decision = decide(make_policy("priority"), request, view)

    assert decision.batch_id == 7 and decision.policy == "priority"
    # w1 is not in the view yet (it counts as having plenty of blocks); w2 has 8 free
    assert [(p.request_id, p.worker_id) for p in decision.placements] == [("r1", "w1"), ("r0", "w2")]


def test_decide_fills_preemptions_and_follows_cached_prefixes() -> None:
    request = pb.ScheduleRequest(batch_id=8)
    request.pending.add(request_id="chat", arrival_seq=0, model="tiny", prefix_hashes=[21, 22, 23])
    request.pending.add(request_id="other", arrival_seq=1, model="tiny")
    request.pending.add(request_id="inter", arrival_seq=2, model="tiny")
    request.workers.add(worker_id="w-full", models=["tiny"], num_running=1, max_num_seqs=1)
    request.workers.add(worker_id="w-a", models=["tiny"], num_running=0, max_num_seqs=1)
    request.workers.add(worker_id="w-b", models=["tiny"], num_running=0, max_num_seqs=1)
    request.running.add(request_id="batch", worker_id="w-full", tier_rank=2, generated_tokens=5)
    view = pb.ResourceView(block_size=16)
    view.workers.add(worker_id="w-a", kv_blocks_total=200, cached_prefix_hashes=[21])
    view.workers.add(worker_id="w-b", kv_blocks_total=100, cached_prefix_hashes=[21, 22])

    decision = decide(make_policy("priority"), request, view)

    assert [(p.request_id, p.worker_id) for p in decision.preemptions] == [("batch", "w-full")]
    assert [(p.request_id, p.worker_id) for p in decision.placements] == [
        ("chat", "w-b"),
        ("other", "w-a"),
        ("inter", "w-full"),
    ]


def test_decide_without_a_view_places_by_slots_alone() -> None:
    request = pb.ScheduleRequest(batch_id=1)
    request.pending.add(request_id="r0", max_tokens=4000)
    request.workers.add(worker_id="w1", models=["tiny"], max_num_seqs=1)
    decision = decide(make_policy("fcfs"), request, None)
    assert [(p.request_id, p.worker_id) for p in decision.placements] == [("r0", "w1")]
    assert decision.policy == "fcfs" and not decision.preemptions


def test_decide_refuses_a_worker_listed_twice() -> None:
    request = pb.ScheduleRequest(batch_id=2)
    for _ in range(2):
        request.workers.add(worker_id="w1", models=["tiny"], max_num_seqs=1)
    with pytest.raises(WireError) as refused:
        decide(make_policy("fcfs"), request, None)
    assert refused.value.code == pb.INVALID_ARGUMENT
