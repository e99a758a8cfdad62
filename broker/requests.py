"""What the broker knows about one admitted request (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmos.wire import pb


@dataclass
class RequestState:
    request_id: str               # the broker's own id, unique for its lifetime
    client_identity: bytes
    client_request_id: str
    has_delimiter: bool           # the client is a REQ socket: replies need b""
    generate: pb.GenerateRequest  # normalized by admission
    tier_rank: int
    arrival_seq: int
    accepted_at_s: float
    worker_id: str | None = None
    dispatched_at_s: float | None = None
    first_token_at_s: float | None = None
    generated_token_ids: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    emitted_text_chars: int = 0
    prompt_tokens: int = 0
    num_restarts: int = 0
    is_cancelled: bool = False

    @property
    def client_key(self) -> tuple[bytes, str]:
        return self.client_identity, self.client_request_id

    @property
    def tier(self) -> str:
        return self.generate.tier

    def pending(self) -> pb.PendingRequest:
        return pb.PendingRequest(
            request_id=self.request_id, tier=self.tier, tier_rank=self.tier_rank,
            tenant=self.generate.tenant, model=self.generate.model,
            prompt_chars=len(self.generate.prompt), max_tokens=self.generate.sampling.max_tokens,
            arrival_seq=self.arrival_seq,
        )

    def dispatch(self) -> pb.Dispatch:
        return pb.Dispatch(
            request_id=self.request_id, model=self.generate.model, prompt=self.generate.prompt,
            sampling=self.generate.sampling, generated_token_ids=self.generated_token_ids,
            emitted_text_chars=self.emitted_text_chars, tier=self.tier, tenant=self.generate.tenant,
        )

    def record_delta(self, delta: pb.RequestDelta, now_s: float) -> pb.TokenChunk | None:
        """Add a worker's delta; the chunk to relay to the client, if any."""
        if delta.prompt_tokens:
            self.prompt_tokens = delta.prompt_tokens
        if not delta.token_ids and not delta.text:
            return None
        chunk = pb.TokenChunk(request_id=self.client_request_id, token_ids=delta.token_ids,
                              text=delta.text, index=len(self.generated_token_ids))
        if self.first_token_at_s is None:
            self.first_token_at_s = now_s
        self.generated_token_ids.extend(delta.token_ids)
        self.text_parts.append(delta.text)
        self.emitted_text_chars += len(delta.text)
        return chunk

    def result(self, finish_reason: int, worker_id: str, now_s: float) -> pb.GenerateResult:
        def since_accept(at_s: float | None) -> float:
            return (at_s - self.accepted_at_s) if at_s is not None else 0.0

        usage = pb.Usage(prompt_tokens=self.prompt_tokens,
                         generated_tokens=len(self.generated_token_ids),
                         queue_time_s=since_accept(self.dispatched_at_s),
                         time_to_first_token_s=since_accept(self.first_token_at_s),
                         total_time_s=since_accept(now_s))
        return pb.GenerateResult(
            request_id=self.client_request_id, text="".join(self.text_parts),
            token_ids=self.generated_token_ids, finish_reason=finish_reason, usage=usage,
            model=self.generate.model, worker_id=worker_id, num_restarts=self.num_restarts,
        )
