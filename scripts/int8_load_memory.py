"""What `--quantization int8` takes in memory to load a checkpoint, against torch's
`quantize_dynamic` on the checkpoint loaded in float32, same run.

`python3 scripts/int8_load_memory.py [PRESET] [--threads N]` saves a `dummy:` preset
(default llama-100m) as a bfloat16 and as a float32 checkpoint in a temporary folder,
then loads each in a fresh process both ways: `llmos`, the worker's loader
(`workers.model_loader.load_model`: the checkpoint's own dtype, one linear rounded at a
time), and `torch`, `from_pretrained` in float32, `quantize_dynamic` over the same
linears and the head rounded as the worker rounds it. Each process reports its peak
RSS (VmHWM) and its RSS once loaded (VmRSS, with the file-backed part), both after
torch and transformers are imported. Prints a line per checkpoint and way, then a JSON
line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

WAYS = ("llmos", "torch")
DTYPES = ("bfloat16", "float32")


def status_mb() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssFile"):
            fields[key] = int(value.split()[0]) // 1024
    return fields


def load(way: str, path: str) -> dict[str, int]:
    """In the child: load `path` the `way` asked and report the process's memory."""
    import torch
    from transformers import AutoModelForCausalLM

    from workers.config import WorkerConfig
    from workers.model_loader import load_model
    from workers.quantization import quantize_dynamic_int8, round_head_to_int8

    if way == "llmos":
        model = load_model(WorkerConfig(model=path, device="cpu", quantization="int8")).model
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
        quantize_dynamic_int8(model)
        head = model.get_output_embeddings()
        round_head_to_int8(model, head)
    assert model is not None
    return status_mb()


def save_checkpoints(preset: str, folder: Path) -> dict[str, Path]:
    import torch

    from workers.dummy import build_dummy_model, build_dummy_tokenizer

    paths = {}
    for dtype in DTYPES:
        paths[dtype] = folder / dtype
        build_dummy_model(preset).to(getattr(torch, dtype)).save_pretrained(paths[dtype])
        build_dummy_tokenizer(preset).save_pretrained(paths[dtype])
    return paths


def measure(way: str, path: Path, threads: int) -> dict[str, int]:
    code = (
        "import sys, json, torch; sys.path[:0] = [sys.argv[1]]; torch.set_num_threads(int(sys.argv[4]));"
        "from int8_load_memory import load; print(json.dumps(load(sys.argv[2], sys.argv[3])))"
    )
    scripts = str(Path(__file__).resolve().parent)
    out = subprocess.run(
        [sys.executable, "-c", code, scripts, way, str(path), str(threads)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", nargs="?", default="llama-100m")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="llmos-int8-load-") as folder:
        paths = save_checkpoints(args.preset, Path(folder))
        for dtype, path in paths.items():
            results[dtype] = {way: measure(way, path, args.threads) for way in WAYS}
            for way in WAYS:
                figures = results[dtype][way]
                print(
                    f"{dtype:>8} checkpoint, {way:>5}: peak {figures['VmHWM']:,} MB, "
                    f"loaded {figures['VmRSS']:,} MB (file-backed {figures['RssFile']:,})"
                )
            ours, theirs = results[dtype]["llmos"], results[dtype]["torch"]
            print(
                f"{dtype:>8} checkpoint, llmos / torch: peak {ours['VmHWM'] / theirs['VmHWM']:.2f}x, "
                f"loaded {ours['VmRSS'] / theirs['VmRSS']:.2f}x"
            )
    print(json.dumps({"preset": args.preset, "threads": args.threads, "mb": results}))


if __name__ == "__main__":
    main()
