"""Decode steps of the paged runner: its direct forward against transformers' forward, same run.

`python3 scripts/direct_forward_steps.py [PRESET] [--threads N] [--steps N] [--rows 1,8,32]`
builds a `dummy:` preset (default llama-100m, float32) and, for each row count, two
PagedRunners on it: one on `workers.direct_forward`, one on transformers' forward
(everything else alike: the paged cache and attention, the engine's linears). Each
prefills the rows' 32-token prompts, then times `--steps` decode steps, two rounds
alternating; the best round counts, and both must pick the same greedy tokens. Prints
a line per row count with both step times and the ratio, then a JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from workers import cpu_kernels
from workers.dummy import build_dummy_model
from workers.paged_runner import PagedRow, PagedRunner

PROMPT_LEN = 32
BLOCK_SIZE = 16


def decode_s(
    runner: PagedRunner, num_rows: int, steps: int, vocab_size: int
) -> tuple[float, list[list[int]]]:
    """Seconds per decode step of `num_rows` requests, and each row's greedy tokens."""
    blocks_per_row = math.ceil((PROMPT_LEN + steps + 1) / BLOCK_SIZE)
    tables = [list(range(row * blocks_per_row, (row + 1) * blocks_per_row)) for row in range(num_rows)]
    prompts = [[(row * 31 + i * 7 + 1) % vocab_size for i in range(PROMPT_LEN)] for row in range(num_rows)]
    logits = runner.forward(
        [PagedRow(table, 0, prompt) for table, prompt in zip(tables, prompts, strict=True)]
    )
    tokens = [[int(token)] for token in logits.argmax(-1)]
    started = time.perf_counter()
    for step in range(steps):
        rows = [
            PagedRow(table, PROMPT_LEN + step, row[-1:]) for table, row in zip(tables, tokens, strict=True)
        ]
        for row, token in zip(tokens, runner.forward(rows).argmax(-1), strict=True):
            row.append(int(token))
    return (time.perf_counter() - started) / steps, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", nargs="?", default="llama-100m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rows", default="1,8,32")
    args = parser.parse_args()
    if not cpu_kernels.has_kernels():
        raise SystemExit("the CPU kernels are not built here (no C++ compiler, or LLMOS_KERNELS=off)")
    torch.set_num_threads(args.threads)
    model = build_dummy_model(args.preset)
    vocab_size = model.config.vocab_size
    results = []
    for num_rows in (int(rows) for rows in args.rows.split(",")):
        num_blocks = num_rows * math.ceil((PROMPT_LEN + args.steps + 1) / BLOCK_SIZE)
        direct = PagedRunner(model, num_blocks, BLOCK_SIZE)
        plain = PagedRunner(model, num_blocks, BLOCK_SIZE)
        if direct.direct is None:
            raise SystemExit(
                f"{args.preset} does not run the direct forward (not a Llama-style float32 model)"
            )
        plain.direct = None
        times: dict[str, list[float]] = {"transformers": [], "direct": []}
        answers = {}
        for _ in range(2):  # alternating rounds
            for name, runner in (("transformers", plain), ("direct", direct)):
                seconds, answers[name] = decode_s(runner, num_rows, args.steps, vocab_size)
                times[name].append(seconds)
        best = {name: min(values) for name, values in times.items()}
        ratio = best["transformers"] / best["direct"]
        same = answers["direct"] == answers["transformers"]
        print(
            f"{num_rows} rows: transformers' forward {best['transformers'] * 1e3:.2f} ms a step, "
            f"direct {best['direct'] * 1e3:.2f} ms: {ratio:.2f}x; same greedy tokens: {same}"
        )
        results.append(
            {
                "rows": num_rows,
                "transformers_ms": best["transformers"] * 1e3,
                "direct_ms": best["direct"] * 1e3,
                "ratio": ratio,
                "same_tokens": same,
            }
        )
    print(json.dumps({"preset": args.preset, "threads": args.threads, "steps": args.steps, "runs": results}))


if __name__ == "__main__":
    main()
