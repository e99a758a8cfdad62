"""workers.prefix_cache on its own: hashes, lookups, least-recently-used eviction, reports."""

from __future__ import annotations

import torch

from workers.prefix_cache import PrefixCache

BLOCK = 4
LAYERS = 2


def insert(cache: PrefixCache, token_ids: list[int], room: int = 100) -> int:
    """As the engine does: plan, then add the new blocks' keys and values (which record
    each token id, per layer, so gathers can be checked)."""
    plan = cache.plan(token_ids)
    plan.num_new = min(plan.num_new, room)
    new_ids = token_ids[plan.first_new * BLOCK : (plan.first_new + plan.num_new) * BLOCK]
    column = torch.tensor(new_ids, dtype=torch.float32)[None, :, None].expand(2, -1, 3)
    cache.add(
        plan,
        [(column + layer, -(column + layer)) for layer in range(LAYERS)],
        lambda num_tokens: [1000 + num_tokens // BLOCK],
    )
    return plan.num_new


def test_the_longest_whole_block_prefix_matches_and_gathers_in_order():
    cache = PrefixCache(BLOCK, LAYERS)
    assert insert(cache, list(range(10))) == 2  # 2 whole blocks of 4; 2 tokens left out
    path = cache.match(list(range(8)) + [99, 98], max_tokens=9)
    assert len(path) == 2
    keys, values = cache.gather(path)[1]
    assert keys.shape == (2, 8, 3) and keys[0, :, 0].tolist() == [t + 1.0 for t in range(8)]
    assert values[1, 3, 2].item() == -(3 + 1)
    assert cache.match(list(range(8)), max_tokens=7) == path[:1]  # at least one token left to compute
    assert cache.match([5, 1, 2, 3, 4], max_tokens=5) == []


def test_a_shared_start_is_stored_once_and_room_limits_new_blocks():
    cache = PrefixCache(BLOCK, LAYERS)
    insert(cache, list(range(8)))
    assert insert(cache, list(range(4)) + [50, 51, 52, 53, 60, 61, 62, 63]) == 2  # block 0 shared
    assert len(cache) == 4
    assert insert(cache, [7] * 12, room=1) == 1


def test_a_gather_across_inserts_returns_every_token_in_order():
    cache = PrefixCache(BLOCK, LAYERS)
    insert(cache, list(range(8)))  # blocks 0 and 1 of one copy
    tokens = list(range(4)) + [50, 51, 52, 53, 60, 61, 62, 63]
    insert(cache, tokens)  # block 0 shared, 2 new in another copy
    path = cache.match(tokens + [1], max_tokens=12)

    assert len(path) == 3
    assert len(cache.spans([cache.blocks[h] for h in path])) == 2  # one run per copy
    for layer, (keys, values) in enumerate(cache.gather(path)):
        assert keys[0, :, 0].tolist() == [t + layer for t in tokens]
        assert values[1, :, 2].tolist() == [-(t + layer) for t in tokens]


def test_eviction_takes_the_least_recently_used_leaves_first():
    cache = PrefixCache(BLOCK, LAYERS)
    insert(cache, list(range(12)))  # root, middle, leaf
    insert(cache, [9] * 4)  # another prefix, more recent
    root_path = cache.match(list(range(12)), max_tokens=12)
    assert cache.evict(1) == 1  # [9]*4 is now the oldest
    assert cache.match([9] * 4, max_tokens=4) == []
    assert cache.evict(1) == 1  # then the deepest block of the path
    assert cache.match(list(range(12)), max_tokens=12) == root_path[:2]


def test_reports_follow_what_is_cached():
    cache = PrefixCache(BLOCK, LAYERS)
    version = cache.version
    insert(cache, list(range(8)))
    assert cache.version > version and cache.reported_hashes() == [1002]
    insert(cache, [3] * 4)
    assert cache.reported_hashes() == [1001, 1002]  # most recent first
    cache.evict(len(cache))
    assert cache.reported_hashes() == [] and len(cache) == 0


def test_a_prefix_text_is_hashed_once_and_only_if_reported():
    cache = PrefixCache(BLOCK, LAYERS)
    calls = []
    for tokens in (list(range(8)), [3] * 4, [5] * 4):
        plan = cache.plan(tokens)
        cache.add(
            plan,
            [(torch.zeros(1, 8, 1), torch.zeros(1, 8, 1))] * LAYERS,
            lambda num_tokens, first=tokens[0]: calls.append(first) or [first],
        )
    cache.evict(2)  # both blocks of range(8), the oldest

    assert calls == []
    assert cache.reported_hashes() == [5, 3]
    assert cache.reported_hashes() == [5, 3] and calls == [5, 3]  # range(8) never hashed


def test_a_new_block_size_drops_every_block_and_the_report_changes():
    cache = PrefixCache(BLOCK, LAYERS)
    insert(cache, list(range(8)))
    version = cache.version

    cache.resize(2 * BLOCK)

    assert len(cache) == 0 and cache.reported_hashes() == []
    assert cache.version > version  # the kernel hears that the cache emptied
    assert cache.block_hashes(list(range(8)), 1) == PrefixCache(2 * BLOCK, LAYERS).block_hashes(
        list(range(8)), 1
    )
