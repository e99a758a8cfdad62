"""From a request's token ids to the text it may stream.

Incremental detokenization: a request's text grows by the text of its new
tokens, without decoding the whole answer again at every step. Each update
decodes a short window, `ids[prefix_offset:]`, and keeps what it adds past
`ids[prefix_offset:read_offset]` (vLLM's method). The window starts a few
tokens back so that tokenizers which treat the first token of a decode
specially (SentencePiece drops its leading space) see the same context as a
full decode would. Text that ends in the middle of a UTF-8 character
("\\ufffd") is not taken until the character is complete; `final_text`
includes it, as a full decode does.

What may be streamed: a step's text is `text[emitted:end]`, where `end` never
cuts a UTF-8 character in half (a trailing "\\ufffd" is a character still
arriving) and holds back `max(len(stop)) - 1` characters, so a client never
sees the first part of a stop string that the next token completes.
"""

from __future__ import annotations

from typing import Any

INCOMPLETE_CHAR = "\ufffd"
PREFIX_TOKENS = 5  # how far back a window starts: enough for any merge of spaces
MAX_INCOMPLETE_TOKENS = 8  # a resumed answer ending mid-character backs off at most this far


class IncrementalText:
    def __init__(self, tokenizer: Any, token_ids: list[int]) -> None:
        """Start from the tokens a resumed request already has (one full decode)."""
        self.tokenizer = tokenizer
        self.text = ""
        self.prefix_offset = 0
        self.read_offset = 0
        self.prefix_text = ""
        if token_ids:
            self.catch_up(token_ids)

    def catch_up(self, token_ids: list[int]) -> None:
        complete = len(token_ids)
        text = self.decode(token_ids)
        while text.endswith(INCOMPLETE_CHAR) and complete > len(token_ids) - MAX_INCOMPLETE_TOKENS:
            complete -= 1
            text = self.decode(token_ids[:complete])
        self.text = text
        self.move_window(token_ids, complete)
        self.update(token_ids)

    def update(self, token_ids: list[int]) -> str:
        """Take the text of the tokens past `read_offset` if it is complete; return the text added."""
        window_text = self.decode(token_ids[self.prefix_offset :])
        if len(window_text) <= len(self.prefix_text) or window_text.endswith(INCOMPLETE_CHAR):
            return ""
        added = window_text[len(self.prefix_text) :]
        self.text += added
        self.move_window(token_ids, len(token_ids))
        return added

    def final_text(self, token_ids: list[int]) -> str:
        """The whole text, with a character still incomplete at the end (as `decode` gives it)."""
        window_text = self.decode(token_ids[self.prefix_offset :])
        return self.text + window_text[len(self.prefix_text) :]

    def move_window(self, token_ids: list[int], read_offset: int) -> None:
        self.prefix_offset = max(read_offset - PREFIX_TOKENS, 0)
        self.read_offset = read_offset
        self.prefix_text = self.decode(token_ids[self.prefix_offset : read_offset])

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


def hold_back_chars(stop: tuple[str, ...]) -> int:
    return max((len(s) for s in stop), default=1) - 1


def find_stop(text: str, stop: tuple[str, ...], start: int) -> int | None:
    """Where the earliest stop-string match at or after `start` begins, or None.

    Matches cannot begin before `start` (the emitted text): the hold-back keeps
    every unmatched stop-string prefix unstreamed, and full matches end the request.
    """
    positions = [index for s in stop if s and (index := text.find(s, start)) >= 0]
    return min(positions, default=None)


def streamable_end(text: str, emitted_chars: int, hold_back: int) -> int:
    """The end of the text that may be streamed while the request goes on."""
    end = len(text.rstrip(INCOMPLETE_CHAR)) - hold_back
    return max(end, emitted_chars)
