"""asyncio client SDK: the same verbs as `llmos.client.Client`, as coroutines.

    async with AsyncClient() as client:
        request_id = await client.submit("Once upon a time", max_tokens=32)
        async for chunk in client.stream(request_id):
            print(chunk.text, end="", flush=True)
        result = await client.result(request_id)

One reader task owns the socket's receive side and drops each incoming message
into its request's asyncio.Queue, so any number of coroutines may wait on
different requests of one client at once. The client belongs to one event loop.
The reader task also watches the connection and rides through a broker restart
as `llmos.client.Client` does (docs/protocol.md, "Reconnecting").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import cast

import zmq
import zmq.asyncio
from google.protobuf.message import Message

from llmos.client import (
    DEFAULT_TIMEOUT_S,
    Answer,
    answer_of,
    default_broker_address,
    ends_stream,
    make_generate_request,
    make_pooling_request,
)
from llmos.errors import LlmosTimeout, error_from_proto
from llmos.reconnect import UNTIED, LinkWatch, LiveRequests, admit_frame, request_id_of, resend_frames
from llmos.security.client_keys import client_curve
from llmos.wire import pack, pb
from llmos.wire.envelope import body_name
from llmos.wire.sockets import close_monitored, connect_client_dealer, link_event

log = logging.getLogger(__name__)


class AsyncClient:
    """Non-blocking client for the broker's client ROUTER."""

    def __init__(
        self,
        address: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        key_file: str | Path | None = None,
        server_key_file: str | Path | None = None,
        insecure: bool = False,
    ) -> None:
        """Keys as for `llmos.client.Client`."""
        self.address = address or default_broker_address()
        self.timeout_s = timeout_s
        self._curve = client_curve(key_file, server_key_file, is_insecure=insecure)
        self._context = zmq.asyncio.Context()
        self._connect()
        self._live = LiveRequests()
        self._queues: dict[str, asyncio.Queue[Message]] = {}
        self._results: dict[str, pb.GenerateResult] = {}
        self._reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ verbs

    async def submit(
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
        """Send a GenerateRequest; return its id once Accepted, else raise the typed error."""
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
        queue = self._open_queue(request_id)
        await self._send_request(request)
        message = await self._next(request_id, f"no answer to request {request_id}")
        if isinstance(message, pb.Error):
            del self._queues[request_id]
            raise error_from_proto(message)
        if not isinstance(message, pb.Accepted):
            # The broker always accepts first; if it did not, stream() still needs this message.
            log.warning("request %s: %s arrived before accepted", request_id, body_name(message))
            _put_front(queue, message)
        return request_id

    async def stream(self, request_id: str) -> AsyncIterator[pb.TokenChunk]:
        """Yield the request's chunks in order; stop at its GenerateResult (kept for result())."""
        if request_id in self._results:
            return
        if request_id not in self._queues:
            raise KeyError(f"request {request_id} is not in flight on this client")
        while True:
            message = await self._next(request_id, f"nothing arrived for request {request_id}")
            if isinstance(message, pb.TokenChunk):
                yield message
            elif ends_stream(request_id, message, self._queues, self._results):
                return

    async def result(self, request_id: str) -> pb.GenerateResult:
        """The request's GenerateResult, draining its stream first; handed out once."""
        async for _ in self.stream(request_id):
            pass
        return self._results.pop(request_id)

    async def generate(self, prompt: str, **params: object) -> pb.GenerateResult:
        """submit + wait for the result; `params` are submit()'s keywords. The broker
        sends no chunks unless `stream=True` is passed: only the result is read."""
        params.setdefault("stream", False)
        return await self.result(await self.submit(prompt, **params))  # type: ignore[arg-type]

    async def embed(
        self,
        inputs: str | Sequence[str],
        *,
        model: str = "",
        tier: str = "",
        tenant: str = "",
        request_id: str | None = None,
        deadline_ms: int = 0,
    ) -> pb.EmbedResult:
        """One L2-normalized embedding per input, in input order (see Client.embed)."""
        request = make_pooling_request(
            pb.TASK_KIND_EMBED,
            inputs,
            request_id=request_id,
            model=model,
            tier=tier,
            tenant=tenant,
            deadline_ms=deadline_ms,
        )
        return await self._answer(request, pb.EmbedResult)

    async def classify(
        self,
        inputs: str | Sequence[str],
        *,
        model: str = "",
        tier: str = "",
        tenant: str = "",
        request_id: str | None = None,
        deadline_ms: int = 0,
    ) -> pb.ClassifyResult:
        """One classification per input, in input order (see Client.classify)."""
        request = make_pooling_request(
            pb.TASK_KIND_CLASSIFY,
            inputs,
            request_id=request_id,
            model=model,
            tier=tier,
            tenant=tenant,
            deadline_ms=deadline_ms,
        )
        return await self._answer(request, pb.ClassifyResult)

    async def _answer(
        self, request: pb.EmbedRequest | pb.ClassifyRequest, result_type: type[Answer]
    ) -> Answer:
        """Send a request that has one answer; wait past `accepted` for it."""
        request_id = request.request_id
        self._open_queue(request_id)
        await self._send_request(request)
        try:
            while True:
                answer = answer_of(
                    request_id,
                    result_type,
                    await self._next(request_id, f"no answer to request {request_id}"),
                )
                if answer is not None:
                    return answer
        finally:
            self._queues.pop(request_id, None)  # a late reply finds no queue and is dropped
            self._live.forget(request_id)

    async def cancel(self, request_id: str) -> None:
        self._live.mark_cancelled(request_id)
        await self._send(pack(pb.Cancel(request_id=request_id)))

    async def status(self) -> pb.StatusReply:
        self._open_queue(UNTIED)  # a late reply to an earlier status() must not answer this one
        await self._send(pack(pb.StatusRequest()))
        while True:
            message = await self._next(UNTIED, f"no status reply from {self.address}")
            if isinstance(message, pb.StatusReply):
                return message
            if isinstance(message, pb.Error):
                raise error_from_proto(message)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None
        close_monitored(self._socket, self._monitor)
        self._context.term()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------ the connection

    def _connect(self) -> None:
        self._socket, self._monitor = connect_client_dealer(self._context, self.address, self._curve)
        self._link = LinkWatch(self.address)
        self._poller = zmq.asyncio.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    async def _send_request(self, request: pb.GenerateRequest | pb.EmbedRequest | pb.ClassifyRequest) -> None:
        self._live.add(request)
        await self._send(pack(request))

    async def _send(self, frame: bytes) -> None:
        """Send, or LlmosTimeout as `Client._send` says."""
        try:
            await asyncio.wait_for(self._socket.send(frame), self.timeout_s)
        except TimeoutError:
            raise LlmosTimeout(
                f"could not send to {self.address} within {self.timeout_s:g} s "
                "(is it up, and does it accept this client's key?)"
            ) from None

    async def _watch_link(self) -> None:
        """Read the connection's events; renew a lost connection (a fresh socket, for
        the reasons `Client._reconnect` gives)."""
        while is_readable(self._monitor):
            event = link_event(await self._monitor.recv_multipart())
            if self._link.is_lost(event):
                await self._receive_all()  # what the lost broker sent counts as held
                close_monitored(self._socket, self._monitor, linger_ms=0)
                self._connect()
                for frame in resend_frames(self._live, self.address):
                    await self._send(frame)
                return  # the new connection's events come on its own monitor

    async def _send_due_resends(self) -> None:
        for message in self._live.due_resends(time.monotonic()):
            await self._send(pack(message))

    # ------------------------------------------------------------ receiving

    def _open_queue(self, key: str) -> asyncio.Queue[Message]:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_forever())
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._queues[key] = queue
        return queue

    async def _next(self, key: str, timeout_message: str) -> Message:
        try:
            return await asyncio.wait_for(self._queues[key].get(), self.timeout_s)
        except TimeoutError:
            raise LlmosTimeout(f"{timeout_message} within {self.timeout_s:g} s", key) from None

    async def _read_forever(self) -> None:
        """The reader task: route every incoming frame to its request's queue, renew a
        lost connection, send the resends that are due."""
        while True:
            due_s = self._live.next_due_s()
            timeout_ms = None if due_s is None else int(max(0.0, due_s - time.monotonic()) * 1000) + 1
            ready = dict(await self._poller.poll(timeout_ms))
            if self._socket in ready:
                await self._receive_all()
            if self._monitor in ready:
                await self._watch_link()
            await self._send_due_resends()

    async def _receive_all(self) -> None:
        while is_readable(self._socket):
            self._route((await self._socket.recv_multipart())[-1])

    def _route(self, frame: bytes) -> None:
        message = admit_frame(frame, self._live, self.address, time.monotonic())
        if message is None:
            return
        key = request_id_of(message)
        queue = self._queues.get(key)
        if queue is None:
            log.debug("dropping %s for request %s: not in flight", body_name(message), key)
            return
        queue.put_nowait(message)


def is_readable(socket: zmq.asyncio.Socket) -> bool:
    """Whether a message waits on `socket` now (its recv would not wait)."""
    return bool(cast(int, socket.get(zmq.EVENTS)) & zmq.POLLIN)


def _put_front(queue: asyncio.Queue[Message], item: Message) -> None:
    """Put `item` back at the head of `queue` (nothing awaits it: we are its only reader)."""
    rest = []
    while not queue.empty():
        rest.append(queue.get_nowait())
    for queued in [item, *rest]:
        queue.put_nowait(queued)
