"""One llama.cpp run of `llmos bench engine --peer llama.cpp`, in a process of its own.

`python -m llmos_bench.peer_llama_cpp` reads one job (JSON) on stdin, loads the
GGUF file with llama-cpp-python's low-level API, drives the same closed loop as
`llmos_bench.load.run_closed_loop` (at concurrency N, N sequences in flight; as
one finishes, the next prompt starts in its slot, prefilled in the same
`llama_decode` as the others' decode tokens), and prints one JSON line. Its
own process, so that the peak RSS it reports (VmHWM) is llama.cpp's alone.

It imports numpy and llama_cpp and nothing of llmos that brings torch, so its RSS
holds what a llama.cpp server would hold and nothing of ours.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp  # type: ignore[import-not-found]
import numpy as np

from llmos_bench.rss import peak_rss_bytes

KV_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}
FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
WARM_UP_TOKENS = 2


@dataclass
class PeerJob:
    gguf_path: str
    prompts: list[list[int]]
    concurrency: int
    new_tokens: int
    threads: int
    kv_type: str = "f16"  # llama.cpp's default
    flash_attn: str = "auto"  # llama.cpp's default
    check_tokens: int = 0  # first, prompt 0 alone for this many greedy tokens (their ids come back)


@dataclass
class Slot:
    """One sequence id of the context and the request it runs (None: free)."""

    seq_id: int
    prompt_index: int | None = None
    pos: int = 0  # the next token's position
    pending: list[int] = field(default_factory=list)  # tokens to feed in the next decode
    generated: list[int] = field(default_factory=list)


class LlamaCppRunner:
    def __init__(self, job: PeerJob) -> None:
        self.job = job
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0  # the CPU, whatever the build: the comparison is on CPU
        self.model = llama_cpp.llama_model_load_from_file(job.gguf_path.encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {job.gguf_path}")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        longest = max(len(p) for p in job.prompts) + max(job.new_tokens, job.check_tokens)
        self.max_batch_tokens = job.concurrency * longest  # every slot prefilling at once
        params = llama_cpp.llama_context_default_params()
        # Each sequence has its own KV cells (not unified): the prompts share nothing, so
        # a unified cache would only make every sequence attend over the others' masked cells.
        params.kv_unified = False
        params.n_seq_max = job.concurrency
        params.n_ctx = job.concurrency * longest
        params.n_batch = self.max_batch_tokens
        params.n_threads = params.n_threads_batch = job.threads
        params.type_k = params.type_v = KV_TYPES[job.kv_type]
        params.flash_attn_type = FLASH_ATTN[job.flash_attn]
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not make a context")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.max_batch_tokens, 0, 1)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)

    def run_closed_loop(self, prompts: list[list[int]], concurrency: int, new_tokens: int) -> dict[str, Any]:
        """Every prompt to `new_tokens` greedy tokens (EOS is never looked at), `concurrency`
        at once; the clock runs from the first prompt's start to the last token."""
        assert concurrency <= self.job.concurrency
        slots = [Slot(seq_id) for seq_id in range(concurrency)]
        outputs: dict[int, list[int]] = {}
        next_index = 0
        started = time.perf_counter()
        while len(outputs) < len(prompts):
            for slot in slots:
                if slot.prompt_index is None and next_index < len(prompts):
                    slot.prompt_index, slot.pos = next_index, 0
                    slot.pending, slot.generated = list(prompts[next_index]), []
                    next_index += 1
            self.decode([slot for slot in slots if slot.prompt_index is not None])
            for slot in slots:
                if slot.prompt_index is not None and len(slot.generated) == new_tokens:
                    outputs[slot.prompt_index] = slot.generated
                    # frees the sequence's cells for the next prompt in this slot
                    llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
                    slot.prompt_index = None
        wall_s = time.perf_counter() - started
        num_generated = sum(len(tokens) for tokens in outputs.values())
        assert num_generated == len(prompts) * new_tokens
        return {
            "requests": len(prompts),
            "output_tokens": num_generated,
            "wall_s": wall_s,
            "output_tokens_per_s": num_generated / wall_s,
            "token_ids": [outputs[index] for index in range(len(prompts))],
        }

    def decode(self, running: list[Slot]) -> None:
        """One llama_decode of every running slot's pending tokens; each slot's next token
        is the argmax of the logits at its last one."""
        batch, n_tokens, last_rows = self.batch, 0, []
        for slot in running:
            for offset, token in enumerate(slot.pending):
                batch.token[n_tokens] = token
                batch.pos[n_tokens] = slot.pos + offset
                batch.n_seq_id[n_tokens] = 1
                batch.seq_id[n_tokens][0] = slot.seq_id
                batch.logits[n_tokens] = offset == len(slot.pending) - 1
                n_tokens += 1
            last_rows.append(n_tokens - 1)
        batch.n_tokens = n_tokens
        status = llama_cpp.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        for slot, row in zip(running, last_rows, strict=True):
            logits = llama_cpp.llama_get_logits_ith(self.ctx, row)
            token = int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())
            slot.pos += len(slot.pending)
            slot.pending = [token]
            slot.generated.append(token)

    def run(self) -> dict[str, Any]:
        job = self.job
        check_ids: list[int] = []
        if job.check_tokens:
            check_ids = self.run_closed_loop(job.prompts[:1], 1, job.check_tokens)["token_ids"][0]
        # one short pass first, as llmos warms up: no measurement pays for first calls
        self.run_closed_loop(job.prompts[:2], min(2, job.concurrency), WARM_UP_TOKENS)
        llama_cpp.llama_memory_clear(self.memory, True)
        figures = self.run_closed_loop(job.prompts, job.concurrency, job.new_tokens)
        del figures["token_ids"]
        return {**figures, "check_token_ids": check_ids}


def main() -> None:
    job = PeerJob(**json.load(sys.stdin))
    assert job.threads >= 1 and job.concurrency >= 1, job
    runner = LlamaCppRunner(job)
    try:
        result = runner.run()
    finally:
        runner.close()
    result["peak_rss_bytes"] = peak_rss_bytes()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
