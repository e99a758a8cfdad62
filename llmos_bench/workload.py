"""Seeded workloads for `llmos bench sched`: who asks for what, and when.

Plain data, no sockets. The same seed gives the same jobs, so every policy in
one run sees the very same arrivals, prompts and answer lengths.

- interactive chat: short prompts, short answers, Poisson arrivals;
- a batch flood: an opening burst that fills every slot, then Poisson arrivals
  above the stack's capacity, answer lengths from a bounded Pareto (heavy tail:
  most answers are short, a few are very long), each asked for as its
  `max_tokens`, or with a looser `max_tokens` and the answer's length marked
  in the prompt for the simulated workers (`workers.sim.sim_answer_tokens_hook`);
- tenants: closed loops (a fixed number of live requests each), fixed lengths;
- scale: a closed loop of tiny requests.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from workers.sim import sim_answer_tokens_hook

INTERACTIVE = "interactive"
BATCH = "batch"
STANDARD = "standard"
WORDS = (
    "parcel",
    "order",
    "refund",
    "invoice",
    "delivery",
    "account",
    "password",
    "address",
    "weather",
    "recipe",
    "summary",
    "report",
    "meeting",
    "flight",
    "hotel",
    "review",
)


@dataclass(frozen=True)
class Job:
    """One request to submit; `group` names the figures it counts towards."""

    group: str
    tier: str
    prompt: str
    max_tokens: int
    tenant: str = ""
    offset_s: float = 0.0  # open loop: when it arrives, seconds after the run starts
    answer_tokens: int = 0  # the answer's length where max_tokens is looser (0: max_tokens)


def poisson_offsets(rate_per_s: float, duration_s: float, rng: random.Random) -> list[float]:
    """Arrival offsets in [0, duration_s) of a Poisson process with `rate_per_s`."""
    offsets: list[float] = []
    if rate_per_s <= 0:
        return offsets
    offset = rng.expovariate(rate_per_s)
    while offset < duration_s:
        offsets.append(offset)
        offset += rng.expovariate(rate_per_s)
    return offsets


def make_prompt(rng: random.Random, num_chars: int) -> str:
    """About `num_chars` characters of words; a leading serial keeps prompts apart."""
    words = [f"#{rng.getrandbits(32):08x}"]
    while sum(len(word) + 1 for word in words) < num_chars:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def bounded_pareto(rng: random.Random, alpha: float, low: int, high: int) -> int:
    """A draw from the Pareto law with shape `alpha` and scale `low`, cut to [low, high]
    by inverse transform of the bounded law (no pile-up at `high`)."""
    assert 0 < low <= high and alpha > 0
    ratio = (low / high) ** alpha
    u = rng.random()
    return min(high, max(low, round(low / (1 - u * (1 - ratio)) ** (1 / alpha))))


def bounded_pareto_mean(alpha: float, low: int, high: int, samples: int = 20_000) -> float:
    """The mean answer length of `bounded_pareto`, by a fixed-seed sample (integer rounding
    makes the closed form a little off)."""
    rng = random.Random(0)
    return sum(bounded_pareto(rng, alpha, low, high) for _ in range(samples)) / samples


@dataclass(frozen=True)
class ChatWorkload:
    """Interactive chat arrivals (workload a, and the idle run)."""

    rate_per_s: float
    duration_s: float
    min_tokens: int = 8
    max_tokens: int = 32
    prompt_chars: tuple[int, int] = (60, 240)

    @property
    def mean_answer_tokens(self) -> float:
        return (self.min_tokens + self.max_tokens) / 2

    @property
    def mean_prompt_chars(self) -> float:
        return sum(self.prompt_chars) / 2

    def jobs(self, seed: int) -> list[Job]:
        rng = random.Random(f"interactive-{seed}")
        return [
            Job(
                INTERACTIVE,
                INTERACTIVE,
                make_prompt(rng, rng.randint(*self.prompt_chars)),
                rng.randint(self.min_tokens, self.max_tokens),
                offset_s=offset,
            )
            for offset in poisson_offsets(self.rate_per_s, self.duration_s, rng)
        ]


@dataclass(frozen=True)
class BatchFlood:
    """A burst that fills every slot at once, then Poisson arrivals at `rate_per_s`."""

    burst: int
    rate_per_s: float
    duration_s: float
    pareto_alpha: float
    min_tokens: int
    max_tokens: int
    prompt_chars: tuple[int, int] = (200, 800)
    declared_max_tokens: int = 0  # every request's max_tokens (0: its answer's length)

    @property
    def mean_prompt_chars(self) -> float:
        return sum(self.prompt_chars) / 2

    def jobs(self, seed: int) -> list[Job]:
        rng = random.Random(f"batch-{seed}")
        offsets = [0.0] * self.burst + poisson_offsets(self.rate_per_s, self.duration_s, rng)
        return [
            self.job(
                make_prompt(rng, rng.randint(*self.prompt_chars)),
                bounded_pareto(rng, self.pareto_alpha, self.min_tokens, self.max_tokens),
                offset,
            )
            for offset in offsets
        ]

    def job(self, prompt: str, answer_tokens: int, offset_s: float) -> Job:
        if not self.declared_max_tokens:
            return Job(BATCH, BATCH, prompt, answer_tokens, offset_s=offset_s)
        return Job(
            BATCH,
            BATCH,
            f"{prompt} {sim_answer_tokens_hook(answer_tokens)}",
            self.declared_max_tokens,
            offset_s=offset_s,
            answer_tokens=answer_tokens,
        )


def tenant_jobs(
    tenant: str, tier: str, max_tokens: int, seed: int, limit: int | None = None
) -> Iterator[Job]:
    """A closed loop's supply: endless (or `limit`) jobs for one tenant."""
    rng = random.Random(f"tenant-{tenant}-{seed}")
    count = 0
    while limit is None or count < limit:
        yield Job(tenant, tier, make_prompt(rng, 120), max_tokens, tenant=tenant)
        count += 1


def scale_jobs(count: int, max_tokens: int, seed: int) -> Iterator[Job]:
    """Tiny requests: prompts under one prefix block (64 characters), so the broker
    hashes nothing and the figure is the system's per-request cost."""
    rng = random.Random(f"scale-{seed}")
    for _ in range(count):
        yield Job("scale", STANDARD, make_prompt(rng, 40), max_tokens)
