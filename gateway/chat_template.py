"""Chat messages -> one prompt string.

With `--tokenizer DIR` and transformers installed, the tokenizer's own chat
template renders them (with the generation prompt). Otherwise, or when the
tokenizer has no template, the plain template:

    System: You are terse.
    User: Hi
    Assistant:

one `Role: content` line per message (the role capitalized), then `Assistant:`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Render = Callable[[list[dict[str, str]]], str]


def plain_template(messages: list[dict[str, str]]) -> str:
    lines = [f"{message['role'].capitalize()}: {message['content']}" for message in messages]
    return "\n".join([*lines, "Assistant:"])


def load_renderer(tokenizer_dir: str) -> Render:
    """The tokenizer's chat template when there is one to load, else `plain_template`."""
    if not tokenizer_dir:
        return plain_template
    try:
        from transformers import AutoTokenizer  # optional: the gateway runs without torch
    except ImportError:
        log.warning("transformers is not installed: chat uses the plain template, not %s's", tokenizer_dir)
        return plain_template
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if not getattr(tokenizer, "chat_template", None):
        log.warning("tokenizer %s has no chat template: chat uses the plain template", tokenizer_dir)
        return plain_template

    def render(messages: list[dict[str, str]]) -> str:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    return render
