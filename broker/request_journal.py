"""Where the broker's requests meet its durable journal (`broker.journal`).

What is journalled, and when (write-ahead: a client never holds what the journal lacks):

    accepted   the request as admitted, committed with its batch of client messages
               before `Accepted` is sent
    relayed    each chunk, committed with its step's batch before the chunks go out
    answered   the final answer (or, for a client that left, the cancelled one),
               committed before it is sent; kept `result_ttl_s`, then deleted

`ClientReplies` commits before every send, so the rule holds in one place. A
commit that fails leaves the batch's accepted requests unjournalled: their clients
get UNAVAILABLE instead of `Accepted`, and the broker forgets them.

A restarted broker `restore`s every live row into the request table, detached
(no client connection) and at the head of its tier, with the tokens relayed so
far: it resumes like a re-queued request. A client's resend finds its request
here by key (tenant, the client's request id), live or finished and kept.
"""

from __future__ import annotations

import logging
import time

from broker.admission import AdmittedRequest
from broker.journal import Chunk, FinishedRequest, Journal, JournalError, JournalKey, catch_up
from broker.request_table import RequestTable
from broker.requests import Request
from llmos.wire import WireError, error_frame, pack, pb

log = logging.getLogger(__name__)

JOURNAL_RETRY_MS = 1000
MAX_PURGE_INTERVAL_S = 1.0


def journal_key(request: Request) -> JournalKey:
    return request.tenant, request.client_request_id


def admitted_message(admitted: AdmittedRequest) -> bytes:
    """The request as admitted (model resolved, defaults filled in), so a restart need
    not admit it again against workers that may not have registered yet."""
    if admitted.kind == pb.TASK_KIND_GENERATE:
        message: pb.GenerateRequest | pb.EmbedRequest = pb.GenerateRequest(
            request_id=admitted.request_id,
            prompt=admitted.prompt,
            sampling=admitted.sampling,
            is_final_only=admitted.is_final_only,
        )
    else:  # embed and classify requests have the same fields; the row's kind tells them apart
        message = pb.EmbedRequest(request_id=admitted.request_id, inputs=admitted.inputs)
    message.model, message.tier, message.tenant = admitted.model, admitted.tier, admitted.tenant
    message.deadline_ms = admitted.deadline_ms
    return message.SerializeToString()


def admitted_from_message(kind: int, data: bytes) -> AdmittedRequest:
    if kind == pb.TASK_KIND_GENERATE:
        generate = pb.GenerateRequest.FromString(data)
        return AdmittedRequest(
            generate.request_id,
            pb.TASK_KIND_GENERATE,
            generate.model,
            generate.tier,
            generate.tenant,
            generate.deadline_ms,
            prompt=generate.prompt,
            sampling=generate.sampling,
            is_final_only=generate.is_final_only,
        )
    pooling = pb.EmbedRequest.FromString(data)
    return AdmittedRequest(
        pooling.request_id,
        kind,  # type: ignore[arg-type]  # a TaskKind stored as its int
        pooling.model,
        pooling.tier,
        pooling.tenant,
        pooling.deadline_ms,
        inputs=list(pooling.inputs),
    )


class RequestJournal:
    def __init__(self, journal: Journal, result_ttl_s: float) -> None:
        self.journal = journal
        self.result_ttl_s = result_ttl_s
        self.purge_interval_s = min(MAX_PURGE_INTERVAL_S, result_ttl_s / 4)
        self.next_purge_s = 0.0  # time.monotonic()
        self._live: dict[JournalKey, Request] = {}  # journalled and not yet answered
        self._uncommitted: list[Request] = []  # accepted since the last commit

    def close(self) -> None:
        self.journal.close()

    @property
    def num_live(self) -> int:
        return len(self._live)

    def live_request(self, key: JournalKey) -> Request | None:
        return self._live.get(key)

    def finished(self, key: JournalKey) -> FinishedRequest | None:
        return self.journal.finished(key)

    # --- writes

    def record_accepted(self, admitted: AdmittedRequest) -> None:
        """Journal a request before it is accepted (durable at the next commit, which comes
        before its `Accepted` is sent); UNAVAILABLE if the journal cannot."""
        key = (admitted.tenant, admitted.request_id)
        try:
            self.journal.add(key, admitted.kind, admitted_message(admitted), admitted.tier, time.time())
        except JournalError as exc:
            log.error("journal write failed; refusing %s: %s", admitted.request_id, exc)
            raise WireError(
                pb.UNAVAILABLE,
                f"the broker cannot journal the request ({exc}), so it does not accept it; retry later",
                admitted.request_id,
                JOURNAL_RETRY_MS,
            ) from exc

    def track(self, request: Request) -> None:
        self._live[journal_key(request)] = request

    def track_accepted(self, request: Request) -> None:
        """A request `record_accepted` wrote, now in the request table: live, and
        uncommitted until the next commit."""
        self.track(request)
        self._uncommitted.append(request)

    def record_chunk(self, request: Request, chunk: pb.TokenChunk) -> None:
        try:
            self.journal.add_chunk(journal_key(request), chunk)
        except JournalError as exc:
            log.error("journal write failed for %s: %s", request.request_id, exc)

    def record_answer(self, request: Request, payload: bytes | None) -> None:
        """Journal a request's final message; None (its client left, so it is cancelled)
        is kept as the cancelled answer a resend then gets."""
        key = journal_key(request)
        is_journalled = self._live.pop(key, None) is request
        assert is_journalled, f"request {request.request_id} is not the live journalled one for {key}"
        try:
            self.journal.finish(key, payload or cancelled_answer(request), time.time())
        except JournalError as exc:
            log.error("journal write failed for the answer of %s: %s", request.request_id, exc)

    def commit(self) -> list[Request]:
        """Commit the writes so far; the accepted requests the commit failed to make durable
        (none when it succeeds), no longer tracked here. A failure is logged, not raised:
        relayed tokens are made and their clients are waiting; the caller refuses the
        unjournalled requests."""
        uncommitted, self._uncommitted = self._uncommitted, []
        try:
            self.journal.commit()
        except JournalError as exc:
            log.error("journal commit failed; the last batch is not journalled: %s", exc)
            lost = [request for request in uncommitted if self._live.get(journal_key(request)) is request]
            for request in lost:
                del self._live[journal_key(request)]
            return lost
        return []

    # --- restart, resends, expiry

    def restore(self, requests: RequestTable, now_s: float) -> int:
        """Load every live journalled request into `requests`, detached and ahead of new
        work, with the tokens relayed before the restart; how many."""
        now = time.time()
        for row in self.journal.live():
            admitted = admitted_from_message(row.kind, row.message)
            if admitted.deadline_ms:  # the deadline counts from the first acceptance
                left_ms = admitted.deadline_ms - (now - row.accepted_at) * 1000
                admitted.deadline_ms = max(1, int(left_ms))
            request = requests.restore(admitted, now_s)
            for chunk in row.chunks:
                request.generated_token_ids.extend(chunk.token_ids)
                request.text_parts.append(chunk.text)
                request.emitted_text_chars += len(chunk.text)
            self.track(request)
            log.info(
                "restored %s (client id %s) tier %s tenant %s after %d tokens",
                request.request_id,
                admitted.request_id,
                admitted.tier,
                admitted.tenant,
                len(request.generated_token_ids),
            )
        return len(self._live)

    def catch_up_chunk(
        self, key: JournalKey, from_index: int, chunks: list[Chunk] | None = None
    ) -> bytes | None:
        """One TokenChunk with every journalled token from `from_index` on, or None."""
        token_ids, text = catch_up(self.journal.chunks(key) if chunks is None else chunks, from_index)
        if not token_ids and not text:
            return None
        return pack(pb.TokenChunk(request_id=key[1], token_ids=token_ids, text=text, index=from_index))

    def purge_expired(self, now_s: float) -> None:
        """Delete answers kept longer than result_ttl_s (checked every purge interval)."""
        if now_s < self.next_purge_s:
            return
        self.next_purge_s = now_s + self.purge_interval_s
        try:
            num_purged = self.journal.purge_finished(time.time() - self.result_ttl_s)
        except JournalError as exc:
            log.error("journal purge failed: %s", exc)
            return
        if num_purged:
            log.debug("purged %d finished requests from the journal", num_purged)


def cancelled_answer(request: Request) -> bytes:
    if request.kind == pb.TASK_KIND_GENERATE:
        return pack(request.result(pb.FINISH_REASON_CANCELLED, request.worker_id or "", time.monotonic()))
    return error_frame(
        pb.UNAVAILABLE, "the request was cancelled: its client connection closed", request.client_request_id
    )
