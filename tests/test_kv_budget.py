"""The batched engine's KV block ledger: plain data in, plain data out."""

from __future__ import annotations

import pytest

from workers.kv_budget import KvBudget


def test_a_request_grows_block_by_block_and_frees_them_all():
    budget = KvBudget(num_blocks=4, block_size=16)

    assert budget.hold("a", 17) == 2
    assert budget.hold("a", 32) == 0  # still inside its second block
    assert budget.hold("a", 33) == 1
    assert (budget.num_used_blocks, budget.num_free_blocks) == (3, 1)
    assert budget.free("a") == 3
    assert (budget.num_used_blocks, budget.free("a")) == (0, 0)


def test_can_hold_is_checked_before_hold_asserts():
    budget = KvBudget(num_blocks=3, block_size=4)
    budget.hold("a", 8)

    assert budget.can_hold("b", 4) and not budget.can_hold("b", 5)
    assert budget.can_hold("a", 12) and not budget.can_hold("a", 13)
    assert not budget.can_ever_hold(13)
    with pytest.raises(AssertionError, match="check can_hold"):
        budget.hold("b", 5)


def test_resize_recounts_in_the_new_block_size_and_may_be_over_budget():
    budget = KvBudget(num_blocks=10, block_size=4)
    budget.hold("a", 9)  # 3 blocks of 4
    budget.hold("b", 4)  # 1 block

    budget.resize(num_blocks=2, block_size=8)

    assert budget.num_blocks_held == {"a": 2, "b": 1}
    assert budget.is_over_budget
    budget.free("b")
    assert not budget.is_over_budget and budget.num_free_blocks == 0
