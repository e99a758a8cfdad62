"""Tiered queues and the worker registry, driven without sockets."""

from broker.queues import TieredQueue
from broker.registry import WorkerRegistry
from llmos.wire import pb


def make_queue(max_depth: int = 3) -> TieredQueue:
    return TieredQueue(["interactive", "standard", "batch"], max_depth)


def test_higher_tiers_come_first_then_fifo():
    queue = make_queue()
    queue.push("b1", "batch")
    queue.push("i1", "interactive")
    queue.push("s1", "standard")
    queue.push("i2", "interactive")
    assert list(queue.in_order(limit_per_tier=10)) == ["i1", "i2", "s1", "b1"]


def test_push_returns_position_and_depth_is_bounded():
    queue = make_queue(max_depth=2)
    assert queue.push("a", "batch") == 0
    assert queue.push("b", "batch") == 1
    assert not queue.has_room("batch")
    assert queue.has_room("interactive")


def test_requeued_requests_go_first_even_past_max_depth():
    queue = make_queue(max_depth=2)
    queue.push("a", "batch")
    queue.push("b", "batch")
    queue.push_front("old2", "batch")
    queue.push_front("old1", "batch")
    assert list(queue.in_order(limit_per_tier=10)) == ["old1", "old2", "a", "b"]
    assert queue.depth("batch") == 4


def test_remove_from_middle_and_front():
    queue = make_queue()
    queue.push("a", "standard")
    queue.push("b", "standard")
    queue.push_front("c", "standard")
    assert queue.remove("b") and queue.remove("c")
    assert not queue.remove("missing")
    assert list(queue.in_order(limit_per_tier=10)) == ["a"]
    assert len(queue) == 1 and "a" in queue and "b" not in queue


def test_in_order_limits_each_tier():
    queue = make_queue(max_depth=10)
    for i in range(5):
        queue.push(f"i{i}", "interactive")
        queue.push(f"b{i}", "batch")
    assert list(queue.in_order(limit_per_tier=2)) == ["i0", "i1", "b0", "b1"]


def register(worker_id: str, models=("m",), slots: int = 2) -> pb.WorkerRegister:
    return pb.WorkerRegister(worker_id=worker_id, models=list(models), max_num_seqs=slots,
                             heartbeat_interval_ms=100)


def test_registry_expires_silent_workers_after_liveness_intervals():
    registry = WorkerRegistry(default_heartbeat_interval_s=1.0)
    registry.require_worker(b"w1", register("w1"), now_s=0.0)
    registry.require_worker(b"w2", register("w2"), now_s=0.0)
    registry.refresh(b"w2", now_s=0.25)
    expired = registry.purge_expired(now_s=0.31)  # 3 x 100 ms after w1's last sign of life
    assert [w.worker_id for w in expired] == ["w1"]
    assert [w.worker_id for w in registry] == ["w2"]
    assert registry.known_models == {"m"}


def test_registry_capacity_by_model():
    registry = WorkerRegistry(default_heartbeat_interval_s=1.0)
    worker = registry.require_worker(b"w1", register("w1", models=("a",), slots=1), now_s=0.0)
    assert registry.has_capacity_for("a") and registry.has_capacity_for("")
    assert not registry.has_capacity_for("b")
    worker.running_ids.add("r1")
    assert not registry.has_capacity_for("a")
