"""Tiered FIFO queues of request ids (plain data, no sockets).

Higher tiers come first. Inside a tier, re-queued requests (their worker died)
come before fresh ones. Insertion-ordered dicts make cancel (remove from the
middle) and re-queue (push to the front) O(1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class _Tier:
    front: dict[str, None] = field(default_factory=dict)  # newest push_front last
    back: dict[str, None] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.front) + len(self.back)

    def __iter__(self) -> Iterator[str]:
        yield from reversed(self.front)
        yield from self.back


class TieredQueue:
    def __init__(self, tiers: list[str], max_depth: int) -> None:
        assert tiers, "at least one tier"
        self.tiers = list(tiers)
        self.max_depth = max_depth
        self._queues: dict[str, _Tier] = {tier: _Tier() for tier in tiers}
        self._tier_of: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._tier_of)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._tier_of

    def rank(self, tier: str) -> int:
        return self.tiers.index(tier)

    def depth(self, tier: str) -> int:
        return len(self._queues[tier])

    def has_room(self, tier: str) -> bool:
        return self.depth(tier) < self.max_depth

    def push(self, request_id: str, tier: str) -> int:
        """Append an admitted request; returns its 0-based position in the tier."""
        assert self.has_room(tier), f"tier {tier} is full"
        assert request_id not in self._tier_of, f"request {request_id} is queued twice"
        self._queues[tier].back[request_id] = None
        self._tier_of[request_id] = tier
        return self.depth(tier) - 1

    def push_front(self, request_id: str, tier: str) -> None:
        """Put an already admitted request at the head of its tier.

        It may exceed max_depth: it was accepted once and is never dropped.
        """
        assert request_id not in self._tier_of, f"request {request_id} is queued twice"
        self._queues[tier].front[request_id] = None
        self._tier_of[request_id] = tier

    def remove(self, request_id: str) -> bool:
        tier = self._tier_of.pop(request_id, None)
        if tier is None:
            return False
        queue = self._queues[tier]
        if queue.front.pop(request_id, False) is False:
            del queue.back[request_id]
        return True

    def in_order(self, limit_per_tier: int) -> Iterator[str]:
        """Request ids, highest tier first, head first within a tier."""
        for tier in self.tiers:
            for count, request_id in enumerate(self._queues[tier]):
                if count >= limit_per_tier:
                    break
                yield request_id
