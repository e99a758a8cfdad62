"""The KV block ledger: which request holds which blocks on which worker.

Plain data in, plain data out; no sockets, so tests drive it directly. Resource
calls come in check-then-act pairs: `can_allocate` says whether a grant fits,
`allocate` asserts what the check promised and grants it. Block ids are real ids taken from each
worker's free list and put back on `free`, so a worker can map them 1:1 onto
its KV cache pages.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

# The lease heap is rebuilt from the live leases once it holds more than this many
# entries, and more than twice as many as it held after its last rebuild.
MIN_LEASE_HEAP_TO_COMPACT = 1024


@dataclass(frozen=True)
class Allocation:
    """What one `allocate` granted. Owned by the ledger: callers hand back the
    request id, never the block ids, to free them."""

    worker_id: str
    request_id: str
    block_ids: tuple[int, ...]  # every block the request now holds, oldest first
    new_block_ids: tuple[int, ...]  # the blocks this call added
    num_free_blocks: int  # the worker's free blocks after this call
    expires_at_s: float | None  # None: held while the worker is alive


@dataclass
class _Holding:
    block_ids: list[int]
    expires_at_s: float | None = None
    tenant: str = ""


@dataclass
class _WorkerBlocks:
    """A worker's blocks. The free list is lazy: ids never granted yet are the range
    [next_fresh_id, num_blocks_total), so registering a worker costs the same whatever
    its size, and the ledger holds one int per block in use, not per block. Fresh ids
    go before returned ones, the order a full free list would give."""

    num_blocks_total: int
    next_fresh_id: int = 0
    returned_block_ids: deque[int] = field(default_factory=deque)
    holdings: dict[str, _Holding] = field(default_factory=dict)

    @property
    def num_free_blocks(self) -> int:
        return self.num_blocks_total - self.next_fresh_id + len(self.returned_block_ids)

    def take(self, num_blocks: int) -> list[int]:
        assert num_blocks <= self.num_free_blocks
        num_fresh = min(num_blocks, self.num_blocks_total - self.next_fresh_id)
        block_ids = list(range(self.next_fresh_id, self.next_fresh_id + num_fresh))
        self.next_fresh_id += num_fresh
        block_ids += [self.returned_block_ids.popleft() for _ in range(num_blocks - num_fresh)]
        return block_ids


class KvLedger:
    """Per-worker KV block accounting with optional leases.

    `version` grows with every change, so a view built from the ledger can say
    whether anything moved since the last one.
    """

    def __init__(self) -> None:
        self._workers: dict[str, _WorkerBlocks] = {}
        # (expires_at_s, worker_id, request_id); entries go stale when a lease is
        # renewed or its blocks are freed and are skipped when popped
        self._lease_heap: list[tuple[float, str, str]] = []
        self._max_lease_heap_len = MIN_LEASE_HEAP_TO_COMPACT
        self.version = 0

    # ---------------------------------------------------------------- workers

    def has_worker(self, worker_id: str) -> bool:
        return worker_id in self._workers

    def add_worker(self, worker_id: str, num_blocks_total: int) -> None:
        assert worker_id not in self._workers, f"worker {worker_id} already has blocks"
        assert num_blocks_total >= 0
        self._workers[worker_id] = _WorkerBlocks(num_blocks_total)
        self.version += 1

    def remove_worker(self, worker_id: str) -> list[int]:
        """Forget a worker; return the block ids its requests held."""
        blocks = self._workers.pop(worker_id)
        self.version += 1
        return [block_id for holding in blocks.holdings.values() for block_id in holding.block_ids]

    # ---------------------------------------------------------------- blocks

    def num_blocks_total(self, worker_id: str) -> int:
        return self._workers[worker_id].num_blocks_total

    def num_free_blocks(self, worker_id: str) -> int:
        return self._workers[worker_id].num_free_blocks

    def num_used_blocks(self, worker_id: str) -> int:
        blocks = self._workers[worker_id]
        return blocks.num_blocks_total - blocks.num_free_blocks

    def num_requests(self, worker_id: str) -> int:
        return len(self._workers[worker_id].holdings)

    def num_blocks_held(self, worker_id: str, request_id: str) -> int:
        """How many blocks the request holds; 0 for a worker or request not here."""
        blocks = self._workers.get(worker_id)
        holding = blocks.holdings.get(request_id) if blocks is not None else None
        return len(holding.block_ids) if holding else 0

    def block_ids(self, worker_id: str, request_id: str) -> tuple[int, ...]:
        holding = self._workers[worker_id].holdings.get(request_id)
        return tuple(holding.block_ids) if holding else ()

    def can_allocate(self, worker_id: str, num_blocks: int) -> bool:
        blocks = self._workers.get(worker_id)
        return blocks is not None and 0 <= num_blocks <= blocks.num_free_blocks

    def allocate(
        self,
        worker_id: str,
        request_id: str,
        num_blocks: int,
        lease_s: float | None = None,
        now_s: float = 0.0,
        tenant: str = "",
    ) -> Allocation:
        """Grant `num_blocks` more blocks to `request_id` (a request may grow).

        Every call restates the lease: `lease_s` seconds from `now_s`, or None
        to hold the blocks while the worker lives. Allocating 0 blocks to a
        request that holds some only renews its lease.
        """
        assert self.can_allocate(worker_id, num_blocks), (
            f"worker {worker_id} cannot grant {num_blocks} blocks to {request_id}"
        )
        blocks = self._workers[worker_id]
        holding = blocks.holdings.get(request_id)
        if holding is None and num_blocks == 0:
            return Allocation(worker_id, request_id, (), (), blocks.num_free_blocks, None)
        if holding is None:
            holding = blocks.holdings[request_id] = _Holding([], tenant=tenant)
        new_block_ids = blocks.take(num_blocks)
        holding.block_ids += new_block_ids
        holding.expires_at_s = None if lease_s is None else now_s + lease_s
        if holding.expires_at_s is not None:
            heapq.heappush(self._lease_heap, (holding.expires_at_s, worker_id, request_id))
            self._compact_lease_heap()
        self.version += 1
        return Allocation(
            worker_id,
            request_id,
            tuple(holding.block_ids),
            tuple(new_block_ids),
            blocks.num_free_blocks,
            holding.expires_at_s,
        )

    def free(self, worker_id: str, request_id: str) -> list[int]:
        """Release every block of a request; an unknown request frees nothing."""
        blocks = self._workers[worker_id]
        holding = blocks.holdings.pop(request_id, None)
        if holding is None:
            return []
        blocks.returned_block_ids.extend(holding.block_ids)
        self.version += 1
        return holding.block_ids

    def tenant_usage(self) -> dict[str, tuple[int, int]]:
        """tenant -> (blocks held, requests holding blocks), over every worker."""
        usage: dict[str, tuple[int, int]] = {}
        for blocks in self._workers.values():
            for holding in blocks.holdings.values():
                num_blocks, num_requests = usage.get(holding.tenant, (0, 0))
                usage[holding.tenant] = (num_blocks + len(holding.block_ids), num_requests + 1)
        return usage

    def _compact_lease_heap(self) -> None:
        """Drop stale heap entries once they outnumber the live ones: a worker renewing
        one lease over and over must not grow the heap for ever."""
        if len(self._lease_heap) <= self._max_lease_heap_len:
            return
        live = [
            (holding.expires_at_s, worker_id, request_id)
            for worker_id, blocks in self._workers.items()
            for request_id, holding in blocks.holdings.items()
            if holding.expires_at_s is not None
        ]
        heapq.heapify(live)
        self._lease_heap = live
        # amortized: the next rebuild waits until the heap doubles again
        self._max_lease_heap_len = max(MIN_LEASE_HEAP_TO_COMPACT, 2 * len(live))

    def purge_expired_leases(self, now_s: float) -> list[tuple[str, str, list[int]]]:
        """Free every request whose lease ran out; return (worker, request, block ids)."""
        freed: list[tuple[str, str, list[int]]] = []
        while self._lease_heap and self._lease_heap[0][0] <= now_s:
            expires_at_s, worker_id, request_id = heapq.heappop(self._lease_heap)
            blocks = self._workers.get(worker_id)
            holding = blocks.holdings.get(request_id) if blocks else None
            if holding is None or holding.expires_at_s != expires_at_s:
                continue  # freed, renewed, or its worker is gone
            freed.append((worker_id, request_id, self.free(worker_id, request_id)))
        return freed
