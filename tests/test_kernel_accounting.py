"""The kernel's KV ledger and worker registry, driven without sockets."""

from __future__ import annotations

import pytest

from kernel_svc.accounting import KvLedger
from kernel_svc.registry import WorkerRegistry, WorkerSpec, build_view

BLOCK_SIZE = 16
HEARTBEAT_INTERVAL_MS = 1000  # a worker is dead after 3 s of silence


def make_ledger(num_blocks: int = 4, worker_id: str = "w1") -> KvLedger:
    ledger = KvLedger()
    ledger.add_worker(worker_id, num_blocks)
    return ledger


def make_registry() -> WorkerRegistry:
    return WorkerRegistry(BLOCK_SIZE, HEARTBEAT_INTERVAL_MS)


def register(
    registry: WorkerRegistry, worker_id: str = "w1", num_blocks: int = 4, now_s: float = 0.0
) -> None:
    spec = WorkerSpec(worker_id, models=("tiny",), kv_capacity_tokens=num_blocks * BLOCK_SIZE, max_num_seqs=8)
    registry.require_worker(spec, now_s)


def test_allocate_and_free_return_exact_block_ids() -> None:
    ledger = make_ledger(num_blocks=4)
    first = ledger.allocate("w1", "r1", 2)
    second = ledger.allocate("w1", "r2", 1)
    assert first.block_ids == (0, 1) and first.num_free_blocks == 2
    assert second.block_ids == (2,) and second.num_free_blocks == 1
    assert ledger.free("w1", "r1") == [0, 1]
    assert ledger.num_free_blocks("w1") == 3
    # freed blocks go to the back of the free list and are handed out again
    assert ledger.allocate("w1", "r3", 3).block_ids == (3, 0, 1)


def test_cannot_allocate_more_than_free_and_allocate_asserts() -> None:
    ledger = make_ledger(num_blocks=2)
    ledger.allocate("w1", "r1", 2)
    assert not ledger.can_allocate("w1", 1)
    assert ledger.can_allocate("w1", 0)
    with pytest.raises(AssertionError):
        ledger.allocate("w1", "r2", 1)
    assert ledger.block_ids("w1", "r2") == ()


def test_cannot_allocate_on_unknown_worker() -> None:
    assert not make_ledger().can_allocate("nobody", 1)


def test_request_grows_by_allocating_again() -> None:
    ledger = make_ledger(num_blocks=4)
    ledger.allocate("w1", "r1", 1)
    grown = ledger.allocate("w1", "r1", 2)
    assert grown.block_ids == (0, 1, 2)
    assert grown.new_block_ids == (1, 2)
    assert ledger.num_requests("w1") == 1
    assert ledger.free("w1", "r1") == [0, 1, 2]


def test_freeing_an_unknown_request_frees_nothing() -> None:
    ledger = make_ledger()
    assert ledger.free("w1", "never-allocated") == []
    assert ledger.num_free_blocks("w1") == 4


def test_expired_lease_frees_its_blocks() -> None:
    ledger = make_ledger(num_blocks=4)
    ledger.allocate("w1", "leased", 2, lease_s=5.0, now_s=100.0)
    ledger.allocate("w1", "held", 1)
    assert ledger.purge_expired_leases(104.9) == []
    assert ledger.purge_expired_leases(105.0) == [("w1", "leased", [0, 1])]
    assert ledger.block_ids("w1", "held") == (2,)
    assert ledger.num_free_blocks("w1") == 3


def test_renewed_lease_outlives_the_first_expiry() -> None:
    ledger = make_ledger(num_blocks=4)
    ledger.allocate("w1", "r1", 1, lease_s=5.0, now_s=0.0)
    ledger.allocate("w1", "r1", 1, lease_s=5.0, now_s=4.0)  # grow and renew
    assert ledger.purge_expired_leases(6.0) == []
    assert ledger.purge_expired_leases(9.0) == [("w1", "r1", [0, 1])]


def test_register_divides_capacity_into_blocks() -> None:
    registry = make_registry()
    registry.require_worker(WorkerSpec("w1", kv_capacity_tokens=100), now_s=0.0)
    assert registry.ledger.num_blocks_total("w1") == 100 // BLOCK_SIZE


def test_registering_again_frees_what_the_last_run_held() -> None:
    registry = make_registry()
    register(registry, "w1", num_blocks=4)
    registry.ledger.allocate("w1", "r1", 3)
    _, freed_block_ids = registry.require_worker(
        WorkerSpec("w1", kv_capacity_tokens=2 * BLOCK_SIZE), now_s=1.0
    )
    assert freed_block_ids == [0, 1, 2]
    assert registry.ledger.num_free_blocks("w1") == 2


def test_silent_worker_is_purged_and_its_blocks_reclaimed() -> None:
    registry = make_registry()
    register(registry, "quiet", now_s=0.0)
    register(registry, "chatty", now_s=0.0)
    registry.ledger.allocate("quiet", "r1", 3)
    assert registry.refresh("chatty", now_s=2.5, num_running=1)
    assert registry.purge_expired(now_s=3.0) == {}
    assert registry.purge_expired(now_s=3.1) == {"quiet": [0, 1, 2]}
    assert not registry.has_worker("quiet") and not registry.ledger.has_worker("quiet")
    assert registry.has_worker("chatty")


def test_deleted_worker_frees_blocks_and_is_unknown() -> None:
    registry = make_registry()
    register(registry, "w1")
    registry.ledger.allocate("w1", "r1", 2)
    assert registry.delete_worker("w1") == [0, 1]
    assert not registry.refresh("w1", now_s=1.0)
    assert registry.delete_worker("w1") == []


def test_view_describes_workers_and_its_version_grows_with_each_change() -> None:
    registry = make_registry()
    versions = [build_view(registry, published_at_s=0.0).version]

    register(registry, "w1", num_blocks=4)
    versions.append(build_view(registry, 0.0).version)
    registry.ledger.allocate("w1", "r1", 3)
    versions.append(build_view(registry, 0.0).version)
    registry.refresh("w1", now_s=1.0, num_running=1)
    view = build_view(registry, published_at_s=12.5)
    versions.append(view.version)

    assert versions == sorted(set(versions)), f"versions must strictly grow: {versions}"
    (worker,) = view.workers
    assert (
        worker.worker_id,
        list(worker.models),
        worker.kv_blocks_total,
        worker.kv_blocks_used,
        worker.num_running,
        worker.max_num_seqs,
        worker.num_requests_holding_blocks,
    ) == ("w1", ["tiny"], 4, 3, 1, 8, 1)
    assert view.block_size == BLOCK_SIZE and view.published_at_s == 12.5


def test_view_version_stays_when_nothing_changes() -> None:
    registry = make_registry()
    register(registry, "w1")
    version = build_view(registry, 0.0).version
    registry.refresh("w1", now_s=1.0, num_running=0)  # alive, same running count
    registry.ledger.free("w1", "unknown")
    assert build_view(registry, 1.0).version == version


def test_tenant_usage_and_prefix_index_reach_the_view():
    from kernel_svc.registry import WorkerRegistry, WorkerSpec, build_view

    registry = WorkerRegistry(block_size=16, heartbeat_interval_ms=1000)
    registry.require_worker(WorkerSpec("w1", kv_capacity_tokens=16 * 10), now_s=0.0)
    registry.ledger.allocate("w1", "r1", 3, tenant="alice")
    registry.ledger.allocate("w1", "r2", 2, tenant="alice")
    registry.ledger.allocate("w1", "r3", 1, tenant="bob")
    assert registry.report_prefixes("w1", [11, 22], now_s=1.0)
    assert not registry.report_prefixes("ghost", [1], now_s=1.0)
    view = build_view(registry, published_at_s=0.0)
    assert list(view.workers[0].cached_prefix_hashes) == [11, 22]
    assert [(t.tenant, t.kv_blocks_used, t.num_requests_holding_blocks) for t in view.tenants] == [
        ("alice", 5, 2),
        ("bob", 1, 1),
    ]
