"""The brokers a gateway sends to: one, or several that share the kernel.

`--broker-address tcp://a:5555,tcp://b:5555` names several brokers (each with its
own workers and queues; docs/deploy.md, "What scales"). Each new request goes to
the next broker in turn among those that held a worker when last checked (among
those whose workers serve the model it names, where any do), as a load balancer
skips a backend that fails its health check. A broker's check (a
StatusRequest) is renewed at most once a READY_TTL_S: by `/ready`, and in the
background once a request finds the checks stale. A broker that lets a request
time out unanswered counts as not ready until its next check. Follow-ups (the
stream, the result, a cancel) stay on the request's own broker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from llmos.aio import AsyncClient
from llmos.errors import LlmosError
from llmos.wire import pb

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0  # a readiness probe that waits longer is itself the failure
READY_TTL_S = 1.0


def broker_addresses(spec: str) -> list[str]:
    """`tcp://a:5555,tcp://b:5555` -> each address once, in order; ValueError if none."""
    addresses = list(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))
    if not addresses:
        raise ValueError("--broker-address names no broker")
    return addresses


@dataclass
class BrokerLink:
    """One broker's client, and whether the broker held a worker when last asked."""

    address: str
    client: AsyncClient
    status_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # the client has one status inbox
    is_ready: bool = True  # until a check says otherwise
    checked_at_s: float = -READY_TTL_S
    models: frozenset[str] = frozenset()  # what its workers served at the last check
    num_requests: int = 0  # new requests sent to it

    @property
    def is_stale(self) -> bool:
        return time.monotonic() - self.checked_at_s >= READY_TTL_S

    async def status(self) -> pb.StatusReply:
        async with self.status_lock:
            return await self.client.status()

    async def check(self) -> bool:
        """Whether the broker answers and holds a worker, asked at most once a READY_TTL_S:
        anyone who reaches /ready may ask, and the broker should not hear of each probe."""
        async with self.status_lock:
            if self.is_stale:
                was_ready = self.is_ready
                try:
                    status = await asyncio.wait_for(self.client.status(), READY_TIMEOUT_S)
                    self.is_ready = len(status.workers) > 0
                    self.models = frozenset(model for worker in status.workers for model in worker.models)
                except (LlmosError, TimeoutError):
                    self.is_ready = False
                self.checked_at_s = time.monotonic()
                if self.is_ready != was_ready:
                    log.info("broker %s is %s", self.address, "ready" if self.is_ready else "not ready")
            return self.is_ready

    def note_silence(self) -> None:
        """A request timed out unanswered: skip this broker until its next check."""
        if self.is_ready:
            log.warning("broker %s let a request time out; skipping it until it answers", self.address)
        self.is_ready, self.checked_at_s = False, time.monotonic()


class Brokers:
    def __init__(self, links: list[BrokerLink]) -> None:
        assert links, "a gateway sends to at least one broker"
        self.links = links
        self.turns: Iterator[int] = itertools.count()
        self.renewal: asyncio.Task[list[bool]] | None = None

    def __len__(self) -> int:
        return len(self.links)

    def pick(self, model: str = "") -> BrokerLink:
        """The broker for a new request: the next in turn among those that held a worker
        when last checked (among all, if none did), and of those, among the ones whose
        workers served `model`, where any did."""
        if len(self.links) == 1:
            return self.links[0]
        if any(link.is_stale for link in self.links) and (self.renewal is None or self.renewal.done()):
            self.renewal = asyncio.get_running_loop().create_task(self.check_all())
        ready = [link for link in self.links if link.is_ready] or self.links
        serving = [link for link in ready if model in link.models] if model else []
        candidates = serving or ready
        link = candidates[next(self.turns) % len(candidates)]
        link.num_requests += 1
        return link

    async def check_all(self) -> list[bool]:
        return list(await asyncio.gather(*(link.check() for link in self.links)))

    async def has_worker(self) -> bool:
        """Whether any broker answers and holds a worker."""
        return any(await self.check_all())

    async def statuses(self) -> list[pb.StatusReply]:
        """Every broker's status; the first error where none answers."""
        answers = await asyncio.gather(*(link.status() for link in self.links), return_exceptions=True)
        statuses = [answer for answer in answers if isinstance(answer, pb.StatusReply)]
        if not statuses:
            error = answers[0]
            assert isinstance(error, BaseException)
            raise error
        return statuses

    def close(self) -> None:
        if self.renewal is not None:
            self.renewal.cancel()
