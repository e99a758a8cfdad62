"""Which dispatched requests may start: a free slot and KV blocks for each.

Plain policy, no sockets, so tests drive it without a worker: the service asks
`next_allocation()`, gets the blocks from the kernel (or, while the kernel is
down, checks `can_allocate_locally`) and reports back with `grant` or `refuse`.
Requests ask in arrival order. The head asks whatever this worker's own count
says (the kernel decides); a request behind allocations in flight asks only
where its blocks fit beside theirs by that count, so a burst of dispatches is
granted in about one round trip to the kernel, not one round trip each, and a
big request at the head is never starved by small ones behind it (nothing
behind a head that does not fit, or that was refused, asks).

A slot counts as free once its request is leaving at the end of the engine's
step in flight (its last token by `max_tokens` or the context length, or told
to preempt): the next request takes its blocks during that step and waits in
the engine's queue, so it runs in the very next step instead of one step later
(the engine starts its next step as soon as it has reported the last one, well
before a KvAllocate round trip could end).
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass

from workers.requests import EngineRequest


class AllocationStatus(enum.Enum):
    QUEUED = "queued"  # asks for its blocks once it is the head and a slot is free
    ASKING = "asking"  # a KvAllocate for it is in flight
    REFUSED = "refused"  # the kernel said NOT_ENOUGH_BLOCKS: it asks again after a free (unblock)


# a granted request leaves the queue (from ASKING, or QUEUED while the kernel is down)
TRANSITIONS: dict[AllocationStatus, frozenset[AllocationStatus]] = {
    AllocationStatus.QUEUED: frozenset({AllocationStatus.ASKING}),
    AllocationStatus.ASKING: frozenset(
        {AllocationStatus.REFUSED, AllocationStatus.QUEUED}
    ),  # QUEUED: the answer never came
    AllocationStatus.REFUSED: frozenset({AllocationStatus.QUEUED}),
}


@dataclass(eq=False)
class WaitingAllocation:
    """A dispatched request waiting for its slot and KV blocks."""

    request: EngineRequest
    num_tokens: int  # prompt + max_tokens, before the max_model_len cap
    num_context_tokens: int = 0  # prompt + tokens made before (a resumed request)
    status: AllocationStatus = AllocationStatus.QUEUED
    allocate_sent_at_s: float = 0.0

    def move_to(self, status: AllocationStatus) -> None:
        assert status in TRANSITIONS[self.status], (
            f"request {self.request.request_id}: {self.status.name} -> {status.name} is not a transition"
        )
        self.status = status


class AdmissionGate:
    def __init__(self, max_num_seqs: int, max_model_len: int, block_size: int, kv_blocks_total: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.kv_blocks_total = kv_blocks_total
        self.waiting: OrderedDict[str, WaitingAllocation] = OrderedDict()
        self.running: dict[str, int] = {}  # request id -> blocks it holds
        self.tokens_left: dict[str, int] = {}  # running request id -> tokens it may still make
        self.leaving: set[str] = set()  # running requests that end with the step in flight

    # ---------------------------------------------------------------- sizes

    def configure(self, block_size: int, kv_blocks_total: int) -> list[EngineRequest]:
        """Adopt the kernel's block geometry; return (and drop) waiting requests that no longer fit."""
        self.block_size, self.kv_blocks_total = block_size, kv_blocks_total
        too_large = [p.request for p in self.waiting.values() if not self.can_ever_fit(p.num_tokens)]
        for request in too_large:
            del self.waiting[request.request_id]
        return too_large

    def blocks_for(self, num_tokens: int) -> int:
        return math.ceil(min(num_tokens, self.max_model_len) / self.block_size)

    def can_ever_fit(self, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) <= self.kv_blocks_total

    @property
    def num_used_blocks(self) -> int:
        return sum(self.running.values())

    @property
    def num_free_blocks(self) -> int:
        return max(self.kv_blocks_total - self.num_used_blocks, 0)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_staying(self) -> int:
        """Running requests that hold their slot after the step in flight."""
        return len(self.running) - len(self.leaving)

    def asking(self) -> list[WaitingAllocation]:
        """The allocations in flight, oldest first."""
        return [a for a in self.waiting.values() if a.status is AllocationStatus.ASKING]

    def is_live(self, request_id: str) -> bool:
        return request_id in self.waiting or request_id in self.running

    # ---------------------------------------------------------------- admission

    def add(self, request: EngineRequest, num_tokens: int, num_context_tokens: int = 0) -> None:
        assert not self.is_live(request.request_id), f"request {request.request_id} is already here"
        assert self.can_ever_fit(num_tokens), "check can_ever_fit first"
        self.waiting[request.request_id] = WaitingAllocation(request, num_tokens, num_context_tokens)

    def next_allocation(self) -> WaitingAllocation | None:
        """The first request not yet asking, if it may ask for blocks now: a slot is
        free beside the running and asking ones, and, behind allocations in flight,
        its blocks fit beside theirs."""
        asking = self.asking()
        if self.num_staying + len(asking) >= self.max_num_seqs:
            return None
        allocation = next((a for a in self.waiting.values() if a.status is not AllocationStatus.ASKING), None)
        if allocation is None or allocation.status is AllocationStatus.REFUSED:
            return None  # a refused one waits for blocks, and everything behind it too
        if not asking:
            return allocation
        num_asked_blocks = sum(self.blocks_for(a.num_tokens) for a in asking)
        if num_asked_blocks + self.blocks_for(allocation.num_tokens) > self.num_free_blocks:
            return None
        return allocation

    def in_flight(self) -> WaitingAllocation | None:
        """The oldest allocation in flight."""
        return next(iter(self.asking()), None)

    def is_asking(self, request_id: str) -> bool:
        allocation = self.waiting.get(request_id)
        return allocation is not None and allocation.status is AllocationStatus.ASKING

    def start_allocation(self, request_id: str, now_s: float) -> int:
        """Mark the next allocation in flight; return the blocks to ask for."""
        allocation = self.waiting[request_id]
        assert allocation is self.next_allocation(), "requests ask in order, when they may"
        allocation.move_to(AllocationStatus.ASKING)
        allocation.allocate_sent_at_s = now_s
        return self.blocks_for(allocation.num_tokens)

    def can_allocate_locally(self, allocation: WaitingAllocation) -> bool:
        return self.blocks_for(allocation.num_tokens) <= self.num_free_blocks

    def grant(self, request_id: str) -> EngineRequest:
        """The blocks are the request's: it runs now."""
        allocation = self.waiting.pop(request_id)
        self.running[request_id] = self.blocks_for(allocation.num_tokens)
        self.tokens_left[request_id] = (
            min(allocation.num_tokens, self.max_model_len) - allocation.num_context_tokens
        )
        return allocation.request

    def refuse(self, request_id: str) -> None:
        """Not enough blocks now: wait at the head until something is freed."""
        self.waiting[request_id].move_to(AllocationStatus.REFUSED)

    def abandon_allocations(self) -> list[WaitingAllocation]:
        """Forget the allocations in flight (their answers will not come); return them."""
        asking = self.asking()
        for allocation in asking:
            allocation.move_to(AllocationStatus.QUEUED)
        return asking

    def unblock(self) -> None:
        """Refused requests may ask again (blocks were freed, or an interval passed)."""
        for allocation in self.waiting.values():
            if allocation.status is AllocationStatus.REFUSED:
                allocation.move_to(AllocationStatus.QUEUED)

    # ---------------------------------------------------------------- leaving

    def count_tokens(self, request_id: str, num_new_tokens: int) -> None:
        """A running request made `num_new_tokens` in the step just reported; while
        the engine runs the next one. With one token left, it leaves with that step."""
        if request_id not in self.running:
            return
        self.tokens_left[request_id] -= num_new_tokens
        if self.tokens_left[request_id] <= 1:
            self.leaving.add(request_id)

    def mark_leaving(self, request_id: str) -> None:
        """A running request was told to preempt: it leaves before the engine's next step."""
        if request_id in self.running:
            self.leaving.add(request_id)

    def release(self, request_id: str) -> bool:
        """Forget a finished or cancelled request; False if it was not here."""
        was_here = (
            self.waiting.pop(request_id, None) is not None or self.running.pop(request_id, None) is not None
        )
        self.tokens_left.pop(request_id, None)
        self.leaving.discard(request_id)
        if was_here:
            self.unblock()
        return was_here

    def clear(self) -> list[str]:
        request_ids = list(self.waiting) + list(self.running)
        self.waiting.clear()
        self.running.clear()
        self.tokens_left.clear()
        self.leaving.clear()
        return request_ids
