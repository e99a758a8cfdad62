"""llmos results and chunks -> OpenAI's response and chunk objects (plain dicts)."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Sequence

from llmos.wire import pb

# The text is what the model made in each case; OpenAI has no reason for "stopped
# early by the server", and "length" (cut short) is what a client should act on.
FINISH_REASONS = {
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_EOS: "stop",
    pb.FINISH_REASON_CANCELLED: "length",
    pb.FINISH_REASON_DEADLINE: "length",
}
TEXT_COMPLETION = "text_completion"
CHAT_COMPLETION = "chat.completion"
CHAT_CHUNK = "chat.completion.chunk"


def finish_reason(result: pb.GenerateResult) -> str:
    return FINISH_REASONS.get(result.finish_reason, "stop")


def usage(result_usage: pb.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": result_usage.prompt_tokens,
        "completion_tokens": result_usage.generated_tokens,
        "total_tokens": result_usage.prompt_tokens + result_usage.generated_tokens,
    }


class Reply:
    """The id, time and model every object of one answer shares."""

    def __init__(self, request_id: str, model: str, is_chat: bool) -> None:
        self.id = f"{'chatcmpl' if is_chat else 'cmpl'}-{request_id}"
        self.created = int(time.time())
        self.model = model
        self.is_chat = is_chat

    def head(self, kind: str) -> dict[str, object]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, result: pb.GenerateResult) -> dict[str, object]:
        """The non-stream response."""
        self.model = result.model or self.model
        if self.is_chat:
            choice: dict[str, object] = {"message": {"role": "assistant", "content": result.text}}
        else:
            choice = {"text": result.text}
        choices = [{"index": 0, **choice, "logprobs": None, "finish_reason": finish_reason(result)}]
        kind = CHAT_COMPLETION if self.is_chat else TEXT_COMPLETION
        return {**self.head(kind), "choices": choices, "usage": usage(result.usage)}

    def chunk(self, text: str, reason: str | None = None, role: str | None = None) -> dict[str, object]:
        """One stream chunk: text (or, for chat, the role) and, last, the finish reason."""
        if self.is_chat:
            delta: dict[str, str] = {}
            if role is not None:
                delta["role"] = role
            if text or role is not None:
                delta["content"] = text
            choice: dict[str, object] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text}
        choice |= {"logprobs": None, "finish_reason": reason}
        return {**self.head(CHAT_CHUNK if self.is_chat else TEXT_COMPLETION), "choices": [choice]}

    def usage_chunk(self, result: pb.GenerateResult) -> dict[str, object]:
        """The last chunk with stream_options.include_usage: no choices, the usage."""
        kind = CHAT_CHUNK if self.is_chat else TEXT_COMPLETION
        return {**self.head(kind), "choices": [], "usage": usage(result.usage)}


def embeddings_answer(result: pb.EmbedResult, is_base64: bool) -> dict[str, object]:
    data = [
        {"object": "embedding", "index": index, "embedding": vector(embedding.values, is_base64)}
        for index, embedding in enumerate(result.embeddings)
    ]
    tokens = result.usage.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def vector(values: Sequence[float], is_base64: bool) -> list[float] | str:
    """An embedding as floats, or as OpenAI's base64 of little-endian float32s."""
    if not is_base64:
        return list(values)
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
