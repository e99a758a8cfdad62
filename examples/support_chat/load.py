"""The load: N customers chatting on the interactive tier while batch jobs keep the
workers busy with long requests, all over one asyncio client."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

from llmos.aio import AsyncClient

from .chat import QUESTIONS, ChatSession

log = logging.getLogger(__name__)

BATCH_TIER = "batch"
BATCH_TENANT = "batch-reports"
NUM_ORDER_LINES = 24  # a batch prompt's length: a few hundred tokens of order log


@dataclass(frozen=True)
class LoadConfig:
    num_customers: int
    num_turns: int
    num_batch_jobs: int
    answer_max_tokens: int = 48
    batch_max_tokens: int = 256
    think_time_s: float = 1.0
    seed: int = 0


@dataclass
class BatchTally:
    """What the batch jobs finished while the customers chatted."""

    num_requests: int = 0
    num_generated_tokens: int = 0
    total_times_s: list[float] = field(default_factory=list)


@dataclass
class LoadOutcome:
    sessions: list[ChatSession]
    batch: BatchTally


async def run_load(client: AsyncClient, config: LoadConfig) -> LoadOutcome:
    """Start the batch jobs, play every customer to the end, then let the batch jobs finish
    the request each has in flight."""
    sessions = [ChatSession(f"customer-{index}") for index in range(config.num_customers)]
    batch = BatchTally()
    customers_done = asyncio.Event()
    batch_jobs = [
        asyncio.create_task(run_batch_job(client, job, config, customers_done, batch))
        for job in range(config.num_batch_jobs)
    ]
    try:
        await asyncio.gather(*(play_customer(client, s, index, config) for index, s in enumerate(sessions)))
    finally:
        customers_done.set()
        await asyncio.gather(*batch_jobs)
    return LoadOutcome(sessions, batch)


async def play_customer(client: AsyncClient, session: ChatSession, index: int, config: LoadConfig) -> None:
    """`num_turns` questions, each after a think time (the first after a random arrival)."""
    rng = random.Random(config.seed * 1_000_003 + index)
    for turn_index in range(config.num_turns):
        # a stride coprime to the number of questions: every customer asks them all, in its own order
        question = QUESTIONS[(index + 3 * turn_index) % len(QUESTIONS)]
        await asyncio.sleep(rng.uniform(0.5, 1.5) * config.think_time_s)
        turn = await session.ask(client, question, config.answer_max_tokens)
        log.info(
            "%s turn %d: ttft %.0f ms on %s, %d prompt tokens",
            session.customer_id,
            turn_index + 1,
            turn.ttft_s * 1000,
            turn.worker_id,
            turn.prompt_tokens,
        )


async def run_batch_job(
    client: AsyncClient, job: int, config: LoadConfig, customers_done: asyncio.Event, batch: BatchTally
) -> None:
    """Long batch-tier requests, one after another, until the customers are done."""
    num_sent = 0
    while not customers_done.is_set():
        result = await client.generate(
            batch_prompt(job, num_sent),
            max_tokens=config.batch_max_tokens,
            tier=BATCH_TIER,
            tenant=BATCH_TENANT,
        )
        num_sent += 1
        batch.num_requests += 1
        batch.num_generated_tokens += result.usage.generated_tokens
        batch.total_times_s.append(result.usage.total_time_s)


def batch_prompt(job: int, request_index: int) -> str:
    """A long prompt that differs from every other from its first words, so the batch
    flood takes no prefix-cache hits and the hit rate measured is the conversations'."""
    rng = random.Random(job * 7919 + request_index)
    lines = [
        f"order {rng.randrange(10_000, 99_999)}: {rng.randint(1, 6)} x teapot, "
        f"{rng.choice(['paid', 'refunded', 'shipped', 'returned'])}"
        for _ in range(NUM_ORDER_LINES)
    ]
    return f"Batch job {job}, report {request_index}. Summarise this order log.\n" + "\n".join(lines)
