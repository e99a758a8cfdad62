"""Incremental text: how much of a request's decoded text may be streamed now.

A step's text is `decode(all generated ids)[emitted:end]`, where `end` never
cuts a UTF-8 character in half (a trailing "\\ufffd" is a character still
arriving) and holds back `max(len(stop)) - 1` characters, so a client never
sees the first part of a stop string that the next token completes.
"""

from __future__ import annotations

INCOMPLETE_CHAR = "\ufffd"


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
