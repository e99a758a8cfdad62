"""The support assistant's conversations: one shared system prompt with the shop's FAQ,
and sessions whose prompt is their whole history, so each turn's prompt begins with the
previous turn's prompt and answer (the prefix a worker's cache holds)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llmos.aio import AsyncClient
from llmos.wire import pb

INTERACTIVE_TIER = "interactive"
# One tenant for every customer, so the broker's llmos:prompt_tokens_total{tenant=...} counts
# exactly the conversations' prompt tokens (the batch flood runs under another).
SUPPORT_TENANT = "support-chat"

SYSTEM_PROMPT = """\
You are Pip, the customer-service assistant of Copper Kettle, a small online shop for tea and \
kitchenware. Answer in one or two friendly sentences, from the facts below only; if they do not \
cover a question, offer to pass it to a person.

Opening hours: the shop in Harbour Street opens Monday to Saturday from nine to six, and \
Sunday from ten to four. The phone line keeps the same hours.
Delivery: orders placed before two o'clock leave the same day. Standard delivery takes two to \
four working days and is free above forty pounds; express delivery arrives the next working \
day for six pounds.
Refunds: unused items can be returned within thirty days for a full refund. Refunds reach the \
original card within five working days after the parcel arrives back.
Passwords: customers reset a forgotten password from the link on the sign-in page. The shop \
never asks for a password by email or on the phone."""

# Rendered by hand: the served models' tokenizers need not carry a chat template, and the
# client never loads one. What matters for the cache is that a turn's rendering only appends.
SYSTEM_TAG, USER_TAG, ASSISTANT_TAG = "<|system|>\n", "\n<|user|>\n", "\n<|assistant|>\n"
STOP_STRINGS = ("<|user|>", "<|system|>")

QUESTIONS = (
    "Hello! When are you open on Sunday?",
    "How long does standard delivery take?",
    "Can I still get my order tomorrow if I pay for express?",
    "I forgot my password, what should I do?",
    "The teapot I bought is the wrong colour. Can I send it back?",
    "How soon will I see the refund on my card?",
    "Is delivery free for an order of fifty pounds?",
    "Someone phoned me asking for my password. Was that you?",
    "Do you answer the phone in the evening?",
    "Thanks! One more thing: do you ship the same day?",
)


@dataclass
class Turn:
    """One question and its streamed answer, with what the customer waited."""

    question: str
    prompt: str = ""
    answer: str = ""
    ttft_s: float = 0.0  # submit -> first streamed chunk, as the customer sees it
    total_s: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    worker_id: str = ""
    finish_reason: str = ""


@dataclass
class ChatSession:
    """A customer's conversation: the system prompt, then every turn so far."""

    customer_id: str
    system_prompt: str = SYSTEM_PROMPT
    turns: list[Turn] = field(default_factory=list)

    def render(self, question: str) -> str:
        """The prompt for `question`: the whole history, then an open assistant turn."""
        parts = [SYSTEM_TAG, self.system_prompt]
        for turn in self.turns:
            parts += [USER_TAG, turn.question, ASSISTANT_TAG, turn.answer]
        parts += [USER_TAG, question, ASSISTANT_TAG]
        return "".join(parts)

    async def ask(self, client: AsyncClient, question: str, max_tokens: int) -> Turn:
        """Stream the answer to `question` on the interactive tier; the turn joins the history."""
        assert max_tokens > 0, "an answer's length is bounded"
        turn = Turn(question=question, prompt=self.render(question))
        started_s = time.perf_counter()
        request_id = await client.submit(
            turn.prompt,
            max_tokens=max_tokens,
            stop=STOP_STRINGS,
            tier=INTERACTIVE_TIER,
            tenant=SUPPORT_TENANT,
        )
        async for _chunk in client.stream(request_id):
            if not turn.ttft_s:
                turn.ttft_s = time.perf_counter() - started_s
        result = await client.result(request_id)
        turn.total_s = time.perf_counter() - started_s
        turn.ttft_s = turn.ttft_s or turn.total_s  # an answer that ended before any chunk
        # exactly as generated: the worker caches the prompt and this answer, and the next
        # turn's prompt reuses both only if it repeats them character for character
        turn.answer = result.text
        turn.prompt_tokens = result.usage.prompt_tokens
        turn.generated_tokens = result.usage.generated_tokens
        turn.worker_id = result.worker_id
        turn.finish_reason = pb.FinishReason.Name(result.finish_reason)
        self.turns.append(turn)
        return turn
