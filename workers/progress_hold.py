"""Fewer deltas for the requests whose clients read only the result.

A client that asked for the whole answer (`Dispatch.is_final_only`) gets no
chunk, so a delta for each of its tokens, every step, gives the broker only
messages to read. A worker holds such a request's tokens back and reports them:

- its first delta at once: the broker times the first token by it, and it
  carries `prompt_tokens`;
- the delta that leaves it one token short of `max_tokens` at once: the broker
  then counts its slot as free at the end of the next step, as for any request;
- everything still held just before its final delta, which goes as it came (a
  PREEMPTED or CANCELLED final delta carries no token, as the protocol says);
- whatever it held for `report_interval_s`, with its next delta: a policy that
  reads a running request's tokens (mlfq's levels, fair's charges) sees them
  late by that much at most.

Every other request's deltas pass as they come. Held tokens are the worker's
until reported: a worker that dies loses them, and the broker re-runs them as
it re-runs a step in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableSequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from llmos.wire import pb
from workers.messages import max_tokens_of

# Long enough that a request of a few dozen tokens on a fast worker reports three
# times (first, one short of the end, last), short enough that the scheduler's view
# of a long one lags by a fraction of a second.
FINAL_ONLY_REPORT_INTERVAL_S = 0.25


class TokenDelta(Protocol):
    """What the hold reads and merges: a pb.RequestDelta (the simulated workers send
    those) or a workers.requests.Delta (the real one converts only what it sends)."""

    request_id: str
    text: str
    prompt_tokens: int
    is_finished: bool

    @property
    def token_ids(self) -> MutableSequence[int]: ...


D = TypeVar("D", bound=TokenDelta)


@dataclass
class HeldRequest(Generic[D]):
    max_tokens: int
    num_reported_tokens: int  # the tokens the broker has (a resumed request's included)
    is_reported: bool = False  # a delta of this dispatch went out
    held: D | None = None  # its deltas since the last report, merged
    held_since_s: float = 0.0

    def hold(self, delta: D, now_s: float) -> None:
        if self.held is None:
            self.held, self.held_since_s = delta, now_s
            return
        self.held.token_ids.extend(delta.token_ids)
        self.held.text += delta.text
        if delta.prompt_tokens:
            self.held.prompt_tokens = delta.prompt_tokens

    def is_report_due(self, now_s: float, report_interval_s: float) -> bool:
        assert self.held is not None
        num_tokens = self.num_reported_tokens + len(self.held.token_ids)
        return (
            not self.is_reported
            or num_tokens + 1 >= self.max_tokens
            or now_s - self.held_since_s >= report_interval_s
        )

    def report(self) -> D:
        assert self.held is not None
        held, self.held = self.held, None
        self.num_reported_tokens += len(held.token_ids)
        self.is_reported = True
        return held


class ProgressHold(Generic[D]):
    """The final-only requests a worker runs, and the tokens it holds for each."""

    def __init__(self, report_interval_s: float = FINAL_ONLY_REPORT_INTERVAL_S) -> None:
        self.report_interval_s = report_interval_s
        self.requests: dict[str, HeldRequest[D]] = {}

    def __len__(self) -> int:
        return len(self.requests)

    def watch(self, dispatch: pb.Dispatch) -> None:
        """Hold the tokens of this dispatched request if its client reads only the result."""
        if dispatch.is_final_only and dispatch.kind == pb.TASK_KIND_GENERATE:
            self.requests[dispatch.request_id] = HeldRequest(
                max_tokens_of(dispatch.sampling), len(dispatch.generated_token_ids)
            )

    def clear(self) -> None:
        """Every request was dropped: the broker re-queues them with the tokens it has."""
        self.requests.clear()

    def take(self, deltas: Iterable[D], now_s: float) -> list[D]:
        """The deltas to send now, in order; the others are held (and merged)."""
        sent: list[D] = []
        for delta in deltas:
            request = self.requests.get(delta.request_id)
            if request is None:
                sent.append(delta)
            elif delta.is_finished:
                del self.requests[delta.request_id]
                if request.held is not None:
                    sent.append(request.report())
                sent.append(delta)
            else:
                request.hold(delta, now_s)
                if request.is_report_due(now_s, self.report_interval_s):
                    sent.append(request.report())
        return sent
