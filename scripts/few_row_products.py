"""Few-row float32 products on CPU: the project's `small_linear` against oneDNN, same run.

`python3 scripts/few_row_products.py [PRESET] [--threads N] [--repeats N]` runs every
linear of a `dummy:` preset (default llama-100m) in turn, each weight distinct, so the
weights come from memory as in a decode step, at 1 to 3 rows (the products the engine
hands `small_linear`) and at 4 and 8 (where it uses oneDNN's packed weights). Each side
runs `--repeats` times per round, two rounds alternating; the best time counts. Prints a
line per row count with both times, the bandwidth and the ratio, then a JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable

import torch

from workers import cpu_kernels
from workers.cpu_linears import PACKING_BATCH_SIZE
from workers.dummy import build_dummy_model


def best_time_s(run: Callable[[], None], repeats: int) -> float:
    for _ in range(2):
        run()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - started) / repeats


def onednn_pass(weights: list[torch.Tensor], layouts: list[torch.Tensor], inputs: dict) -> None:
    for weight, layout in zip(weights, layouts, strict=True):
        torch.ops.mkldnn._linear_pointwise(inputs[weight.shape[1]], layout, None, "none", [], "")


def small_pass(weights: list[torch.Tensor], inputs: dict) -> None:
    for weight in weights:
        torch.ops.llmos_cpu.small_linear(inputs[weight.shape[1]], weight, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", nargs="?", default="llama-100m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not cpu_kernels.has_kernels():
        raise SystemExit("the CPU kernels are not built here (no C++ compiler, or LLMOS_KERNELS=off)")
    torch.set_num_threads(args.threads)
    model = build_dummy_model(args.preset)
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, PACKING_BATCH_SIZE) for w in weights]
    num_bytes = sum(w.numel() * w.element_size() for w in weights)
    results = []
    with torch.inference_mode():
        for num_rows in (1, 2, 3, 4, 8):
            inputs = {w.shape[1]: torch.randn(num_rows, w.shape[1]) for w in weights}
            layouts = weights if num_rows < 4 else packed  # what the engine hands oneDNN

            sides = {"onednn": functools.partial(onednn_pass, weights, layouts, inputs)}
            if num_rows <= 3:
                sides["small_linear"] = functools.partial(small_pass, weights, inputs)
            times: dict[str, list[float]] = {}
            for _ in range(2):  # alternating rounds
                for name, run in sides.items():
                    times.setdefault(name, []).append(best_time_s(run, args.repeats))
            best = {name: min(values) for name, values in times.items()}
            row = {"rows": num_rows, **{f"{name}_ms": t * 1e3 for name, t in best.items()}}
            line = (
                f"{num_rows} rows: oneDNN {best['onednn'] * 1e3:.2f} ms "
                f"({num_bytes / best['onednn'] / 1e9:.1f} GB/s)"
            )
            if "small_linear" in best:
                row["ratio"] = best["onednn"] / best["small_linear"]
                line += (
                    f", small_linear {best['small_linear'] * 1e3:.2f} ms "
                    f"({num_bytes / best['small_linear'] / 1e9:.1f} GB/s): {row['ratio']:.2f}x"
                )
            print(line)
            results.append(row)
    summary = {"preset": args.preset, "threads": args.threads, "weight_bytes": num_bytes, "runs": results}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
