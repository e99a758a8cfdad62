"""Synchronous client SDK: one DEALER socket to the broker.

    with Client() as client:
        request_id = client.submit("Once upon a time", max_tokens=32)
        for chunk in client.stream(request_id):
            print(chunk.text, end="", flush=True)
        print(client.result(request_id).usage)

Several requests may be in flight on one client: whatever arrives for a
request nobody is reading yet waits in that request's inbox. A Client belongs
to one thread (a ZeroMQ socket is not thread-safe); use one Client per
thread, or `llmos.aio`.

A client rides through a broker restart: when its connection is lost (closed,
or silent past the ZMTP heartbeat timeout) it opens a new one, which ZeroMQ
retries with a backoff until the broker is back, and sends every live request
again with the tokens it already holds; each stream goes on without a token
twice (docs/protocol.md, "Reconnecting"). `timeout_s` still bounds every wait:
a broker that never comes back ends in LlmosTimeout.
"""

from __future__ import annotations

import collections
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar, cast

import zmq
from google.protobuf.message import Message

from llmos.config import env_var
from llmos.errors import LlmosError, LlmosTimeout, error_from_proto
from llmos.reconnect import (
    UNTIED,
    LinkWatch,
    LiveRequests,
    admit_frame,
    request_id_of,
    resend_frames,
)
from llmos.security.client_keys import client_curve
from llmos.wire import WireError, pack, pb, unpack
from llmos.wire.constants import CLIENT_PORT, tcp
from llmos.wire.envelope import body_name, body_names
from llmos.wire.sockets import close_monitored, connect_client_dealer, connect_dealer, link_event

log = logging.getLogger(__name__)

BROKER_ADDRESS_ENV = env_var("broker_address")  # LLMOS_BROKER_ADDRESS, as every service spells it
DEFAULT_TIMEOUT_S = 60.0

KERNEL_QUERY_ACCEPTS = body_names(pb.ResourceView, pb.Error)

# The answer of a request that has one (EmbedResult, ClassifyResult).
Answer = TypeVar("Answer", pb.EmbedResult, pb.ClassifyResult)
# A reply that belongs to no request (the UNTIED inbox).
Untied = TypeVar("Untied", pb.StatusReply, pb.DrainReply)


def default_broker_address() -> str:
    return os.environ.get(BROKER_ADDRESS_ENV) or tcp(CLIENT_PORT)


def make_generate_request(
    prompt: str,
    *,
    request_id: str | None = None,
    model: str = "",
    max_tokens: int = 0,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int = 0,
    stop: tuple[str, ...] | list[str] = (),
    seed: int | None = None,
    tier: str = "",
    tenant: str = "",
    deadline_ms: int = 0,
    stream: bool = True,
) -> pb.GenerateRequest:
    """The wire request for `prompt`; a fresh random request id unless one is given.
    `stream=False`: the broker sends no TokenChunk, only the final GenerateResult."""
    sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, stop=list(stop))
    if top_p is not None:
        sampling.top_p = top_p
    if seed is not None:
        sampling.seed = seed
    return pb.GenerateRequest(
        request_id=request_id or uuid.uuid4().hex,
        model=model,
        prompt=prompt,
        sampling=sampling,
        tier=tier,
        tenant=tenant,
        deadline_ms=deadline_ms,
        is_final_only=not stream,
    )


def make_pooling_request(
    kind: int,
    inputs: str | Sequence[str],
    *,
    request_id: str | None = None,
    model: str = "",
    tier: str = "",
    tenant: str = "",
    deadline_ms: int = 0,
) -> pb.EmbedRequest | pb.ClassifyRequest:
    """The EmbedRequest (kind TASK_KIND_EMBED) or ClassifyRequest for `inputs`
    (one string is one input); a fresh random request id unless one is given."""
    request_class = pb.EmbedRequest if kind == pb.TASK_KIND_EMBED else pb.ClassifyRequest
    return request_class(
        request_id=request_id or uuid.uuid4().hex,
        model=model,
        inputs=[inputs] if isinstance(inputs, str) else list(inputs),
        tier=tier,
        tenant=tenant,
        deadline_ms=deadline_ms,
    )


def ends_stream(
    request_id: str, message: Message, inboxes: dict, results: dict[str, pb.GenerateResult]
) -> bool:
    """Whether a reply other than a chunk ends the request's stream. A result does
    (kept in `results`); an error does by raising its typed exception; the request's
    inbox goes either way. Anything else is logged and passed over (False)."""
    if isinstance(message, pb.GenerateResult):
        del inboxes[request_id]
        results[request_id] = message
        return True
    if isinstance(message, pb.Error):
        del inboxes[request_id]
        raise error_from_proto(message)
    log.warning("request %s: unexpected %s while streaming", request_id, body_name(message))
    return False


def answer_of(request_id: str, result_type: type[Answer], message: Message) -> Answer | None:
    """A one-answer request's reply of `result_type`, else None (past `accepted`);
    an error raises its typed exception."""
    if isinstance(message, result_type):
        return message
    if isinstance(message, pb.Error):
        raise error_from_proto(message)
    if not isinstance(message, pb.Accepted):
        log.warning("request %s: unexpected %s", request_id, body_name(message))
    return None


class Client:
    """Blocking client for the broker's client ROUTER."""

    def __init__(
        self,
        address: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        context: zmq.Context | None = None,
        *,
        key_file: str | Path | None = None,
        server_key_file: str | Path | None = None,
        insecure: bool = False,
    ) -> None:
        """`key_file` (this client's `.key_secret`) and `server_key_file` (the broker's
        `.key`) make it speak CURVE; by default LLMOS_KEY / LLMOS_SERVER_KEY, else the
        keyring `llmos up` made, else plain TCP (llmos.security.client_keys); `insecure`:
        plain TCP whatever keys there are."""
        self.address = address or default_broker_address()
        self.timeout_s = timeout_s
        self._curve = client_curve(key_file, server_key_file, is_insecure=insecure)
        self._owns_context = context is None
        self._context = context or zmq.Context()
        self._connect()
        self._live = LiveRequests()
        self._inboxes: dict[str, collections.deque[Message]] = {}
        self._results: dict[str, pb.GenerateResult] = {}

    # ------------------------------------------------------------ verbs

    def submit(
        self,
        prompt: str,
        *,
        model: str = "",
        max_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float | None = None,
        top_k: int = 0,
        stop: tuple[str, ...] | list[str] = (),
        seed: int | None = None,
        tier: str = "",
        tenant: str = "",
        request_id: str | None = None,
        deadline_ms: int = 0,
        stream: bool = True,
    ) -> str:
        """Send a GenerateRequest and wait until the broker accepts it.

        Returns the request id; raises the typed LlmosError the broker answered
        with, or LlmosTimeout after `timeout_s` without an answer.
        """
        request = make_generate_request(
            prompt,
            request_id=request_id,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            stop=stop,
            seed=seed,
            tier=tier,
            tenant=tenant,
            deadline_ms=deadline_ms,
            stream=stream,
        )
        request_id = request.request_id
        self._inboxes[request_id] = collections.deque()
        self._send_request(request)
        message = self._next(request_id, f"no answer to request {request_id}")
        if isinstance(message, pb.Error):
            del self._inboxes[request_id]
            raise error_from_proto(message)
        if not isinstance(message, pb.Accepted):
            # The broker always accepts first; if it did not, keep the message for stream().
            log.warning("request %s: %s arrived before accepted", request_id, body_name(message))
            self._inboxes[request_id].appendleft(message)
        return request_id

    def stream(self, request_id: str) -> Iterator[pb.TokenChunk]:
        """Yield the request's chunks in order; stop at its GenerateResult.

        The result is kept for `result(request_id)`. Raises the typed error if
        the request fails, LlmosTimeout if nothing arrives for `timeout_s`.
        """
        if request_id in self._results:
            return
        if request_id not in self._inboxes:
            raise KeyError(f"request {request_id} is not in flight on this client")
        while True:
            message = self._next(request_id, f"nothing arrived for request {request_id}")
            if isinstance(message, pb.TokenChunk):
                yield message
            elif ends_stream(request_id, message, self._inboxes, self._results):
                return

    def result(self, request_id: str) -> pb.GenerateResult:
        """The request's GenerateResult, draining its stream first if needed.

        A result is handed out once: the client forgets it afterwards.
        """
        for _ in self.stream(request_id):
            pass
        return self._results.pop(request_id)

    def generate(self, prompt: str, **params: object) -> pb.GenerateResult:
        """submit + wait for the result; `params` are submit()'s keywords. The broker
        sends no chunks unless `stream=True` is passed: only the result is read."""
        params.setdefault("stream", False)
        return self.result(self.submit(prompt, **params))  # type: ignore[arg-type]

    def embed(
        self,
        inputs: str | Sequence[str],
        *,
        model: str = "",
        tier: str = "",
        tenant: str = "",
        request_id: str | None = None,
        deadline_ms: int = 0,
    ) -> pb.EmbedResult:
        """One mean-pooled, L2-normalized embedding per input, in input order
        (`result.embeddings[i].values`). Raises the typed error, or LlmosTimeout."""
        request = make_pooling_request(
            pb.TASK_KIND_EMBED,
            inputs,
            request_id=request_id,
            model=model,
            tier=tier,
            tenant=tenant,
            deadline_ms=deadline_ms,
        )
        return self._answer(request, pb.EmbedResult)

    def classify(
        self,
        inputs: str | Sequence[str],
        *,
        model: str = "",
        tier: str = "",
        tenant: str = "",
        request_id: str | None = None,
        deadline_ms: int = 0,
    ) -> pb.ClassifyResult:
        """One classification per input, in input order: the top `label` and its
        `score`, and every label's score. Raises the typed error, or LlmosTimeout."""
        request = make_pooling_request(
            pb.TASK_KIND_CLASSIFY,
            inputs,
            request_id=request_id,
            model=model,
            tier=tier,
            tenant=tenant,
            deadline_ms=deadline_ms,
        )
        return self._answer(request, pb.ClassifyResult)

    def _answer(self, request: pb.EmbedRequest | pb.ClassifyRequest, result_type: type[Answer]) -> Answer:
        """Send a request that has one answer; wait past `accepted` for it."""
        request_id = request.request_id
        self._inboxes[request_id] = collections.deque()
        self._send_request(request)
        try:
            while True:
                answer = answer_of(
                    request_id, result_type, self._next(request_id, f"no answer to request {request_id}")
                )
                if answer is not None:
                    return answer
        finally:
            self._inboxes.pop(request_id, None)  # a late reply finds no inbox and is dropped
            self._live.forget(request_id)

    def cancel(self, request_id: str) -> None:
        """Ask the broker to stop the request. Its stream then ends with a
        result whose finish_reason is CANCELLED (or an error if it was unknown)."""
        self._live.mark_cancelled(request_id)
        self._send(pack(pb.Cancel(request_id=request_id)))

    def status(self) -> pb.StatusReply:
        """The broker's StatusReply (workers, tiers, counters)."""
        return self._ask_untied(pb.StatusRequest(), pb.StatusReply, "status reply")

    def drain_worker(self, worker_id: str) -> pb.DrainReply:
        """Ask the broker to drain a worker: it finishes what it runs, takes nothing new,
        then leaves. UnknownWorker if the broker has no such worker."""
        return self._ask_untied(pb.DrainWorker(worker_id=worker_id), pb.DrainReply, "drain reply")

    def _ask_untied(self, request: Message, reply_type: type[Untied], what: str) -> Untied:
        """Send a request that no request id ties its reply to; that reply, or its Error raised."""
        # A reply to an earlier ask that timed out must not answer this one.
        self._inboxes[UNTIED] = collections.deque()
        self._send(pack(request))
        while True:
            message = self._next(UNTIED, f"no {what} from {self.address}")
            if isinstance(message, reply_type):
                return message
            if isinstance(message, pb.Error):
                raise error_from_proto(message)

    def close(self) -> None:
        close_monitored(self._socket, self._monitor)
        if self._owns_context:
            self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ the connection

    def _connect(self) -> None:
        self._socket, self._monitor = connect_client_dealer(self._context, self.address, self._curve)
        self._socket.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
        self._link = LinkWatch(self.address)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def _send_request(self, request: pb.GenerateRequest | pb.EmbedRequest | pb.ClassifyRequest) -> None:
        self._live.add(request)
        self._send(pack(request))

    def _send(self, frame: bytes) -> None:
        """Send, or LlmosTimeout when no connection takes the frame within timeout_s (a
        broker that refuses this client's handshake, for one: wrong or revoked keys)."""
        try:
            self._socket.send(frame)
        except zmq.Again:
            raise LlmosTimeout(
                f"could not send to {self.address} within {self.timeout_s:g} s "
                "(is it up, and does it accept this client's key?)"
            ) from None

    def _watch_link(self) -> None:
        """Read the connection's events; renew a lost connection."""
        while True:
            try:
                event = link_event(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if self._link.is_lost(event):
                self._reconnect()
                return  # the new connection's events come on its own monitor

    def _reconnect(self) -> None:
        """A fresh socket rather than the old one's own reconnect: a socket then holds
        one connection, so a resend never meets its original on the same connection
        (the broker would refuse it as DUPLICATE_REQUEST), and nothing the old
        broker never took waits on it to be delivered again."""
        self._receive_all()  # what the lost broker sent counts as held
        close_monitored(self._socket, self._monitor, linger_ms=0)
        self._connect()
        for frame in resend_frames(self._live, self.address):
            self._send(frame)

    def _send_due_resends(self) -> None:
        for message in self._live.due_resends(time.monotonic()):
            self._send(pack(message))

    # ------------------------------------------------------------ receiving

    def _next(self, key: str, timeout_message: str) -> Message:
        """The next message in inbox `key`, reading the socket until one arrives."""
        deadline = time.monotonic() + self.timeout_s
        inbox = self._inboxes.setdefault(key, collections.deque())
        while not inbox:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise LlmosTimeout(f"{timeout_message} within {self.timeout_s:g} s", key)
            self._wait(remaining_s)
        return inbox.popleft()

    def _wait(self, timeout_s: float) -> None:
        """Up to `timeout_s` (less if a refused resend falls due): route what arrives,
        renew a lost connection, send the resends that are due."""
        due_s = self._live.next_due_s()
        if due_s is not None:
            timeout_s = min(timeout_s, max(0.0, due_s - time.monotonic()))
        ready = dict(self._poller.poll(int(timeout_s * 1000) + 1))
        if self._socket in ready:
            self._receive_all()
        if self._monitor in ready:
            self._watch_link()
        self._send_due_resends()

    def _receive_all(self) -> None:
        """Route every frame waiting on the socket to its request's inbox."""
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._route(frames[-1])

    def _route(self, frame: bytes) -> None:
        message = admit_frame(frame, self._live, self.address, time.monotonic())
        if message is None:
            return
        key = request_id_of(message)
        inbox = self._inboxes.get(key)
        if inbox is None:
            # A late message for a request that already ended (or was never ours).
            log.debug("dropping %s for request %s: not in flight", body_name(message), key)
            return
        inbox.append(message)


def query_kernel(address: str, timeout_s: float, context: zmq.Context | None = None) -> pb.ResourceView:
    """Ask the kernel at `address` for its ResourceView (used by `llmos status` and `llmos up`).

    A fresh socket per query, so a late reply can never answer the next question.
    """
    owns_context = context is None
    context = context or zmq.Context()
    socket = connect_dealer(context, address, curve=client_curve(server="kernel"))
    try:
        socket.send(pack(pb.ResourceQuery()))
        if not socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise LlmosTimeout(f"no reply from the kernel at {address} within {timeout_s:g} s")
        _, message = unpack(socket.recv_multipart()[-1], KERNEL_QUERY_ACCEPTS)
        if isinstance(message, pb.Error):
            raise error_from_proto(message)
        return cast(pb.ResourceView, message)
    except WireError as exc:
        raise LlmosError(exc.code, f"kernel at {address} sent {exc.message}") from None
    finally:
        socket.close(linger=0)
        if owns_context:
            context.term()


__all__ = [
    "Client",
    "DEFAULT_TIMEOUT_S",
    "default_broker_address",
    "make_generate_request",
    "make_pooling_request",
    "query_kernel",
]
