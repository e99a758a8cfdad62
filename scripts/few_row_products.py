"""Few-row products on CPU: the project's `small_linear` against oneDNN, same run.

`python3 scripts/few_row_products.py [PRESET] [--threads N] [--repeats N] [--int8]` runs
every linear of a `dummy:` preset (default llama-100m) in turn, each weight distinct, so
the weights come from memory as in a decode step, at 1, 2, 3, 4, 8 and 16 rows (or `--rows`): against
oneDNN's product (the plain weights below 4 rows, the packed ones from 4, as the engine
keeps them) `small_linear` at the row counts it takes (1 to 8 with AVX2, else 1 to 3).
With `--int8` the model is quantized as `--quantization int8` does, and
`small_linear_int8` runs against fbgemm's dynamic int8 product (the module's own
forward). Each side runs `--repeats` times per round, two rounds alternating; the best
time counts. Prints a line per row count with both times, the bandwidth and the ratio,
then a JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable

import torch

from workers import cpu_kernels
from workers.cpu_linears import PACKING_BATCH_SIZE, unpacked_int8
from workers.dummy import build_dummy_model
from workers.quantization import quantize_int8


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


def fbgemm_pass(modules: list[torch.nn.Module], inputs: dict) -> None:
    for module in modules:
        type(module).forward(module, inputs[module.in_features])


def small_int8_pass(weights: list[tuple[torch.Tensor, torch.Tensor]], inputs: dict) -> None:
    for int8, scales in weights:
        torch.ops.llmos_cpu.small_linear_int8(inputs[int8.shape[1]], int8, scales, None)


def float32_sides(model: torch.nn.Module) -> tuple[int, Callable[[int, dict], dict]]:
    """(the weights' bytes, for a row count and its inputs: baseline and kernel passes)."""
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, PACKING_BATCH_SIZE) for w in weights]

    def sides(num_rows: int, inputs: dict) -> dict:
        layouts = weights if num_rows < 4 else packed  # what the engine hands oneDNN
        found = {"onednn": functools.partial(onednn_pass, weights, layouts, inputs)}
        if num_rows <= torch.ops.llmos_cpu.small_linear_max_rows():
            found["small_linear"] = functools.partial(small_pass, weights, inputs)
        return found

    return sum(w.numel() * w.element_size() for w in weights), sides


def int8_sides(model: torch.nn.Module) -> tuple[int, Callable[[int, dict], dict]]:
    quantize_int8(model)
    unpacked = [(module, unpacked_int8(module)) for module in model.modules()]
    int8_linears = [(module, found) for module, found in unpacked if found is not None]
    modules = [module for module, _ in int8_linears]
    weights = [(int8, scales) for _, (int8, scales, _) in int8_linears]

    def sides(num_rows: int, inputs: dict) -> dict:
        found = {"fbgemm": functools.partial(fbgemm_pass, modules, inputs)}
        if num_rows <= 3:
            found["small_linear_int8"] = functools.partial(small_int8_pass, weights, inputs)
        return found

    return sum(int8.numel() for int8, _ in weights), sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", nargs="?", default="llama-100m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--int8", action="store_true", help="int8 weights: small_linear_int8 against fbgemm")
    parser.add_argument(
        "--rows", default="1,2,3,4,8,16", help="the row counts, comma-separated (default 1,2,3,4,8,16)"
    )
    args = parser.parse_args()
    if not cpu_kernels.has_kernels():
        raise SystemExit("the CPU kernels are not built here (no C++ compiler, or LLMOS_KERNELS=off)")
    torch.set_num_threads(args.threads)
    model = build_dummy_model(args.preset)
    num_bytes, sides_for = int8_sides(model) if args.int8 else float32_sides(model)
    baseline, kernel = ("fbgemm", "small_linear_int8") if args.int8 else ("onednn", "small_linear")
    widths = sorted({m.in_features for m in model.modules() if hasattr(m, "in_features")})
    results = []
    with torch.inference_mode():
        for num_rows in [int(part) for part in args.rows.split(",")]:
            inputs = {width: torch.randn(num_rows, width) for width in widths}
            sides = sides_for(num_rows, inputs)
            times: dict[str, list[float]] = {}
            for _ in range(2):  # alternating rounds
                for name, run in sides.items():
                    times.setdefault(name, []).append(best_time_s(run, args.repeats))
            best = {name: min(values) for name, values in times.items()}
            row = {"rows": num_rows, **{f"{name}_ms": t * 1e3 for name, t in best.items()}}
            line = (
                f"{num_rows} rows: {baseline} {best[baseline] * 1e3:.2f} ms "
                f"({num_bytes / best[baseline] / 1e9:.1f} GB/s)"
            )
            if kernel in best:
                row["ratio"] = best[baseline] / best[kernel]
                line += (
                    f", {kernel} {best[kernel] * 1e3:.2f} ms "
                    f"({num_bytes / best[kernel] / 1e9:.1f} GB/s): {row['ratio']:.2f}x"
                )
            print(line)
            results.append(row)
    summary = {
        "preset": args.preset,
        "threads": args.threads,
        "weights": "int8" if args.int8 else "float32",
        "weight_bytes": num_bytes,
        "runs": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
