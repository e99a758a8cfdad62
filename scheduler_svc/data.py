"""The plain data policies read and return: no sockets, no protobuf, so tests drive
policies without either.

`scheduler_svc.convert` builds these from a ScheduleRequest and the kernel's
ResourceView; tests build them directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from llmos.wire.constants import DEFAULT_MAX_TOKENS

ANY_MODEL = ""  # a request for model "" runs on any worker
CHARS_PER_TOKEN = 4  # the scheduler never tokenizes: ~4 characters of English per token
# A tier's answer fill (TierAnswers.mean_fill) counts once this many answers made it.
MIN_ANSWERS_FOR_FILL = 16
NO_DEADLINE = math.inf


# PendingRequest and RunningRequest are built by the thousand per batch: slots and
# no frozen (whose __init__ is ~3x slower). Policies read them and never write.
@dataclass(slots=True)
class PendingRequest:
    request_id: str
    tier_rank: int = 0  # 0 = highest tier
    tenant: str = ""
    model: str = ANY_MODEL
    prompt_chars: int = 0
    max_tokens: int = 0  # 0 = the broker's default
    arrival_seq: int = 0  # admission order at the broker
    generated_tokens: int = 0  # > 0 for a preempted or re-queued request
    prefix_hashes: tuple[int, ...] = ()  # the prompt's block hashes, each chaining the earlier ones
    waited_s: float = 0.0
    deadline_in_s: float = 0.0  # 0 = none
    tier: str = ""
    answer_fill: float = 0.0  # its tier's recent answers' mean share of max_tokens; 0 = unknown

    @property
    def deadline_key(self) -> float:
        """Earliest deadline first; a request without one sorts after every deadline."""
        return self.deadline_in_s if self.deadline_in_s > 0 else NO_DEADLINE


@dataclass(slots=True)
class RunningRequest:
    request_id: str
    worker_id: str
    tier_rank: int = 0
    tenant: str = ""
    prompt_chars: int = 0
    generated_tokens: int = 0
    max_tokens: int = 0
    arrival_seq: int = 0
    running_s: float = 0.0  # since this dispatch
    tier: str = ""
    tokens_since_dispatch: int = 0
    answer_fill: float = 0.0  # as PendingRequest's


@dataclass(frozen=True)
class WorkerSlots:
    worker_id: str
    models: tuple[str, ...] = ()
    num_running: int = 0
    max_num_seqs: int = 0
    kv_blocks_free: int | None = None  # None: the kernel's view does not know this worker
    tokens_per_s: float = 0.0  # one request's speed on it, as the broker measured; 0: unknown


@dataclass(frozen=True)
class KernelView:
    """What placement takes from the kernel's ResourceView: the block size, each
    worker's free blocks, and which workers cache which prompt block."""

    block_size: int = 0  # 0: unknown, so no block estimates
    kv_blocks_free: Mapping[str, int] = field(default_factory=dict)
    workers_by_block_hash: Mapping[int, frozenset[str]] = field(default_factory=dict)
    # a request never needs more than the largest cache holds: it would wait forever
    largest_kv_blocks_total: int = 0

    @classmethod
    def from_workers(
        cls,
        block_size: int,
        kv_blocks_free: Mapping[str, int],
        cached_prefix_hashes: Mapping[str, Iterable[int]],
        largest_kv_blocks_total: int = 0,
    ) -> KernelView:
        """Index the workers' cached block hashes once, hash -> the workers holding it."""
        holders: dict[int, set[str]] = {}
        for worker_id, block_hashes in cached_prefix_hashes.items():
            for block_hash in block_hashes:
                holders.setdefault(block_hash, set()).add(worker_id)
        index = {block_hash: frozenset(workers) for block_hash, workers in holders.items()}
        return cls(block_size, dict(kv_blocks_free), index, largest_kv_blocks_total)


@dataclass(frozen=True)
class Placement:
    request_id: str
    worker_id: str


@dataclass(frozen=True)
class Preemption:
    request_id: str
    worker_id: str
    reason: str = ""


@dataclass
class PolicyDecision:
    """Preemptions first, then placements in dispatch order. A placement may use
    the slot a preemption in the same decision frees."""

    placements: list[Placement] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)


def prompt_tokens(prompt_chars: int) -> int:
    return -(-prompt_chars // CHARS_PER_TOKEN)


def expected_tokens(max_tokens: int) -> int:
    return max_tokens or DEFAULT_MAX_TOKENS


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks holding `num_tokens` (at least one); 0 when the block size is unknown."""
    if block_size <= 0:
        return 0
    return max(1, -(-num_tokens // block_size))


def blocks_needed(request: PendingRequest, block_size: int) -> int:
    """The KV blocks a request may come to hold: its prompt and every token it may generate."""
    return blocks_for(prompt_tokens(request.prompt_chars) + expected_tokens(request.max_tokens), block_size)


def blocks_held(running: RunningRequest, block_size: int) -> int:
    """The KV blocks a running request surely holds now (prompt + generated so far):
    a low estimate, so a preemption never promises blocks it may not free."""
    return blocks_for(prompt_tokens(running.prompt_chars) + running.generated_tokens, block_size)
