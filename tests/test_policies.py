"""Scheduling policies and `decide`, driven without sockets."""

from __future__ import annotations

import pytest

from llmos.wire import pb
from scheduler_svc.placement import PendingRequest, Placement, WorkerSlots
from scheduler_svc.policies import PolicyName, decide, make_policy


def make_request(request_id: str, tier_rank: int = 0, arrival_seq: int = 0,
                 model: str = "") -> PendingRequest:
    return PendingRequest(request_id, tier_rank=tier_rank, model=model, arrival_seq=arrival_seq)


def make_worker(worker_id: str, models: tuple[str, ...] = ("tiny",), num_running: int = 0,
                max_num_seqs: int = 8, kv_blocks_free: int | None = None) -> WorkerSlots:
    return WorkerSlots(worker_id, models, num_running, max_num_seqs, kv_blocks_free)


def placed_ids(placements: list[Placement]) -> list[str]:
    return [placement.request_id for placement in placements]


# (request id, tier rank, arrival seq), listed out of order on purpose
MIXED_TIERS = [("batch-1", 1, 1), ("inter-3", 0, 3), ("batch-0", 1, 0), ("inter-2", 0, 2)]


def test_priority_places_higher_tiers_first_then_fifo() -> None:
    pending = [make_request(rid, rank, seq) for rid, rank, seq in MIXED_TIERS]
    placements = make_policy("priority").schedule(pending, [make_worker("w1")])
    assert placed_ids(placements) == ["inter-2", "inter-3", "batch-0", "batch-1"]


def test_fcfs_places_in_arrival_order_whatever_the_tier() -> None:
    pending = [make_request(rid, rank, seq) for rid, rank, seq in MIXED_TIERS]
    placements = make_policy("fcfs").schedule(pending, [make_worker("w1")])
    assert placed_ids(placements) == ["batch-0", "batch-1", "inter-2", "inter-3"]


def test_least_loaded_worker_first_then_most_free_blocks_then_id() -> None:
    workers = [make_worker("busy", num_running=3), make_worker("b", num_running=1, kv_blocks_free=10),
               make_worker("a", num_running=1, kv_blocks_free=10),
               make_worker("roomy", num_running=1, kv_blocks_free=50)]
    pending = [make_request(f"r{i}", arrival_seq=i) for i in range(3)]
    placements = make_policy("priority").schedule(pending, workers)
    assert placements == [Placement("r0", "roomy"), Placement("r1", "a"), Placement("r2", "b")]


def test_known_kv_blocks_rank_before_unknown() -> None:
    workers = [make_worker("unknown", kv_blocks_free=None), make_worker("known", kv_blocks_free=1)]
    placements = make_policy("fcfs").schedule([make_request("r0")], workers)
    assert placements == [Placement("r0", "known")]


def test_requests_go_only_to_workers_serving_their_model() -> None:
    workers = [make_worker("w-tiny", models=("tiny",)), make_worker("w-big", models=("big",), num_running=5)]
    pending = [make_request("r-big", arrival_seq=0, model="big"),
               make_request("r-tiny", arrival_seq=1, model="tiny"),
               make_request("r-any", arrival_seq=2, model="")]
    placements = make_policy("fcfs").schedule(pending, workers)
    assert placements == [Placement("r-big", "w-big"), Placement("r-tiny", "w-tiny"),
                          Placement("r-any", "w-tiny")]


def test_requests_that_fit_nowhere_stay_pending_and_later_ones_still_place() -> None:
    workers = [make_worker("w-tiny", models=("tiny",), max_num_seqs=1),
               make_worker("w-big", models=("big",), num_running=2, max_num_seqs=2)]
    pending = [make_request("r-big", arrival_seq=0, model="big"),
               make_request("r-unknown", arrival_seq=1, model="nobody-serves-this"),
               make_request("r-tiny", arrival_seq=2, model="tiny"),
               make_request("r-tiny-2", arrival_seq=3, model="tiny")]
    placements = make_policy("fcfs").schedule(pending, workers)
    assert placements == [Placement("r-tiny", "w-tiny")]


def test_capacity_is_counted_within_the_batch() -> None:
    workers = [make_worker("w1", max_num_seqs=2), make_worker("w2", num_running=1, max_num_seqs=2)]
    pending = [make_request(f"r{i}", arrival_seq=i) for i in range(5)]
    placements = make_policy("fcfs").schedule(pending, workers)
    # w1 is least loaded (0), then w1 and w2 tie at 1 (w1 by id), then only w2 has room
    assert placements == [Placement("r0", "w1"), Placement("r1", "w1"), Placement("r2", "w2")]


def test_worker_serving_many_models_is_not_overbooked() -> None:
    workers = [make_worker("multi", models=("a", "b"), max_num_seqs=2)]
    pending = [make_request("ra", arrival_seq=0, model="a"), make_request("rb", arrival_seq=1, model="b"),
               make_request("rany", arrival_seq=2)]
    placements = make_policy("fcfs").schedule(pending, workers)
    assert placed_ids(placements) == ["ra", "rb"]


def test_make_policy_knows_every_name_and_rejects_others_clearly() -> None:
    assert {make_policy(name.value).name for name in PolicyName} == set(PolicyName)
    with pytest.raises(ValueError, match=r"unknown scheduling policy 'lottery'.*fcfs, priority"):
        make_policy("lottery")


def test_decide_converts_protos_and_uses_kernel_free_blocks() -> None:
    request = pb.ScheduleRequest(batch_id=7)
    request.pending.add(request_id="r0", tier_rank=1, arrival_seq=0, model="tiny")
    request.pending.add(request_id="r1", tier_rank=0, arrival_seq=1, model="tiny")
    request.workers.add(worker_id="w1", models=["tiny"], num_running=0, max_num_seqs=1)
    request.workers.add(worker_id="w2", models=["tiny"], num_running=0, max_num_seqs=1)
    view = pb.ResourceView(version=3)
    view.workers.add(worker_id="w2", kv_blocks_total=10, kv_blocks_used=2)

    decision = decide(make_policy("priority"), request, view)

    assert decision.batch_id == 7 and decision.policy == "priority"
    assert [(p.request_id, p.worker_id) for p in decision.placements] == [("r1", "w2"), ("r0", "w1")]


def test_decide_without_a_view_places_by_slots_alone() -> None:
    request = pb.ScheduleRequest(batch_id=1)
    request.pending.add(request_id="r0")
    request.workers.add(worker_id="w1", models=["tiny"], max_num_seqs=1)
    decision = decide(make_policy("fcfs"), request, None)
    assert [(p.request_id, p.worker_id) for p in decision.placements] == [("r0", "w1")]
    assert decision.policy == "fcfs"
