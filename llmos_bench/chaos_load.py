"""The load of `llmos bench chaos`: seeded requests, streamed by SDK clients, each checked.

Every request streams through `llmos.client.Client` (one per client thread), so
what a user would see is what is judged: a simulated answer is exactly
`max_tokens` tokens, each SIM_TOKEN_ID, in chunks whose indexes follow on
from each other. Each request ends as one `End`:

  completed        the whole answer, once
  lost             the client timed out waiting (accepted or not, no answer came)
  errored          the broker answered with an error after accepting it, or the
                   answer came short
  refused          refused at submit with a code this load may meet (QUEUE_FULL)
  wrongly_refused  refused at submit with any other code

and, across all of them, `is_duplicated`: a token delivered twice (a chunk whose
index overlaps tokens already streamed, more tokens than `max_tokens`, or a
result whose token ids disagree with the stream).
"""

from __future__ import annotations

import enum
import math
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmos.client import Client
from llmos.errors import LlmosError, LlmosTimeout
from llmos.wire import pb
from llmos.wire.constants import DEFAULT_TIERS
from workers.sim import SIM_TOKEN_ID

# Refusals a saturated stack may legitimately answer at submit; any other is wrong here.
LEGIT_REFUSALS = frozenset({pb.QUEUE_FULL})
TIER_WEIGHTS = {"interactive": 0.3, "standard": 0.4, "batch": 0.3}
assert set(TIER_WEIGHTS) <= set(DEFAULT_TIERS)


class End(enum.Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    LOST = "lost"
    ERRORED = "errored"
    REFUSED = "refused"
    WRONGLY_REFUSED = "wrongly_refused"


@dataclass(frozen=True)
class ChaosJob:
    request_id: str
    tier: str
    max_tokens: int

    @property
    def prompt(self) -> str:
        return f"chaos request {self.request_id} in tier {self.tier}"


def chaos_jobs(num_requests: int, max_tokens: int, seed: int) -> list[ChaosJob]:
    """`num_requests` jobs, tiers drawn by TIER_WEIGHTS, answers of 1..max_tokens tokens."""
    rng = random.Random(seed)
    tiers, weights = zip(*TIER_WEIGHTS.items(), strict=True)
    return [
        ChaosJob(f"chaos-{seed}-{index}", rng.choices(tiers, weights)[0], rng.randint(1, max_tokens))
        for index in range(num_requests)
    ]


@dataclass
class Outcome:
    """One request as its client saw it (time.monotonic seconds)."""

    job: ChaosJob
    end: End = End.PENDING
    error: str = ""  # the error code's name (or the timeout's message) where it did not complete
    num_tokens: int = 0  # streamed to the caller
    is_duplicated: bool = False
    first_token_s: float = math.nan
    finished_s: float = math.nan
    num_restarts: int = 0  # workers the answer moved off, as the result says

    def add_chunk(self, chunk: pb.TokenChunk, now_s: float) -> None:
        if chunk.index < self.num_tokens:
            self.is_duplicated = True  # overlaps tokens already streamed
        elif chunk.index > self.num_tokens:
            self.error = f"gap: chunk at token {chunk.index} after {self.num_tokens} tokens"
        if any(token_id != SIM_TOKEN_ID for token_id in chunk.token_ids):
            self.error = f"unexpected token ids {list(chunk.token_ids)}"
        if math.isnan(self.first_token_s) and chunk.token_ids:
            self.first_token_s = now_s
        self.num_tokens += len(chunk.token_ids)

    def finish(self, result: pb.GenerateResult, now_s: float) -> None:
        self.finished_s = now_s
        self.num_restarts = result.num_restarts
        if self.num_tokens > self.job.max_tokens or (
            result.token_ids and len(result.token_ids) < self.num_tokens
        ):
            self.is_duplicated = True
        if self.num_tokens < self.job.max_tokens and not self.error:
            self.error = f"short: {self.num_tokens} of {self.job.max_tokens} tokens"
        self.end = End.ERRORED if self.error else End.COMPLETED


def run_one(client: Client, job: ChaosJob, outcome: Outcome) -> None:
    """Submit `job`, stream it to the end, judge it into `outcome`. Raises LlmosTimeout
    (after marking the outcome lost) so that the caller replaces its client."""
    try:
        client.submit(job.prompt, max_tokens=job.max_tokens, tier=job.tier, request_id=job.request_id)
    except LlmosTimeout as exc:
        outcome.end, outcome.error = End.LOST, str(exc)
        raise
    except LlmosError as exc:
        outcome.end = End.REFUSED if exc.code in LEGIT_REFUSALS else End.WRONGLY_REFUSED
        outcome.error = exc.code_name
        return
    try:
        for chunk in client.stream(job.request_id):
            outcome.add_chunk(chunk, time.monotonic())
        outcome.finish(client.result(job.request_id), time.monotonic())
    except LlmosTimeout as exc:
        outcome.end, outcome.error = End.LOST, str(exc)
        raise
    except LlmosError as exc:
        outcome.end, outcome.error = End.ERRORED, exc.code_name


@dataclass
class Progress:
    """Completed answers so far, shared by the client threads and the chaos thread."""

    num_completed: int = 0
    last_completed_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, outcome: Outcome) -> None:
        if outcome.end is End.COMPLETED:
            with self.lock:
                self.num_completed += 1
                self.last_completed_s = max(self.last_completed_s, outcome.finished_s)


def client_loop(address: str, jobs: queue.Queue[Outcome], timeout_s: float, progress: Progress) -> None:
    """One client thread: take outcomes off `jobs` until it is empty, one request at a time.
    A client that timed out is replaced, so a request it gave up on is never sent again."""
    client = Client(address, timeout_s=timeout_s)
    try:
        while True:
            try:
                outcome = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                run_one(client, outcome.job, outcome)
            except LlmosTimeout:
                client.close()
                client = Client(address, timeout_s=timeout_s)
            progress.record(outcome)
    finally:
        client.close()


def run_load(
    address: str, jobs: list[ChaosJob], num_clients: int, timeout_s: float, progress: Progress
) -> list[Outcome]:
    """Every job through `num_clients` client threads; their outcomes, in job order."""
    outcomes = [Outcome(job) for job in jobs]
    todo: queue.Queue[Outcome] = queue.Queue()
    for outcome in outcomes:
        todo.put(outcome)
    threads = [
        threading.Thread(
            target=client_loop, args=(address, todo, timeout_s, progress), name=f"chaos-client-{i}"
        )
        for i in range(num_clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


Echo = Callable[[str], None]
