"""The model side of the paged KV cache (workers.paged_runner): decodes and prefill
chunks of many requests packed in one forward, keys and values in blocks placed by
block tables, prefixes shared by block id. Greedy answers must equal `model.generate`
on each prompt alone, token for token."""

from __future__ import annotations

import math

import pytest
import torch
from engine_helpers import generate_greedy, tiny_random_model

from llmos.tiny_model import CORPUS
from workers.paged_runner import PagedRow, PagedRunner

torch.set_num_threads(1)

WORDS = CORPUS.split()
SYSTEM_PROMPT = " ".join(WORDS[:40])


class Driver:
    """Runs requests greedily through a PagedRunner: every step, each started request
    computes its next `chunk` tokens of context (a decode is a chunk of one), all in
    one forward; a row whose chunk ends its context gets its next token."""

    def __init__(self, runner: PagedRunner, chunk: int) -> None:
        self.runner, self.chunk = runner, chunk
        self.contexts: dict[str, list[int]] = {}
        self.num_computed: dict[str, int] = {}
        self.tables: dict[str, list[int]] = {}
        self.num_left: dict[str, int] = {}
        self.num_forwards = 0

    def start(self, request_id: str, token_ids: list[int], max_tokens: int, shared: list[int] = ()) -> None:
        """`shared`: blocks holding the context's first tokens already (a cached prefix)."""
        self.runner.cache.blocks.share(shared)
        self.contexts[request_id] = list(token_ids)
        self.tables[request_id] = list(shared)
        self.num_computed[request_id] = len(shared) * self.runner.block_size
        self.num_left[request_id] = max_tokens

    def step(self) -> None:
        rows, request_ids = [], []
        for request_id, context in self.contexts.items():
            if not self.num_left[request_id]:
                continue
            first = self.num_computed[request_id]
            chunk = context[first : first + self.chunk]
            self.hold(request_id, first + len(chunk))
            rows.append(PagedRow(self.tables[request_id], first, chunk))
            request_ids.append(request_id)
        logits = self.runner.forward(rows)
        self.num_forwards += 1
        for request_id, row, row_logits in zip(request_ids, rows, logits, strict=True):
            self.num_computed[request_id] += len(row.token_ids)
            if self.num_computed[request_id] == len(self.contexts[request_id]):
                self.contexts[request_id].append(int(row_logits.argmax()))
                self.num_left[request_id] -= 1

    def hold(self, request_id: str, num_tokens: int) -> None:
        table = self.tables[request_id]
        missing = math.ceil(num_tokens / self.runner.block_size) - len(table)
        table += self.runner.cache.blocks.allocate(max(missing, 0))

    def answer(self, request_id: str, num_prompt_tokens: int) -> list[int]:
        return self.contexts[request_id][num_prompt_tokens:]

    def release(self, request_id: str) -> None:
        self.runner.cache.blocks.release(self.tables.pop(request_id))

    @property
    def is_busy(self) -> bool:
        return any(self.num_left.values())


def run_staggered(
    model, tokenizer, prompts: dict[str, str], arrivals: dict[str, int], max_tokens: int, chunk: int
):
    runner = PagedRunner(model, num_blocks=64, block_size=4)
    driver = Driver(runner, chunk)
    number = 0
    while driver.is_busy or number <= max(arrivals.values()):
        for request_id, arrival in arrivals.items():
            if arrival == number:
                driver.start(request_id, tokenizer.encode(prompts[request_id]), max_tokens)
        driver.step()
        number += 1
    return driver, runner


def assert_greedy(model, tokenizer, driver: Driver, prompts: dict[str, str], max_tokens: int) -> None:
    for request_id, prompt in prompts.items():
        expected = generate_greedy(model, tokenizer, prompt, max_tokens)
        assert driver.answer(request_id, len(tokenizer.encode(prompt))) == expected, request_id


PROMPTS = {
    "long": " ".join(WORDS[5:35]),
    "short": "Hello",
    "middle": "The harbour was quiet that morning",
}
ARRIVALS = {"long": 0, "short": 2, "middle": 3}


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_decodes_and_prefill_chunks_in_one_forward_equal_generate_alone(model, tokenizer, chunk):
    driver, runner = run_staggered(model, tokenizer, PROMPTS, ARRIVALS, max_tokens=12, chunk=chunk)

    assert_greedy(model, tokenizer, driver, PROMPTS, 12)
    for request_id in PROMPTS:
        driver.release(request_id)
    assert runner.cache.blocks.num_free_blocks == 64


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "qwen3", "phi3"])
def test_other_families_equal_generate_alone(tokenizer, family):
    model = tiny_random_model(family, tokenizer, "sdpa")

    driver, _ = run_staggered(model, tokenizer, PROMPTS, ARRIVALS, max_tokens=10, chunk=7)

    assert_greedy(model, tokenizer, driver, PROMPTS, 10)


def test_each_request_holds_the_blocks_its_tokens_need_and_no_more(model, tokenizer):
    driver, runner = run_staggered(model, tokenizer, PROMPTS, ARRIVALS, max_tokens=12, chunk=64)

    for request_id, context in driver.contexts.items():
        computed = len(context) - 1  # the last token is sampled, not yet computed
        assert len(driver.tables[request_id]) == math.ceil(computed / 4)
    num_used = sum(len(table) for table in driver.tables.values())
    assert 64 - runner.cache.blocks.num_free_blocks == num_used
    # ids are handed out lowest first: the blocks written are the most ever in use at once
    assert runner.cache.capacity == 64
    assert max(block_id for table in driver.tables.values() for block_id in table) < num_used
    layer = runner.cache.layers[0]
    bytes_per_block = 2 * layer.keys[0].numel() * layer.keys.element_size()
    assert num_used <= runner.cache.num_touched_blocks <= num_used + len(PROMPTS)
    num_layers = len(runner.cache.layers)
    assert runner.cache.num_bytes == num_layers * runner.cache.num_touched_blocks * bytes_per_block


def test_a_prefix_is_shared_by_block_id_and_never_written_again(model, tokenizer):
    first_prompt, second_prompt = SYSTEM_PROMPT + " Question one?", SYSTEM_PROMPT + " And another?"
    first_ids, second_ids = tokenizer.encode(first_prompt), tokenizer.encode(second_prompt)
    common = next(i for i, (a, b) in enumerate(zip(first_ids, second_ids, strict=False)) if a != b)
    runner = PagedRunner(model, num_blocks=64, block_size=4)
    driver = Driver(runner, chunk=64)
    driver.start("first", first_ids, max_tokens=6)
    while driver.is_busy:
        driver.step()
    shared = driver.tables["first"][: common // 4]
    before = [(layer.keys[shared].clone(), layer.values[shared].clone()) for layer in runner.cache.layers]

    driver.start("second", second_ids, max_tokens=6, shared=shared)
    while driver.is_busy:
        driver.step()

    assert driver.answer("second", len(second_ids)) == generate_greedy(model, tokenizer, second_prompt, 6)
    assert driver.tables["second"][: len(shared)] == shared
    assert all(runner.cache.blocks.ref_counts[block_id] == 2 for block_id in shared)
    for layer, (keys, values) in zip(runner.cache.layers, before, strict=True):
        assert torch.equal(layer.keys[shared], keys) and torch.equal(layer.values[shared], values)
    driver.release("first")
    assert all(runner.cache.blocks.ref_counts[block_id] == 1 for block_id in shared)
    driver.release("second")
    assert runner.cache.blocks.num_free_blocks == 64
