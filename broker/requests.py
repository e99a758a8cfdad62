"""What the broker knows about one admitted request (plain data), and its lifecycle.

A request is in exactly one `RequestStatus`; `Request.move_to` is the one place a
status changes, and it asserts that the change is in `TRANSITIONS`:

    QUEUED                 -> RUNNING (placed on a worker), DONE (answered while queued)
    RUNNING                -> FINISHING, PREEMPTING, QUEUED (re-queued), ANSWERED
    FINISHING, PREEMPTING  -> QUEUED (re-queued), ANSWERED
    ANSWERED               -> DONE (its worker let go of it)

A request is re-queued when its worker reports it preempted or the worker is lost.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from broker.admission import AdmittedRequest
from llmos.prefix import prompt_block_hashes
from llmos.wire import pb

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer


class RequestStatus(enum.Enum):
    QUEUED = enum.auto()  # in its tier's queue, on no worker
    RUNNING = enum.auto()  # holds a slot on its worker
    # the step in flight makes its last token (by max_tokens): its slot counts as free
    FINISHING = enum.auto()
    PREEMPTING = enum.auto()  # told to preempt: re-queued when the worker reports it preempted
    # the client has its final message (cancelled, expired, gone, or the answer itself)
    # while a worker still holds the request: its slot frees when the worker lets go of it
    ANSWERED = enum.auto()
    DONE = enum.auto()  # answered and on no worker: forgotten


DETACHED = b""  # the client identity of a request no connection holds (restored after a restart)

_ON_WORKER = frozenset(
    {RequestStatus.RUNNING, RequestStatus.FINISHING, RequestStatus.PREEMPTING, RequestStatus.ANSWERED}
)
TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    RequestStatus.QUEUED: frozenset({RequestStatus.RUNNING, RequestStatus.DONE}),
    RequestStatus.RUNNING: frozenset(
        {RequestStatus.FINISHING, RequestStatus.PREEMPTING, RequestStatus.QUEUED, RequestStatus.ANSWERED}
    ),
    RequestStatus.FINISHING: frozenset({RequestStatus.QUEUED, RequestStatus.ANSWERED}),
    RequestStatus.PREEMPTING: frozenset({RequestStatus.QUEUED, RequestStatus.ANSWERED}),
    RequestStatus.ANSWERED: frozenset({RequestStatus.DONE}),
    RequestStatus.DONE: frozenset(),
}


@dataclass
class Request:
    request_id: str  # the broker's own id, unique for its lifetime
    client_identity: bytes
    has_delimiter: bool  # the client is a REQ socket: replies need b""
    admitted: AdmittedRequest  # normalized by admission; admitted.request_id is the client's id
    tier_rank: int
    arrival_seq: int
    accepted_at_s: float
    queued_since_s: float  # admission, or the last re-queue
    deadline_at_s: float | None = None
    worker_id: str | None = None
    dispatched_at_s: float | None = None  # first dispatch
    running_since_s: float | None = None  # this dispatch
    tokens_at_dispatch: int = 0  # generated tokens when this dispatch went out
    first_token_at_s: float | None = None
    generated_token_ids: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    emitted_text_chars: int = 0
    prompt_tokens: int = 0
    num_restarts: int = 0
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.QUEUED

    def move_to(self, status: RequestStatus) -> None:
        assert status in TRANSITIONS[self.status], (
            f"request {self.request_id} cannot go from {self.status.name} to {status.name}"
        )
        self.status = status

    @property
    def client_request_id(self) -> str:
        return self.admitted.request_id

    @property
    def client_key(self) -> tuple[bytes, str]:
        return self.client_identity, self.client_request_id

    @property
    def is_detached(self) -> bool:
        return self.client_identity == DETACHED

    @property
    def kind(self) -> int:
        return self.admitted.kind

    @property
    def model(self) -> str:
        return self.admitted.model

    @property
    def tier(self) -> str:
        return self.admitted.tier

    @property
    def tenant(self) -> str:
        return self.admitted.tenant

    @property
    def is_on_worker(self) -> bool:
        return self.status in _ON_WORKER

    @property
    def is_answered(self) -> bool:
        """The client has its final message (or is gone)."""
        return self.status in (RequestStatus.ANSWERED, RequestStatus.DONE)

    @property
    def is_leaving(self) -> bool:
        """It leaves its worker at the end of the step in flight: told to preempt, or
        making its last token."""
        return self.status in (RequestStatus.FINISHING, RequestStatus.PREEMPTING)

    @property
    def is_on_last_token(self) -> bool:
        """The next token it makes is the last one max_tokens allows (a worker makes one
        token per request per step, so its next step ends it, or EOS ends it sooner)."""
        return (
            self.kind == pb.TASK_KIND_GENERATE
            and len(self.generated_token_ids) + 1 >= self.admitted.sampling.max_tokens
        )

    @cached_property
    def prefix_hashes(self) -> list[int]:
        """Computed once: the scheduler is asked about a waiting request many times."""
        return prompt_block_hashes(self.admitted.prompt)

    @cached_property
    def size_chars(self) -> int:
        """Computed once, as prefix_hashes: the admitted texts do not change."""
        return len(self.admitted.prompt) + sum(len(text) for text in self.admitted.inputs)

    def add_pending(self, into: RepeatedCompositeFieldContainer[pb.PendingRequest], now_s: float) -> None:
        """Add it to a ScheduleRequest's pending list (built in place: no copy of a built message)."""
        deadline_in_s = max(1e-6, self.deadline_at_s - now_s) if self.deadline_at_s else 0.0
        into.add(
            request_id=self.request_id,
            tier=self.tier,
            tier_rank=self.tier_rank,
            tenant=self.tenant,
            model=self.model,
            prompt_chars=self.size_chars,
            max_tokens=self.admitted.sampling.max_tokens,
            arrival_seq=self.arrival_seq,
            generated_tokens=len(self.generated_token_ids),
            prefix_hashes=self.prefix_hashes,
            waited_s=now_s - self.queued_since_s,
            deadline_in_s=deadline_in_s,
        )

    def add_running(self, into: RepeatedCompositeFieldContainer[pb.RunningRequest], now_s: float) -> None:
        """Add it to a ScheduleRequest's running or leaving list, built in place."""
        into.add(
            request_id=self.request_id,
            worker_id=self.worker_id or "",
            tier=self.tier,
            tier_rank=self.tier_rank,
            tenant=self.tenant,
            prompt_chars=self.size_chars,
            generated_tokens=len(self.generated_token_ids),
            max_tokens=self.admitted.sampling.max_tokens,
            arrival_seq=self.arrival_seq,
            running_s=now_s - (self.running_since_s or now_s),
            tokens_since_dispatch=len(self.generated_token_ids) - self.tokens_at_dispatch,
        )

    def dispatch(self) -> pb.Dispatch:
        admitted = self.admitted
        return pb.Dispatch(
            request_id=self.request_id,
            model=admitted.model,
            prompt=admitted.prompt,
            sampling=admitted.sampling,
            generated_token_ids=self.generated_token_ids,
            emitted_text_chars=self.emitted_text_chars,
            tier=admitted.tier,
            tenant=admitted.tenant,
            kind=admitted.kind,
            inputs=admitted.inputs,
            is_final_only=admitted.is_final_only,
        )

    def record_delta(self, delta: pb.RequestDelta, now_s: float) -> pb.TokenChunk | None:
        """Add a worker's delta; the chunk to relay to the client, if any."""
        if delta.prompt_tokens:
            self.prompt_tokens = delta.prompt_tokens
        if not delta.token_ids and not delta.text:
            return None
        # a client that reads only the result gets no chunk, and the journal keeps none
        chunk = None
        if not self.admitted.is_final_only:
            chunk = pb.TokenChunk(
                request_id=self.client_request_id,
                token_ids=delta.token_ids,
                text=delta.text,
                index=len(self.generated_token_ids),
            )
        if self.first_token_at_s is None:
            self.first_token_at_s = now_s
        self.generated_token_ids.extend(delta.token_ids)
        self.text_parts.append(delta.text)
        self.emitted_text_chars += len(delta.text)
        return chunk

    def usage(self, now_s: float) -> pb.Usage:
        def since_accept(at_s: float | None) -> float:
            return (at_s - self.accepted_at_s) if at_s is not None else 0.0

        return pb.Usage(
            prompt_tokens=self.prompt_tokens,
            generated_tokens=len(self.generated_token_ids),
            queue_time_s=since_accept(self.dispatched_at_s),
            time_to_first_token_s=since_accept(self.first_token_at_s),
            total_time_s=since_accept(now_s),
        )

    def result(self, finish_reason: pb.FinishReason, worker_id: str, now_s: float) -> pb.GenerateResult:
        return pb.GenerateResult(
            request_id=self.client_request_id,
            text="".join(self.text_parts),
            token_ids=self.generated_token_ids,
            finish_reason=finish_reason,
            usage=self.usage(now_s),
            model=self.model,
            worker_id=worker_id,
            num_restarts=self.num_restarts,
        )

    def pooling_result(
        self, delta: pb.RequestDelta, worker_id: str, now_s: float
    ) -> pb.EmbedResult | pb.ClassifyResult:
        usage = self.usage(now_s)
        if self.kind == pb.TASK_KIND_EMBED:
            return pb.EmbedResult(
                request_id=self.client_request_id,
                embeddings=delta.embeddings,
                usage=usage,
                model=self.model,
                worker_id=worker_id,
            )
        return pb.ClassifyResult(
            request_id=self.client_request_id,
            classifications=delta.classifications,
            usage=usage,
            model=self.model,
            worker_id=worker_id,
        )
