"""Where a decode step's time goes: transformers' own decode loop, the llmos ModelRunner,
and the whole BatchedEngine, on one model (`python3 scripts/gpu_profile.py MODEL DEVICE`).
A diagnosis aid for the GPU checks (scripts/gpu_check.sh), not a benchmark."""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time

import torch
from transformers import DynamicCache

from llmos_bench.engine import make_prompts
from llmos_bench.load import run_closed_loop
from workers.batched_engine import BatchedEngine
from workers.config import WorkerConfig
from workers.model_loader import load_model, load_tokenizer
from workers.model_runner import ModelRunner

STEPS = 48


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def raw_decode(model, prompt, steps):
    ids = torch.tensor([prompt], device=model.device)
    cache = DynamicCache()
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1).item()
    sync(model.device)
    started = time.perf_counter()
    for _ in range(steps):
        out = model(
            input_ids=torch.tensor([[token]], device=model.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        token = out.logits[:, -1].argmax(-1).item()
    return (time.perf_counter() - started) / steps


def runner_decode(model, prompts, steps):
    runner = ModelRunner(model, len(prompts))
    job = runner.start_prefill([f"r{i}" for i in range(len(prompts))], prompts)
    logits = runner.prefill(job, 4096)
    runner.admit(job)
    tokens = logits.argmax(-1).tolist()
    sync(model.device)
    started = time.perf_counter()
    for _ in range(steps):
        tokens = runner.decode(tokens).argmax(-1).tolist()
    return (time.perf_counter() - started) / steps


def make_engine(model, tokenizer, rows):
    return BatchedEngine(
        model, tokenizer, max_num_seqs=rows, max_model_len=32 + STEPS + 2, eos_token_ids=set()
    )


def main() -> None:
    model_name, device = sys.argv[1], sys.argv[2]
    loaded = load_model(WorkerConfig(model=model_name, device=device, dtype="auto", max_model_len=128))
    model, tokenizer = loaded.model, load_tokenizer(loaded.path)
    prompts = make_prompts(32, 32, tokenizer, model.config.get_text_config().vocab_size, 0)
    raw_decode(model, prompts[0], 4)  # warm-up
    runner_decode(model, prompts[:2], 4)
    run_closed_loop(make_engine(model, tokenizer, 2), prompts[:2], 2, 4)
    cudnn_settings = (True, False) if loaded.device.type == "cuda" else (False,)
    for cudnn in cudnn_settings:  # load_model turned cuDNN attention off; compare both
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        print(
            f"{model_name} on {loaded.device}, cuDNN attention {'on' if cudnn else 'off'}: ms per decode step"
        )
        print(
            f"  transformers forward + DynamicCache, 1 row : {raw_decode(model, prompts[0], STEPS) * 1e3:.2f}"
        )
        for rows in (1, 32):
            print(
                f"  llmos ModelRunner.decode, {rows:2d} rows       : "
                f"{runner_decode(model, prompts[:rows], STEPS) * 1e3:.2f}"
            )
            result = run_closed_loop(make_engine(model, tokenizer, rows), prompts[:rows], rows, STEPS)
            print(f"  llmos BatchedEngine (incl. prefill), {rows:2d} rows: {result.wall_s / STEPS * 1e3:.2f}")
    profiler = cProfile.Profile()
    profiler.enable()
    run_closed_loop(make_engine(model, tokenizer, 1), prompts[:1], 1, STEPS)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    print("\n".join(line[:150] for line in text.getvalue().splitlines()[:45]))
    with torch.profiler.profile() as prof:
        run_closed_loop(make_engine(model, tokenizer, 1), prompts[:1], 1, 8)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=50))


if __name__ == "__main__":
    main()
