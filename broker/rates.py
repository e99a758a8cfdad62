"""Recent rates (tokens per second) for `llmos status`, without keeping every event."""

from __future__ import annotations

from collections import deque

WINDOW_S = 5.0
BUCKET_S = 0.5


class RateMeter:
    """Counts per time bucket; the rate is the sum over the last WINDOW_S seconds."""

    def __init__(self) -> None:
        self._buckets: deque[list[float]] = deque()  # [bucket start s, count]

    def add(self, count: int, now_s: float) -> None:
        start_s = now_s - now_s % BUCKET_S
        if self._buckets and self._buckets[-1][0] == start_s:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([start_s, count])
        self._forget_before(now_s - WINDOW_S)

    def per_s(self, now_s: float) -> float:
        self._forget_before(now_s - WINDOW_S)
        return sum(count for _, count in self._buckets) / WINDOW_S

    def _forget_before(self, oldest_s: float) -> None:
        while self._buckets and self._buckets[0][0] < oldest_s:
            self._buckets.popleft()
