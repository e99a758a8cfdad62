"""Incremental detokenization gives the text a full decode gives, a step at a time."""

from __future__ import annotations

import random

import pytest

from workers.detokenizer import IncrementalText


def decode(tokenizer, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("seed", range(4))
def test_text_grows_to_the_full_decode_from_any_resume_point(tokenizer, seed):
    rng = random.Random(seed)
    multibyte = tokenizer.encode("Zoë, café, Jürgen, 日本語 😀", add_special_tokens=False)
    token_ids = multibyte + [rng.randrange(len(tokenizer)) for _ in range(30)] + multibyte
    start = rng.randrange(len(token_ids))
    text = IncrementalText(tokenizer, token_ids[:start])

    for end in range(start + 1, len(token_ids) + 1):
        added_before = text.text
        added = text.update(token_ids[:end])
        full = decode(tokenizer, token_ids[:end])
        assert text.text == added_before + added
        assert full.startswith(text.text)
        assert not text.text.endswith("\ufffd")  # a character still arriving is held back
        assert text.final_text(token_ids[:end]) == full
