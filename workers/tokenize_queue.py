"""Dispatched prompts waiting for the service thread to tokenize them, a bounded
amount per loop turn.

Tokenizing runs on the service thread (the admission gate needs each prompt's
token count before it asks the kernel for blocks), and that thread also sends the
heartbeats. Tokenizing every prompt of a burst as it arrives could hold it past
the broker's liveness, so the loop takes at most `max_bytes_per_turn` of prompt
each turn (at least one prompt) and heartbeats go out between turns.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from llmos.wire import pb

# About 10 ms of a fast tokenizer on one core: well inside a heartbeat interval.
DEFAULT_MAX_BYTES_PER_TURN = 64 * 1024


class TokenizeQueue:
    def __init__(self, max_bytes_per_turn: int = DEFAULT_MAX_BYTES_PER_TURN) -> None:
        self.max_bytes_per_turn = max_bytes_per_turn
        self._waiting: OrderedDict[str, pb.Dispatch] = OrderedDict()  # request id -> dispatch

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._waiting

    def add(self, dispatch: pb.Dispatch) -> None:
        assert dispatch.request_id not in self._waiting, f"{dispatch.request_id} is queued already"
        self._waiting[dispatch.request_id] = dispatch

    def discard(self, request_id: str) -> bool:
        """Forget a request (cancelled, preempted); False when it was not waiting."""
        return self._waiting.pop(request_id, None) is not None

    def clear(self) -> None:
        self._waiting.clear()

    def take_turn(self) -> Iterator[pb.Dispatch]:
        """The dispatches to tokenize this turn, oldest first: one, then more while the
        prompts taken stay within `max_bytes_per_turn` (characters count as bytes here:
        the bound is on time, and the dispatch checks bounded the bytes already)."""
        num_chars = 0
        while self._waiting:
            request_id, dispatch = next(iter(self._waiting.items()))
            if num_chars and num_chars + len(dispatch.prompt) > self.max_bytes_per_turn:
                return
            num_chars += len(dispatch.prompt)
            del self._waiting[request_id]
            yield dispatch
