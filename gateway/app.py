"""The FastAPI app: OpenAI's routes over one shared AsyncClient per broker.

The clients are made in the lifespan and shared by every request: each routes its
broker's messages by request id, so requests on it run concurrently. With several
brokers, each new request goes to the next ready one (`gateway.brokers`). A stream
whose HTTP client goes away cancels its llmos request, so the worker frees its
KV blocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sse_starlette.sse import EventSourceResponse

from gateway.api_keys import ANONYMOUS, ApiKeys, Tenancy
from gateway.brokers import BrokerLink, Brokers, broker_addresses
from gateway.chat_template import load_renderer
from gateway.config import GatewayConfig
from gateway.errors import HttpError, bad_request, forbidden, http_error, too_large, unauthorized
from gateway.metrics import GatewayMetrics, MetricsMiddleware
from gateway.params import (
    BadRequest,
    Embedding,
    Generation,
    chat_request,
    check_tier_max,
    completion_request,
    embedding_request,
)
from gateway.responses import Reply, embeddings_answer, finish_reason
from llmos.aio import AsyncClient
from llmos.errors import LlmosError, LlmosTimeout
from llmos.wire import pb

log = logging.getLogger(__name__)

TASK_NAMES: dict[int, str] = {
    pb.TASK_KIND_GENERATE: "generate",
    pb.TASK_KIND_EMBED: "embed",
    pb.TASK_KIND_CLASSIFY: "classify",
}
DONE = "[DONE]"


class Refusal(Exception):
    """Answer the HTTP request with this error instead."""

    def __init__(self, error: HttpError) -> None:
        super().__init__(error.message)
        self.error = error


class Gateway:
    """The state the routes share: the brokers' clients, the API keys, the chat renderer."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.api_keys = ApiKeys.load(config.api_keys) if config.api_keys else None
        self.render = load_renderer(config.tokenizer)
        self.addresses = broker_addresses(config.broker_address)
        self.brokers: Brokers | None = None
        self.abandoned: set[asyncio.Task[None]] = set()

    def open(self) -> list[AsyncClient]:
        """A client per broker, for the lifespan to enter."""
        config = self.config
        self.brokers = Brokers(
            [
                BrokerLink(
                    address,
                    AsyncClient(
                        address,
                        config.timeout_s,
                        key_file=config.key_file or None,
                        server_key_file=config.server_key_file or None,
                        insecure=config.insecure,
                    ),
                )
                for address in self.addresses
            ]
        )
        return [link.client for link in self.brokers.links]

    @property
    def opened(self) -> Brokers:
        """The brokers' links, which the lifespan makes before any request."""
        assert self.brokers is not None, "the lifespan opens the clients before any request"
        return self.brokers

    def broker(self, model: str) -> BrokerLink:
        """The broker for a new request for `model` ("": the default)."""
        return self.opened.pick(model)

    def tenancy(self, request: Request) -> Tenancy:
        if self.api_keys is None:
            return ANONYMOUS
        tenancy = self.api_keys.tenancy_of(request.headers.get("authorization"))
        if tenancy is None:
            raise Refusal(unauthorized())
        return tenancy

    def abandon(self, client: AsyncClient, request_id: str) -> None:
        """Cancel a request nobody waits for any more, and read its end off the client."""
        task = asyncio.get_running_loop().create_task(self._cancel(client, request_id))
        self.abandoned.add(task)
        task.add_done_callback(self.abandoned.discard)

    async def _cancel(self, client: AsyncClient, request_id: str) -> None:
        try:
            await client.cancel(request_id)
            await client.result(request_id)
        except (LlmosError, KeyError) as exc:
            log.debug("request %s: after cancelling: %s", request_id, exc)
        log.info("request %s cancelled: its HTTP client went away", request_id)

    async def has_worker(self) -> bool:
        """Whether a broker answers and holds a worker (each asked at most once a second)."""
        return await self.opened.has_worker()

    async def models(self) -> list[dict[str, object]]:
        """The models the workers of every broker that answers serve."""
        tasks: dict[str, int] = {}
        for status in await self.opened.statuses():
            for worker in status.workers:
                for model in worker.models:
                    tasks.setdefault(model, worker.task)
        if not tasks and self.config.model_name:
            tasks[self.config.model_name] = pb.TASK_KIND_GENERATE
        return [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "llmos",
                "task": TASK_NAMES.get(task, ""),
            }
            for name, task in sorted(tasks.items())
        ]


def build_app(config: GatewayConfig) -> FastAPI:
    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as clients:
            for client in gateway.open():
                await clients.enter_async_context(client)
            yield
            gateway.opened.close()

    app = FastAPI(title="llmos gateway", lifespan=lifespan)
    app.state.gateway = gateway
    metrics = GatewayMetrics()
    metrics.watch_brokers(lambda: gateway.brokers)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> PlainTextResponse:
        """200 once a broker answers and holds a worker: a load balancer's readiness probe."""
        if await gateway.has_worker():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready: no broker, or no worker registered with it\n", status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        content, content_type = metrics.exposition()
        return Response(content, media_type=content_type)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, object]:
        gateway.tenancy(request)
        return {"object": "list", "data": await gateway.models()}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        tenancy = gateway.tenancy(request)
        asked = completion_request(await json_body(request, gateway.config.max_body_bytes), request.headers)
        return await generate(gateway, asked, tenancy, is_chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        tenancy = gateway.tenancy(request)
        asked = chat_request(
            await json_body(request, gateway.config.max_body_bytes), request.headers, gateway.render
        )
        return await generate(gateway, asked, tenancy, is_chat=True)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, object]:
        tenancy = gateway.tenancy(request)
        asked = embedding_request(await json_body(request, gateway.config.max_body_bytes), request.headers)
        return await embed(gateway, asked, tenancy)

    return app


async def generate(gateway: Gateway, asked: Generation, tenancy: Tenancy, is_chat: bool) -> Any:
    check_tier(asked.tier, tenancy)
    link = gateway.broker(asked.model)
    client = link.client
    try:
        request_id = await client.submit(asked.prompt, tenant=tenancy.tenant, **asked.submit_args())
    except LlmosTimeout:
        link.note_silence()
        raise
    reply = Reply(request_id, asked.model, is_chat)
    if asked.is_stream:
        return EventSourceResponse(stream_events(gateway, client, request_id, reply, asked.include_usage))
    is_finished = False
    try:
        result = await client.result(request_id)
        is_finished = True
    except LlmosError as exc:
        is_finished = not isinstance(exc, LlmosTimeout)  # as in stream_events
        raise
    finally:
        if not is_finished:
            gateway.abandon(client, request_id)
    return reply.whole(result)


async def embed(gateway: Gateway, asked: Embedding, tenancy: Tenancy) -> dict[str, object]:
    check_tier(asked.tier, tenancy)
    result = await gateway.broker(asked.model).client.embed(
        list(asked.inputs),
        model=asked.model,
        tier=asked.tier,
        tenant=tenancy.tenant,
        deadline_ms=asked.deadline_ms,
    )
    return embeddings_answer(result, asked.is_base64)


async def stream_events(
    gateway: Gateway, client: AsyncClient, request_id: str, reply: Reply, include_usage: bool
) -> AsyncIterator[dict[str, str]]:
    """The SSE events of one request: its chunks, the finish reason, usage, [DONE]."""
    is_finished = False
    try:
        if reply.is_chat:
            yield event(reply.chunk("", role="assistant"))
        async for chunk in client.stream(request_id):
            if chunk.text:
                yield event(reply.chunk(chunk.text))
        result = await client.result(request_id)
        is_finished = True
        yield event(reply.chunk("", reason=finish_reason(result)))
        if include_usage:
            yield event(reply.usage_chunk(result))
    except LlmosError as exc:
        # a wire error ended the request; a timeout leaves it running unless cancelled
        is_finished = not isinstance(exc, LlmosTimeout)
        log.warning("request %s failed mid-stream: %s", request_id, exc)
        yield event(http_error(exc).body())
    finally:
        if not is_finished:  # the HTTP client went away (or the server is stopping)
            gateway.abandon(client, request_id)
    yield {"data": DONE}


def event(payload: dict[str, object]) -> dict[str, str]:
    return {"data": json.dumps(payload, separators=(",", ":"))}


def check_tier(tier: str, tenancy: Tenancy) -> None:
    try:
        check_tier_max(tier, tenancy.tier_max)
    except PermissionError as exc:
        raise Refusal(forbidden(str(exc))) from None


async def json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, read only up to `max_bytes`: a client must not make
    the gateway hold what it likes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise Refusal(too_large(max_bytes))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise Refusal(too_large(max_bytes))
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def add_error_handlers(app: FastAPI) -> None:
    def respond(error: HttpError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers())

    @app.exception_handler(LlmosError)
    async def llmos_error(_: Request, exc: LlmosError) -> JSONResponse:
        return respond(http_error(exc))

    @app.exception_handler(BadRequest)
    async def invalid(_: Request, exc: BadRequest) -> JSONResponse:
        return respond(bad_request(exc.message, exc.param))

    @app.exception_handler(Refusal)
    async def refused(_: Request, exc: Refusal) -> JSONResponse:
        return respond(exc.error)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return respond(HttpError(500, "the gateway failed to serve this request", "server_error"))
