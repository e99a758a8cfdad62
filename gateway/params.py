"""OpenAI request bodies -> the llmos request they ask for, or a BadRequest naming why.

Plain data in, plain data out: the HTTP layer (gateway.app) parses JSON and calls
these; tests could drive them without a server. docs/gateway.md lists the fields
honoured and refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llmos.wire.constants import DEFAULT_TIERS

# Fields every generation endpoint honours; `user` is accepted and ignored.
_COMMON_FIELDS = frozenset(
    {"model", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options", "user"}
    | {"tier", "deadline_ms"}  # llmos extensions (extra_body)
)
COMPLETION_FIELDS = _COMMON_FIELDS | {"prompt", "max_tokens"}
CHAT_FIELDS = _COMMON_FIELDS | {"messages", "max_tokens", "max_completion_tokens"}
EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "user", "tier", "deadline_ms"})

# A field the gateway does not implement is still accepted at its OpenAI default
# (clients such as LangChain send them all); any other value is refused.
_DEFAULTS: dict[str, object] = {
    "best_of": 1,
    "echo": False,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logprobs": False,
    "response_format": {"type": "text"},
    "tool_choice": "none",
    "parallel_tool_calls": True,
}
_EMPTY: tuple[object, ...] = (None, False, 0, "", [], {})

OPENAI_TEMPERATURE = 1.0  # OpenAI samples at 1.0 when the field is absent
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat has none (0: the broker's)
TIER_HEADER = "x-llmos-tier"
DEADLINE_HEADER = "x-llmos-deadline-ms"


class BadRequest(Exception):
    """A request the gateway refuses with 400; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Generation:
    """One llmos GenerateRequest's fields, plus how to answer it over HTTP."""

    model: str
    prompt: str
    max_tokens: int
    temperature: float
    top_p: float | None
    stop: tuple[str, ...]
    seed: int | None
    tier: str
    deadline_ms: int
    is_stream: bool
    include_usage: bool

    def submit_args(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
            "tier": self.tier,
            "deadline_ms": self.deadline_ms,
            "stream": self.is_stream,  # a whole answer needs no chunks on the wire
        }


@dataclass(frozen=True)
class Embedding:
    model: str
    inputs: tuple[str, ...]
    tier: str
    deadline_ms: int
    is_base64: bool  # little-endian float32s, base64-encoded, as OpenAI sends them


def completion_request(body: Mapping[str, Any], headers: Mapping[str, str]) -> Generation:
    refuse_unsupported(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be one string (token ids and batches are not supported)", "prompt")
    return generation(body, headers, prompt, max_tokens_of(body, ("max_tokens",), COMPLETION_MAX_TOKENS))


def chat_request(
    body: Mapping[str, Any], headers: Mapping[str, str], render: Callable[[list[dict[str, str]]], str]
) -> Generation:
    refuse_unsupported(body, CHAT_FIELDS)
    prompt = render(chat_messages(body.get("messages")))
    max_tokens = max_tokens_of(body, ("max_completion_tokens", "max_tokens"), 0)
    return generation(body, headers, prompt, max_tokens)


def embedding_request(body: Mapping[str, Any], headers: Mapping[str, str]) -> Embedding:
    refuse_unsupported(body, EMBEDDING_FIELDS)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("encoding_format must be 'float' or 'base64'", "encoding_format")
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(text, str) for text in inputs):
        raise BadRequest("input must be a string or a non-empty list of strings", "input")
    tier, deadline_ms = extensions(body, headers)
    return Embedding(str(body.get("model") or ""), tuple(inputs), tier, deadline_ms, encoding == "base64")


def refuse_unsupported(body: Mapping[str, Any], honoured: frozenset[str]) -> None:
    refused = sorted(
        name
        for name, value in body.items()
        if name not in honoured and value not in _EMPTY and value != _DEFAULTS.get(name)
    )
    if refused:
        raise BadRequest(f"unsupported fields: {', '.join(refused)}", refused[0])


def generation(
    body: Mapping[str, Any], headers: Mapping[str, str], prompt: str, max_tokens: int
) -> Generation:
    if body.get("n") not in (None, 1):
        raise BadRequest("n must be 1", "n")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise BadRequest("stream_options must be an object", "stream_options")
    tier, deadline_ms = extensions(body, headers)
    return Generation(
        model=str(body.get("model") or ""),
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=number(body, "temperature", OPENAI_TEMPERATURE, 0.0, 2.0),
        top_p=None if body.get("top_p") is None else number(body, "top_p", 1.0, 0.0, 1.0),
        stop=stops(body.get("stop")),
        seed=integer(body, "seed", None),
        tier=tier,
        deadline_ms=deadline_ms,
        is_stream=bool(body.get("stream")),
        include_usage=bool(stream_options.get("include_usage")),
    )


def extensions(body: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[str, int]:
    """The llmos tier and deadline: the body's extra fields, else the X-Llmos-* headers."""
    tier = body.get("tier") or headers.get(TIER_HEADER) or ""
    if not isinstance(tier, str):
        raise BadRequest("tier must be a string", "tier")
    deadline = body.get("deadline_ms")
    if deadline is None:
        deadline = headers.get(DEADLINE_HEADER) or 0
    try:
        deadline_ms = int(deadline)
    except (TypeError, ValueError):
        raise BadRequest("deadline_ms must be an integer", "deadline_ms") from None
    if deadline_ms < 0:
        raise BadRequest("deadline_ms must be >= 0", "deadline_ms")
    return tier, deadline_ms


def check_tier_max(tier: str, tier_max: str) -> None:
    """An API key's tier_max is the highest tier it may ask for (of the default tiers)."""
    if not tier or not tier_max or tier not in DEFAULT_TIERS or tier_max not in DEFAULT_TIERS:
        return
    if DEFAULT_TIERS.index(tier) < DEFAULT_TIERS.index(tier_max):
        raise PermissionError(f"this API key may use tier '{tier_max}' and below, not '{tier}'")


def max_tokens_of(body: Mapping[str, Any], names: tuple[str, ...], default: int) -> int:
    for name in names:
        if body.get(name) is not None:
            value = integer(body, name, default)
            assert value is not None
            if value < 1:
                raise BadRequest(f"{name} must be >= 1", name)
            return value
    return default


def number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number in [{low:g}, {high:g}]", name)
    return float(value)


def integer(body: Mapping[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer", name)
    return value


def stops(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(stop, str) for stop in value):
        return tuple(value)
    raise BadRequest("stop must be a string or a list of strings", "stop")


def chat_messages(value: object) -> list[dict[str, str]]:
    """`messages` as [{"role", "content"}] with text content (parts of type text are joined)."""
    if not isinstance(value, list) or not value:
        raise BadRequest("messages must be a non-empty list", "messages")
    messages = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("each message needs a role", "messages")
        messages.append({"role": message["role"], "content": message_text(message.get("content"))})
    return messages


def message_text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    raise BadRequest("message content must be text (images, audio and files are not supported)", "messages")
