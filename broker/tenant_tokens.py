"""Tokens each tenant generated in the last minute, for keys with a tokens-per-minute limit.

Counts go into one-second buckets, so a tenant costs at most 60 buckets however
many tokens it makes, and a tenant idle for a minute costs nothing.
"""

from __future__ import annotations

import math
from collections import deque

WINDOW_S = 60


class TenantTokens:
    def __init__(self) -> None:
        # tenant -> [second, tokens] buckets, oldest first
        self._buckets: dict[str, deque[list[int]]] = {}

    def note(self, tenant: str, num_tokens: int, now_s: float) -> None:
        second = int(now_s)
        buckets = self._buckets.setdefault(tenant, deque())
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += num_tokens
        else:
            buckets.append([second, num_tokens])
        self._drop_old(tenant, now_s)

    def used(self, tenant: str, now_s: float) -> int:
        self._drop_old(tenant, now_s)
        return sum(count for _, count in self._buckets.get(tenant, ()))

    def retry_after_ms(self, tenant: str, limit: int, now_s: float) -> int:
        """How long until the tenant's last-minute count falls below `limit`."""
        used = self.used(tenant, now_s)
        for second, count in self._buckets.get(tenant, ()):
            used -= count
            if used < limit:
                return max(1, math.ceil((second + WINDOW_S - now_s) * 1000))
        return 1

    def purge(self, now_s: float) -> None:
        for tenant in list(self._buckets):
            self._drop_old(tenant, now_s)

    def _drop_old(self, tenant: str, now_s: float) -> None:
        buckets = self._buckets.get(tenant)
        if buckets is None:
            return
        while buckets and buckets[0][0] <= now_s - WINDOW_S:
            buckets.popleft()
        if not buckets:
            del self._buckets[tenant]
