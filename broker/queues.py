"""Tiered queues of request ids, with a lane per tenant (plain data, no sockets).

Higher tiers come first. Inside a tier every tenant has its own FIFO lane, so
the scheduler can be shown the head of every tenant's lane (fair share needs
them) even while one tenant floods the tier. Re-queued requests (their worker
died or they were preempted) go to the front of their lane. Insertion-ordered
dicts make cancel (remove from the middle) and re-queue O(1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice


@dataclass
class _Lane:
    front: dict[str, int] = field(default_factory=dict)  # request id -> arrival seq
    back: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.front) + len(self.back)

    def __iter__(self) -> Iterator[tuple[bool, int, str]]:
        """(is re-queued, arrival seq, request id), head first."""
        for request_id, seq in sorted(self.front.items(), key=lambda item: item[1]):
            yield True, seq, request_id
        for request_id, seq in self.back.items():
            yield False, seq, request_id


@dataclass
class _Tier:
    lanes: dict[str, _Lane] = field(default_factory=dict)  # tenant -> lane
    depth: int = 0

    def lane(self, tenant: str) -> _Lane:
        return self.lanes.setdefault(tenant, _Lane())


@dataclass(frozen=True)
class _Place:
    tier: str
    tenant: str


class TieredQueue:
    def __init__(self, tiers: list[str], max_depth: dict[str, int]) -> None:
        assert tiers, "at least one tier"
        self.tiers = list(tiers)
        self.max_depth = dict(max_depth)
        self._tiers: dict[str, _Tier] = {tier: _Tier() for tier in tiers}
        self._place: dict[str, _Place] = {}

    def __len__(self) -> int:
        return len(self._place)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._place

    def rank(self, tier: str) -> int:
        return self.tiers.index(tier)

    def depth(self, tier: str) -> int:
        return self._tiers[tier].depth

    def has_room(self, tier: str) -> bool:
        return self.depth(tier) < self.max_depth[tier]

    def push(self, request_id: str, tier: str, tenant: str, arrival_seq: int) -> int:
        """Append an admitted request; returns its 0-based position in the tier."""
        assert self.has_room(tier), f"tier {tier} is full"
        self._add(request_id, tier, tenant).back[request_id] = arrival_seq
        return self.depth(tier) - 1

    def push_front(self, request_id: str, tier: str, tenant: str, arrival_seq: int) -> None:
        """Put an already admitted request back at the head of its lane.

        It may exceed the tier's depth: it was accepted once and is never dropped.
        """
        self._add(request_id, tier, tenant).front[request_id] = arrival_seq

    def _add(self, request_id: str, tier: str, tenant: str) -> _Lane:
        assert request_id not in self._place, f"request {request_id} is queued twice"
        self._place[request_id] = _Place(tier, tenant)
        self._tiers[tier].depth += 1
        return self._tiers[tier].lane(tenant)

    def remove(self, request_id: str) -> bool:
        place = self._place.pop(request_id, None)
        if place is None:
            return False
        tier = self._tiers[place.tier]
        lane = tier.lanes[place.tenant]
        if lane.front.pop(request_id, None) is None:
            del lane.back[request_id]
        tier.depth -= 1
        if not lane:
            del tier.lanes[place.tenant]
        return True

    def in_order(self, limit_per_tier: int) -> Iterator[str]:
        """Request ids, highest tier first; inside a tier re-queued first, then by arrival.

        A tier with many tenants yields up to `limit_per_tier` ids taken round
        robin from the heads of its lanes, so every tenant is represented.
        """
        for tier in self.tiers:
            lanes = [iter(lane) for lane in self._tiers[tier].lanes.values()]
            if len(lanes) == 1:
                yield from (request_id for _, _, request_id in islice(lanes[0], limit_per_tier))
                continue
            sample: list[tuple[bool, int, str]] = []
            while lanes and len(sample) < limit_per_tier:
                for lane in list(lanes):
                    item = next(lane, None)
                    if item is None:
                        lanes.remove(lane)
                    elif len(sample) < limit_per_tier:
                        sample.append(item)
            sample.sort(key=lambda item: (not item[0], item[1]))
            yield from (request_id for _, _, request_id in sample)
