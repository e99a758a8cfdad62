"""Placement shared by every policy: cached prefix, then free KV blocks, then load."""

from __future__ import annotations

from collections import Counter

from policy_helpers import make_request, make_view, make_worker, placed, schedule

from llmos.wire import pb
from scheduler_svc.data import blocks_needed
from scheduler_svc.placement import KV_PLENTY_BLOCKS
from scheduler_svc.policies import decide, make_policy

PROMPT = [101, 102, 103, 104]  # block hashes of one prompt, each chaining the ones before


def test_the_longest_cached_prefix_wins_over_free_blocks() -> None:
    workers = [
        make_worker("w-none", kv_blocks_free=500),
        make_worker("w-one", kv_blocks_free=100),
        make_worker("w-three", kv_blocks_free=50),
        make_worker("w-other", kv_blocks_free=100),
    ]
    view = make_view({"w-one": PROMPT[:1], "w-three": PROMPT[:3], "w-other": [901, 902, 903]})
    decision = schedule("fcfs", [make_request("r0", prefix_hashes=tuple(PROMPT))], workers, view=view)
    assert placed(decision) == [("r0", "w-three")]


def test_equal_prefixes_go_to_the_most_free_blocks_then_the_least_loaded_then_by_id() -> None:
    workers = [
        make_worker("busy", num_running=3, kv_blocks_free=90),
        make_worker("b", num_running=1, kv_blocks_free=90),
        make_worker("a", num_running=1, kv_blocks_free=90),
        make_worker("roomy", num_running=5, kv_blocks_free=95),
        make_worker("uncached", kv_blocks_free=500),
    ]
    view = make_view({worker.worker_id: PROMPT[:2] for worker in workers[:4]})
    pending = [
        make_request(f"r{i}", arrival_seq=i, prefix_hashes=tuple(PROMPT), max_tokens=80) for i in range(4)
    ]
    assert blocks_needed(pending[0], 16) == 5
    decision = schedule("fcfs", pending, workers, view=view)
    # roomy drops to 90 blocks and 6 running: then a and b (1 running, a by id), then busy (3)
    assert placed(decision) == [("r0", "roomy"), ("r1", "a"), ("r2", "b"), ("r3", "busy")]


def test_without_prefixes_most_free_blocks_then_least_loaded_then_id() -> None:
    workers = [
        make_worker("busy", num_running=3, kv_blocks_free=10),
        make_worker("b", num_running=1, kv_blocks_free=10),
        make_worker("a", num_running=1, kv_blocks_free=10),
        make_worker("roomy", num_running=1, kv_blocks_free=12),
    ]
    pending = [make_request(f"r{i}", arrival_seq=i, max_tokens=32) for i in range(4)]  # 2 blocks each
    decision = schedule("fcfs", pending, workers, view=make_view())
    # roomy 12 -> 10 ties with a and b but runs 2 by then: a, b, then roomy (2 running) before busy
    assert placed(decision) == [("r0", "roomy"), ("r1", "a"), ("r2", "b"), ("r3", "roomy")]


def test_never_places_where_the_kernel_says_the_blocks_are_missing() -> None:
    # 64 prompt chars (16 tokens) + 48 tokens = 64 tokens = 4 blocks of 16
    request = make_request("r0", prompt_chars=64, max_tokens=48, prefix_hashes=tuple(PROMPT))
    assert blocks_needed(request, 16) == 4
    workers = [make_worker("w-cached", kv_blocks_free=3), make_worker("w-tight", kv_blocks_free=3)]
    view = make_view({"w-cached": PROMPT})
    assert schedule("fcfs", [request], workers, view=view).placements == []
    workers.append(make_worker("w-room", kv_blocks_free=4))
    assert placed(schedule("fcfs", [request], workers, view=view)) == [("r0", "w-room")]


def test_blocks_are_counted_within_the_batch() -> None:
    workers = [make_worker("w-a", kv_blocks_free=5), make_worker("w-b", kv_blocks_free=4)]
    pending = [make_request(f"r{i}", arrival_seq=i, max_tokens=48) for i in range(3)]  # 3 blocks
    decision = schedule("fcfs", pending, workers, view=make_view())
    assert placed(decision) == [("r0", "w-a"), ("r1", "w-b")]  # then 2 and 1 left: r2 waits


def test_a_worker_the_view_does_not_list_yet_counts_as_having_plenty_of_blocks() -> None:
    # it just registered; the kernel's next view will list it. Known-first would
    # send every request of a burst to the workers that were there before it.
    workers = [make_worker("known", kv_blocks_free=1), make_worker("new", kv_blocks_free=None)]
    pending = [
        make_request("small", arrival_seq=0, max_tokens=16),
        make_request("large", arrival_seq=1, max_tokens=160),
    ]
    decision = schedule("fcfs", pending, workers, view=make_view())
    assert placed(decision) == [("small", "new"), ("large", "new")]


def test_while_every_cache_has_plenty_of_blocks_the_least_loaded_worker_wins() -> None:
    workers = [
        make_worker("roomy-busy", kv_blocks_free=KV_PLENTY_BLOCKS * 10, num_running=3),
        make_worker("plenty-idle", kv_blocks_free=KV_PLENTY_BLOCKS * 2, num_running=0),
        make_worker("tight-idle", kv_blocks_free=KV_PLENTY_BLOCKS // 2, num_running=0),
    ]
    pending = [make_request(f"r{i}", arrival_seq=i, max_tokens=16) for i in range(3)]
    decision = schedule("fcfs", pending, workers, view=make_view())
    # past KV_PLENTY_BLOCKS more free blocks count for nothing: the idle worker wins
    # while it is less loaded; a worker below plenty ranks by its free blocks, lower
    assert [worker for _, worker in placed(decision)] == ["plenty-idle", "plenty-idle", "plenty-idle"]


def test_without_a_view_the_least_loaded_worker_wins() -> None:
    workers = [
        make_worker("w2", num_running=1),
        make_worker("w1", num_running=1),
        make_worker("w0", num_running=2),
    ]
    pending = [make_request(f"r{i}", arrival_seq=i, max_tokens=4000) for i in range(3)]
    decision = schedule("fcfs", pending, workers)
    assert placed(decision) == [("r0", "w1"), ("r1", "w2"), ("r2", "w0")]


def test_a_prefix_cached_on_many_workers_still_picks_the_roomiest_of_them() -> None:
    workers = [make_worker(f"w{i:03}", kv_blocks_free=100 + i) for i in range(400)]
    holders = [f"w{i:03}" for i in range(0, 400, 7)]  # 58 of 400: past the scan, into the heap walk
    view = make_view({worker_id: PROMPT[:2] for worker_id in holders})
    decision = schedule("fcfs", [make_request("r0", prefix_hashes=tuple(PROMPT))], workers, view=view)
    assert placed(decision) == [("r0", holders[-1])]


def test_requests_go_only_to_workers_serving_their_model() -> None:
    workers = [make_worker("w-tiny", models=("tiny",)), make_worker("w-big", models=("big",), num_running=5)]
    pending = [
        make_request("r-big", arrival_seq=0, model="big"),
        make_request("r-tiny", arrival_seq=1, model="tiny"),
        make_request("r-any", arrival_seq=2, model=""),
    ]
    decision = schedule("fcfs", pending, workers)
    assert placed(decision) == [("r-big", "w-big"), ("r-tiny", "w-tiny"), ("r-any", "w-tiny")]


def test_a_cached_prefix_on_a_worker_of_another_model_is_ignored() -> None:
    workers = [
        make_worker("w-big", models=("big",), kv_blocks_free=9),
        make_worker("w-tiny", models=("tiny",), kv_blocks_free=9),
    ]
    view = make_view({"w-big": PROMPT})
    decision = schedule(
        "fcfs", [make_request("r0", model="tiny", prefix_hashes=tuple(PROMPT))], workers, view=view
    )
    assert placed(decision) == [("r0", "w-tiny")]


def test_requests_that_fit_nowhere_stay_pending_and_later_ones_still_place() -> None:
    workers = [
        make_worker("w-tiny", models=("tiny",), max_num_seqs=1),
        make_worker("w-big", models=("big",), num_running=2, max_num_seqs=2),
    ]
    pending = [
        make_request("r-big", arrival_seq=0, model="big"),
        make_request("r-unknown", arrival_seq=1, model="nobody-serves-this"),
        make_request("r-tiny", arrival_seq=2, model="tiny"),
        make_request("r-tiny-2", arrival_seq=3, model="tiny"),
    ]
    assert placed(schedule("fcfs", pending, workers)) == [("r-tiny", "w-tiny")]


def test_slots_are_counted_within_the_batch() -> None:
    workers = [make_worker("w1", max_num_seqs=2), make_worker("w2", num_running=1, max_num_seqs=2)]
    pending = [make_request(f"r{i}", arrival_seq=i) for i in range(5)]
    # w1 is least loaded (0), then w1 and w2 tie at 1 (w1 by id), then only w2 has room
    assert placed(schedule("fcfs", pending, workers)) == [("r0", "w1"), ("r1", "w1"), ("r2", "w2")]


def test_worker_serving_many_models_is_not_overbooked() -> None:
    workers = [make_worker("multi", models=("a", "b"), max_num_seqs=2)]
    pending = [
        make_request("ra", arrival_seq=0, model="a"),
        make_request("rb", arrival_seq=1, model="b"),
        make_request("rany", arrival_seq=2),
    ]
    assert [p[0] for p in placed(schedule("fcfs", pending, workers))] == ["ra", "rb"]


# ---------------------------------------------------------------- from the kernel's view


def decide_one(request: pb.PendingRequest, view: pb.ResourceView, *worker_ids: str) -> list:
    batch = pb.ScheduleRequest(batch_id=1, pending=[request])
    for worker_id in worker_ids:
        batch.workers.add(worker_id=worker_id, models=["tiny"], max_num_seqs=4)
    return [(p.request_id, p.worker_id) for p in decide(make_policy("fcfs"), batch, view).placements]


def test_a_request_larger_than_any_cache_waits_for_the_largest_one_to_empty() -> None:
    huge = pb.PendingRequest(request_id="huge", model="tiny", max_tokens=4096)  # 256 blocks
    view = pb.ResourceView(block_size=16)
    view.workers.add(worker_id="w-small", kv_blocks_total=10)
    view.workers.add(worker_id="w-big", kv_blocks_total=20, kv_blocks_used=1)
    assert decide_one(huge, view, "w-small", "w-big") == []
    view.workers[1].kv_blocks_used = 0
    assert decide_one(huge, view, "w-small", "w-big") == [("huge", "w-big")]


def test_a_worker_without_a_kv_ledger_is_not_held_back_by_blocks() -> None:
    view = pb.ResourceView(block_size=16)
    view.workers.add(worker_id="w-embed", kv_blocks_total=0)  # embedding models keep no cache
    request = pb.PendingRequest(request_id="r0", model="tiny", max_tokens=64)
    assert decide_one(request, view, "w-embed") == [("r0", "w-embed")]


def test_a_faster_worker_takes_more_requests_in_proportion_to_its_speed() -> None:
    """Weighted least-connections: 10 times the speed, 10 times the running requests."""
    workers = [
        make_worker("gpu", max_num_seqs=32, tokens_per_s=100.0),
        make_worker("cpu", max_num_seqs=32, tokens_per_s=10.0),
    ]
    pending = [make_request(f"r{i}", arrival_seq=i) for i in range(22)]
    counts = Counter(worker for _, worker in placed(schedule("fcfs", pending, workers)))
    assert counts == {"gpu": 20, "cpu": 2}


def test_speed_weighs_the_load_already_running() -> None:
    workers = [
        make_worker("fast-busy", num_running=9, max_num_seqs=16, tokens_per_s=100.0),  # (9 + 1) / 100 = 0.1
        make_worker("slow-idle", num_running=0, tokens_per_s=5.0),  # (0 + 1) / 5 = 0.2
    ]
    assert placed(schedule("fcfs", [make_request("r0")], workers)) == [("r0", "fast-busy")]


def test_an_unmeasured_worker_counts_at_the_mean_speed_of_the_measured_ones() -> None:
    workers = [
        make_worker("new", num_running=2),  # counts at (30 + 10) / 2 = 20: (2 + 1) / 20 = 0.15
        make_worker("fast", num_running=3, tokens_per_s=30.0),  # (3 + 1) / 30 = 0.133
        make_worker("slow", num_running=0, tokens_per_s=10.0),  # (0 + 1) / 10 = 0.1
    ]
    pending = [make_request(f"r{i}", arrival_seq=i) for i in range(3)]
    # slow (0.1), then fast (0.133), then new (0.15) before slow again (0.2) or fast (0.167)
    assert placed(schedule("fcfs", pending, workers)) == [("r0", "slow"), ("r1", "fast"), ("r2", "new")]


def test_with_no_speed_measured_the_least_loaded_still_wins() -> None:
    workers = [make_worker("busy", num_running=4), make_worker("idle", num_running=1)]
    assert placed(schedule("fcfs", [make_request("r0")], workers)) == [("r0", "idle")]
