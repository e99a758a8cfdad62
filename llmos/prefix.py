"""Prompt-prefix block hashes, shared by the broker (what a request needs) and
workers (what their KV caches hold), so prefix-aware placement can match them.

The broker has no tokenizer, so blocks are measured in characters: block i's
hash chains the hash of block i-1 with the text of block i, so equal hashes
mean equal prefixes up to that block. Only whole blocks are hashed.
"""

from __future__ import annotations

import hashlib

PREFIX_BLOCK_CHARS = 64
MAX_PREFIX_BLOCKS = 64  # a placement hint needs no more: 4 KiB of shared prefix


def prompt_block_hashes(
    prompt: str, block_chars: int = PREFIX_BLOCK_CHARS, max_blocks: int = MAX_PREFIX_BLOCKS
) -> list[int]:
    hashes: list[int] = []
    previous = b""
    for start in range(0, min(len(prompt) // block_chars, max_blocks) * block_chars, block_chars):
        digest = hashlib.blake2b(
            previous + prompt[start : start + block_chars].encode(), digest_size=8
        ).digest()
        hashes.append(int.from_bytes(digest, "little"))
        previous = digest
    return hashes
