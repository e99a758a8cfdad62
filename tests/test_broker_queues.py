"""Tiered queues with tenant lanes, and the worker pool, driven without sockets."""

import itertools

from broker.queues import TieredQueue
from broker.worker_pool import WorkerPool
from llmos.wire import pb

_seq = itertools.count(1)


def make_queue(max_depth: int = 3) -> TieredQueue:
    return TieredQueue(
        ["interactive", "standard", "batch"],
        {"interactive": max_depth, "standard": max_depth, "batch": max_depth},
    )


def push(queue: TieredQueue, request_id: str, tier: str, tenant: str = "t") -> int:
    return queue.push(request_id, tier, tenant, next(_seq))


def test_higher_tiers_come_first_then_fifo():
    queue = make_queue()
    push(queue, "b1", "batch")
    push(queue, "i1", "interactive")
    push(queue, "s1", "standard")
    push(queue, "i2", "interactive")
    assert list(queue.in_order(limit_per_tier=10)) == ["i1", "i2", "s1", "b1"]


def test_push_returns_position_and_depth_is_bounded_per_tier():
    queue = TieredQueue(["interactive", "batch"], {"interactive": 5, "batch": 2})
    assert push(queue, "a", "batch") == 0
    assert push(queue, "b", "batch", tenant="other") == 1
    assert not queue.has_room("batch")
    assert queue.has_room("interactive")


def test_requeued_requests_go_first_even_past_max_depth():
    queue = make_queue(max_depth=2)
    push(queue, "a", "batch")
    push(queue, "b", "batch")
    queue.push_front("old2", "batch", "t", arrival_seq=-1)
    queue.push_front("old1", "batch", "t", arrival_seq=-2)
    assert list(queue.in_order(limit_per_tier=10)) == ["old1", "old2", "a", "b"]
    assert queue.depth("batch") == 4


def test_remove_from_middle_and_front():
    queue = make_queue()
    push(queue, "a", "standard")
    push(queue, "b", "standard")
    queue.push_front("c", "standard", "t", arrival_seq=0)
    assert queue.remove("b") and queue.remove("c")
    assert not queue.remove("missing")
    assert list(queue.in_order(limit_per_tier=10)) == ["a"]
    assert len(queue) == 1 and "a" in queue and "b" not in queue
    assert queue.depth("standard") == 1


def test_in_order_limits_each_tier():
    queue = make_queue(max_depth=10)
    for i in range(5):
        push(queue, f"i{i}", "interactive")
        push(queue, f"b{i}", "batch")
    assert list(queue.in_order(limit_per_tier=2)) == ["i0", "i1", "b0", "b1"]


def test_every_tenant_is_shown_while_one_floods_the_tier():
    queue = make_queue(max_depth=100)
    for i in range(50):
        push(queue, f"flood{i}", "batch", tenant="flooder")
    push(queue, "small0", "batch", tenant="small")
    push(queue, "small1", "batch", tenant="small")
    shown = list(queue.in_order(limit_per_tier=6))
    assert shown == ["flood0", "flood1", "flood2", "flood3", "small0", "small1"]


def register(worker_id: str, models=("m",), slots: int = 2) -> pb.WorkerRegister:
    return pb.WorkerRegister(
        worker_id=worker_id, models=list(models), max_num_seqs=slots, heartbeat_interval_ms=100
    )


def test_pool_expires_silent_workers_after_liveness_intervals():
    pool = WorkerPool(default_heartbeat_interval_s=1.0)
    pool.require_worker(b"w1", register("w1"), now_s=0.0)
    pool.require_worker(b"w2", register("w2"), now_s=0.0)
    pool.refresh(b"w2", now_s=0.25)
    expired = pool.purge_expired(now_s=0.31)  # 3 x 100 ms after w1's last sign of life
    assert [w.worker_id for w in expired] == ["w1"]
    assert [w.worker_id for w in pool] == ["w2"]
    assert pool.models_by_task == {pb.TASK_KIND_GENERATE: {"m"}}


def test_pool_records_models_by_task():
    pool = WorkerPool(default_heartbeat_interval_s=1.0)
    embedder = register("e1", models=("minilm",))
    embedder.task = pb.TASK_KIND_EMBED
    pool.require_worker(b"e1", embedder, now_s=0.0)
    worker = pool.require_worker(b"w1", register("w1", models=("tiny",), slots=1), now_s=0.0)
    assert pool.models_by_task == {pb.TASK_KIND_EMBED: {"minilm"}, pb.TASK_KIND_GENERATE: {"tiny"}}
    assert worker.serves("tiny") and not worker.serves("minilm")
    assert worker.has_capacity
    worker.running_ids.add("r1")
    assert not worker.has_capacity


def test_rate_meter_averages_over_its_window():
    from broker.rates import WINDOW_S, RateMeter

    meter = RateMeter()
    meter.add(10, now_s=100.0)
    meter.add(15, now_s=101.2)
    assert meter.per_s(now_s=102.0) == 25 / WINDOW_S
    assert meter.per_s(now_s=100.0 + WINDOW_S + 1.0) == 15 / WINDOW_S
    assert meter.per_s(now_s=200.0) == 0.0
