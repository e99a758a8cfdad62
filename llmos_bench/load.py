"""Driving an engine in-process: a closed loop at fixed concurrency, or Poisson arrivals.

No sockets and no threads: the benchmark calls `engine.step()` itself and reads
the clock after each step, which is when the worker would send the deltas on.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from llmos.wire import pb
from llmos_bench.stats import RequestTiming
from workers.requests import EngineRequest, SamplingOptions

IDLE_SLEEP_CAP_S = 0.05


@dataclass
class LoadResult:
    timings: list[RequestTiming]
    wall_s: float  # first arrival to last finish
    # per step of an engine that reports kv_usage(): (KV bytes held, tokens live)
    kv_samples: list[tuple[int, int]] = field(default_factory=list)

    @property
    def kv_bytes_per_live_token(self) -> float | None:
        """The KV bytes held per live token, over every step with tokens live."""
        samples = [(num_bytes, num_tokens) for num_bytes, num_tokens in self.kv_samples if num_tokens]
        if not samples:
            return None
        return sum(b for b, _ in samples) / sum(t for _, t in samples)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(timing.num_prompt_tokens for timing in self.timings)

    @property
    def num_generated_tokens(self) -> int:
        return sum(timing.num_generated_tokens for timing in self.timings)


class EngineLoad:
    """Submits requests to one engine, steps it, and times every request."""

    def __init__(self, engine: Any, new_tokens: int | list[int]) -> None:
        self.engine = engine
        self.new_tokens = new_tokens  # every request's answer length, or request i's at [i]
        self.timings: dict[str, RequestTiming] = {}
        self.max_tokens: dict[str, int] = {}
        self.num_in_flight = 0
        self.kv_usage = getattr(engine, "kv_usage", None)  # BatchedEngine's; None for others
        self.kv_samples: list[tuple[int, int]] = []

    def submit(self, index: int, prompt_token_ids: list[int], arrival_s: float) -> None:
        request_id = f"bench-{index}"
        self.timings[request_id] = RequestTiming(arrival_s=arrival_s, num_prompt_tokens=len(prompt_token_ids))
        max_tokens = self.new_tokens if isinstance(self.new_tokens, int) else self.new_tokens[index]
        self.max_tokens[request_id] = max_tokens
        # greedy and exactly max_tokens long: the engine was built with no EOS ids
        sampling = SamplingOptions(max_tokens=max_tokens, temperature=0.0)
        self.engine.add_request(EngineRequest(request_id, list(prompt_token_ids), sampling))
        self.num_in_flight += 1

    def step(self) -> None:
        deltas = self.engine.step()
        now = time.perf_counter()
        if self.kv_usage is not None:
            self.kv_samples.append(self.kv_usage())
        for delta in deltas:
            if delta.error_code != pb.ERROR_CODE_UNSPECIFIED:
                raise RuntimeError(f"request {delta.request_id} failed: {delta.error_message}")
            timing = self.timings[delta.request_id]
            if delta.token_ids and timing.num_generated_tokens == 0:
                timing.first_token_s = now
            timing.num_generated_tokens += len(delta.token_ids)
            if delta.is_finished:
                timing.finished_s = now
                self.num_in_flight -= 1
                max_tokens = self.max_tokens[delta.request_id]
                assert timing.num_generated_tokens == max_tokens, (
                    f"{delta.request_id} made {timing.num_generated_tokens} tokens, "
                    f"not {max_tokens}: did the engine stop at an EOS?"
                )

    def result(self) -> LoadResult:
        timings = list(self.timings.values())
        if not timings:
            return LoadResult(timings=[], wall_s=0.0)
        wall_s = max(t.finished_s for t in timings) - min(t.arrival_s for t in timings)
        return LoadResult(timings=timings, wall_s=wall_s, kv_samples=self.kv_samples)


def run_closed_loop(
    engine: Any, prompts: list[list[int]], concurrency: int, new_tokens: int | list[int]
) -> LoadResult:
    """Keep `concurrency` requests in flight (a new one as each finishes) until all are
    done; each makes `new_tokens`, or prompt i's answer makes `new_tokens[i]`."""
    driver = EngineLoad(engine, new_tokens)
    next_index = 0
    while next_index < len(prompts) or engine.has_work:
        while next_index < len(prompts) and driver.num_in_flight < concurrency:
            driver.submit(next_index, prompts[next_index], time.perf_counter())
            next_index += 1
        driver.step()
    return driver.result()


def poisson_arrivals(rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    """Arrival offsets (seconds from the start) of a Poisson process over `duration_s`."""
    rng = random.Random(seed)
    offsets: list[float] = []
    offset = rng.expovariate(rate_per_s)
    while offset < duration_s:
        offsets.append(offset)
        offset += rng.expovariate(rate_per_s)
    return offsets


def run_open_loop(
    engine: Any, prompts: list[list[int]], arrival_offsets_s: list[float], new_tokens: int
) -> LoadResult:
    """Submit prompt i at its arrival offset whatever the engine is doing; latencies
    count from the arrival, so time spent waiting for a step to end is included."""
    assert len(prompts) == len(arrival_offsets_s)
    driver = EngineLoad(engine, new_tokens)
    started = time.perf_counter()
    next_index = 0
    while next_index < len(prompts) or engine.has_work:
        now = time.perf_counter()
        while next_index < len(prompts) and started + arrival_offsets_s[next_index] <= now:
            driver.submit(next_index, prompts[next_index], started + arrival_offsets_s[next_index])
            next_index += 1
        if engine.has_work:
            driver.step()
        elif next_index < len(prompts):  # idle until the next arrival
            wait_s = started + arrival_offsets_s[next_index] - time.perf_counter()
            time.sleep(min(max(wait_s, 0.0), IDLE_SLEEP_CAP_S))
    return driver.result()
