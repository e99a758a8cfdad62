"""What a service does with a peer's bad bytes: count them and log them, at a bounded rate.

Every service treats every peer as a stranger: a malformed frame, an unknown or
not-allowed message, a claim it cannot check or a field past its bound is
refused, never raised out of the loop. `PeerErrors` keeps one count per kind of
refusal (for status and metrics) and logs at most `max_lines_per_window` lines a
window, then one line saying how many it left out, so a flood of garbage cannot
fill the disk or slow the loop with logging.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

WINDOW_S = 10.0
MAX_LINES_PER_WINDOW = 20


class PeerErrors:
    def __init__(
        self,
        log: logging.Logger,
        window_s: float = WINDOW_S,
        max_lines_per_window: int = MAX_LINES_PER_WINDOW,
    ) -> None:
        self.log = log
        self.window_s = window_s
        self.max_lines_per_window = max_lines_per_window
        self.count_by_kind: Counter[str] = Counter()
        self._window_start_s = 0.0
        self._num_lines_in_window = 0
        self._num_left_out = 0

    @property
    def total(self) -> int:
        return sum(self.count_by_kind.values())

    def refused(self, kind: str, peer: bytes | str, why: str) -> None:
        """Count one refusal of `kind` (e.g. "malformed", "unknown request") from
        `peer` and log it, unless this window has had its lines."""
        self.count_by_kind[kind] += 1
        self._log(logging.WARNING, "refused %s from %r: %s", kind, peer, why)

    def internal(self, peer: bytes | str) -> None:
        """Count a bug hit while handling a peer's message; log its traceback
        (call from an `except` block), bounded like the rest."""
        self.count_by_kind["internal"] += 1
        self._log(logging.ERROR, "internal error on a message from %r", peer, exc_info=True)

    def _log(self, level: int, fmt: str, *args: object, exc_info: bool = False) -> None:
        now_s = time.monotonic()
        if now_s - self._window_start_s >= self.window_s:
            if self._num_left_out:
                self.log.warning(
                    "left out %d more refusal lines in the last %.0f s", self._num_left_out, self.window_s
                )
            self._window_start_s, self._num_lines_in_window, self._num_left_out = now_s, 0, 0
        if self._num_lines_in_window >= self.max_lines_per_window:
            self._num_left_out += 1
            return
        self._num_lines_in_window += 1
        self.log.log(level, fmt, *args, exc_info=exc_info)
