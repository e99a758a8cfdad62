"""The KV-cache blocks a batched engine may hold: a fixed budget, counted per request.

Plain policy, no tensors, so tests drive it without a model: the engine asks
`can_hold(request_id, num_tokens)` before a step adds tokens to a request's
cache and calls `hold` after, which asserts what the check promised; `free`
returns every block of a request. The block size is
the kernel's and the budget is what the kernel granted this worker, so the
engine's count and the kernel's ledger speak the same units.

Blocks are counted, not placed: the cache itself is one padded tensor pair per
layer (`workers.batch_cache`), so there are no block ids to hand out.
"""

from __future__ import annotations

import math


class KvBudget:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        assert num_blocks >= 0 and block_size > 0, (num_blocks, block_size)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_tokens_held: dict[str, int] = {}  # request id -> tokens its blocks cover
        self.num_blocks_held: dict[str, int] = {}  # request id -> blocks it holds
        self.num_used_blocks = 0  # their sum, kept as they change

    # ---------------------------------------------------------------- sizes

    def blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    def can_ever_hold(self, num_tokens: int) -> bool:
        """Whether one request of `num_tokens` fits the whole budget."""
        return self.blocks_for(num_tokens) <= self.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.num_blocks - self.num_used_blocks

    @property
    def is_over_budget(self) -> bool:
        """True only after `resize` shrank the budget below what is held."""
        return self.num_used_blocks > self.num_blocks

    # ---------------------------------------------------------------- check, then act

    def num_blocks_to_add(self, request_id: str, num_tokens: int) -> int:
        return max(self.blocks_for(num_tokens) - self.num_blocks_held.get(request_id, 0), 0)

    def can_hold(self, request_id: str, num_tokens: int) -> bool:
        """Whether the request can hold `num_tokens` tokens in all (not: more)."""
        return self.num_blocks_to_add(request_id, num_tokens) <= self.num_free_blocks

    def hold(self, request_id: str, num_tokens: int) -> int:
        """Grow the request's blocks to cover `num_tokens` tokens; return the blocks added."""
        num_added = self.num_blocks_to_add(request_id, num_tokens)
        assert num_added <= self.num_free_blocks, (
            f"request {request_id} needs {num_added} more KV blocks, {self.num_free_blocks} free: "
            f"check can_hold"
        )
        self.num_blocks_held[request_id] = self.num_blocks_held.get(request_id, 0) + num_added
        self.num_used_blocks += num_added
        self.num_tokens_held[request_id] = max(self.num_tokens_held.get(request_id, 0), num_tokens)
        return num_added

    def free(self, request_id: str) -> int:
        """Return every block of the request; how many it held (0 if none)."""
        self.num_tokens_held.pop(request_id, None)
        num_freed = self.num_blocks_held.pop(request_id, 0)
        self.num_used_blocks -= num_freed
        return num_freed

    def clear(self) -> None:
        self.num_tokens_held.clear()
        self.num_blocks_held.clear()
        self.num_used_blocks = 0

    def resize(self, num_blocks: int, block_size: int) -> None:
        """Adopt a new budget (the kernel's geometry); recount what each request holds.
        The budget may now be exceeded (`is_over_budget`): the engine preempts until it is not."""
        assert num_blocks >= 0 and block_size > 0, (num_blocks, block_size)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.num_blocks_held = {
            request_id: self.blocks_for(num_tokens) for request_id, num_tokens in self.num_tokens_held.items()
        }
        self.num_used_blocks = sum(self.num_blocks_held.values())
