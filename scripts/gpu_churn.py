"""Where the batched engine's time goes when requests come and go (churn), against one
wave of the same requests: `python3 scripts/gpu_churn.py MODEL DEVICE`.

`llmos bench engine --stack-requests` measured 304 output tokens/s for the engine
alone on an H100 (dummy:llama-1b, prompt 128, answers of 1-31 tokens, 32 at once),
against 1,014 for one wave of 32 (docs/benchmarks.md). This prints, for one wave
and for churn, with the prefix cache on and off and with newcomers prefilled in the
decode forward or apart (`workers.mixed_step`): tokens/s, engine steps, model
forwards, and ms per step; then, for churn, the Python functions that took the most
time (cProfile) and the torch operators (torch.profiler).
A diagnosis aid for the GPU checks (scripts/gpu_check.sh), not a benchmark.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from llmos_bench.engine import EngineBench, EngineBenchConfig, engine_class  # noqa: E402
from llmos_bench.engine_stack import answer_lengths  # noqa: E402
from llmos_bench.load import run_closed_loop  # noqa: E402
from workers.config import WorkerConfig  # noqa: E402
from workers.model_loader import load_model, load_tokenizer  # noqa: E402
from workers.model_runner import ModelRunner  # noqa: E402

PROMPT_LEN, NEW_TOKENS, ROWS, CHURN_REQUESTS = 128, 16, 32, 256
MAX_MODEL_LEN = PROMPT_LEN + 2 * NEW_TOKENS + 1


class Counts:
    """Engine steps and model forwards while a run goes on."""

    def __init__(self, engine) -> None:
        self.steps = self.forwards = 0
        step, forward = engine.step, ModelRunner.run_model

        def counted_step():
            self.steps += 1
            return step()

        def counted_forward(runner, *args, **kwargs):
            self.forwards += 1
            return forward(runner, *args, **kwargs)

        engine.step = counted_step
        self.restore = lambda: setattr(ModelRunner, "run_model", forward)
        ModelRunner.run_model = counted_forward


def run(
    bench: EngineBench, prompts, lengths, prefix_caching: bool, label: str, mixed_steps: bool = True
) -> None:
    engine = bench.make_engine(ROWS, prefix_caching=prefix_caching, max_model_len=MAX_MODEL_LEN)
    engine.runner.supports_mixed_steps &= mixed_steps
    counts = Counts(engine)
    try:
        started = time.perf_counter()
        result = run_closed_loop(engine, prompts, ROWS, lengths)
        if bench.loaded.device.type == "cuda":
            torch.cuda.synchronize()
        wall_s = time.perf_counter() - started
    finally:
        counts.restore()
    print(
        f"  {label:32s} prefix cache {'on ' if prefix_caching else 'off'}, "
        f"{'mixed' if engine.runner.supports_mixed_steps else 'apart'}: "
        f"{result.num_generated_tokens / wall_s:8.1f} tok/s, {counts.steps:4d} steps, "
        f"{counts.forwards:4d} forwards, {wall_s / counts.steps * 1e3:6.1f} ms/step"
    )


def main() -> None:
    model_name, device = sys.argv[1], sys.argv[2]
    config = EngineBenchConfig(
        model=model_name,
        device=device,
        prompt_len=PROMPT_LEN,
        new_tokens=NEW_TOKENS,
        concurrency=str(ROWS),
        poisson_seconds=0,
        skip_baselines=True,
    )
    loaded = load_model(
        WorkerConfig(model=model_name, device=device, dtype="auto", max_model_len=MAX_MODEL_LEN)
    )
    bench = EngineBench(config, loaded, load_tokenizer(loaded.path), engine_class(), 1.0)
    bench.warm_up()
    wave = bench.prompts_for(ROWS, 1)
    churn = bench.prompts_for(CHURN_REQUESTS, 2)
    lengths = answer_lengths(CHURN_REQUESTS, NEW_TOKENS, 0)
    run(bench, wave, NEW_TOKENS, True, "warm-up")
    print(f"{model_name} on {loaded.device}: prompt {PROMPT_LEN}, {ROWS} at once")
    for prefix_caching in (True, False):
        run(bench, wave, NEW_TOKENS, prefix_caching, f"one wave of {ROWS} x {NEW_TOKENS} tokens")
        for mixed_steps in (True, False):
            run(
                bench,
                churn,
                lengths,
                prefix_caching,
                f"churn: {CHURN_REQUESTS} x 1-{2 * NEW_TOKENS - 1} tokens",
                mixed_steps,
            )
    engine = bench.make_engine(ROWS, max_model_len=MAX_MODEL_LEN)
    profiler = cProfile.Profile()
    profiler.enable()
    run_closed_loop(engine, churn[:96], ROWS, lengths[:96])
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
    print("\n".join(line[:160] for line in text.getvalue().splitlines()[:50]))
    engine = bench.make_engine(ROWS, max_model_len=MAX_MODEL_LEN)
    with torch.profiler.profile() as prof:
        run_closed_loop(engine, churn[:48], ROWS, lengths[:48])
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=50))


if __name__ == "__main__":
    main()
