"""Percentiles, without torch: `llmos bench sched` and its load processes use them too."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100, linear interpolation) of the finite values; None if none."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return None
    rank = (len(finite) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return finite[low] + (finite[high] - finite[low]) * (rank - low)
