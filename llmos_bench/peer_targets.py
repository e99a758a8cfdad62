"""The engine issue's targets against llama.cpp, read off one `--peer` run's rows.

- llmos at or above llama.cpp with f32 weights at 1, 8 and 32 concurrent (every f32
  configuration: its defaults and KV f32 without flash attention), where llmos runs
  float32 weights;
- llmos's int8 at or above llama.cpp's q8_0 at 32 concurrent, where llmos runs int8;
- llmos's peak RSS at most 1.2x llama.cpp's at the same weight precision (float32
  against f32, int8 against q8_0, float16 against f16), at every level measured.

Each is met (True), missed (False) or not measured by this run (None).
"""

from __future__ import annotations

from typing import Any

F32_LEVELS = (1, 8, 32)
INT8_LEVEL = 32
MAX_RSS_RATIO = 1.2
# llmos's weights (its quantization, else its dtype) -> the GGUF type of the same precision
SAME_WEIGHTS = {"int8": "q8_0", "float32": "f32", "float16": "f16"}


def llmos_weights(quantization: str, dtype: str) -> str:
    """What llmos keeps its weights in: `int8`, or the dtype's name (`float32`, ...)."""
    return quantization if quantization != "none" else dtype.removeprefix("torch.")


def rss_ratio(run: dict[str, Any]) -> float:
    return run["llmos_peak_rss_bytes"] / run["llama_cpp_peak_rss_bytes"]


def all_met(values: list[bool]) -> bool | None:
    return all(values) if values else None


def f32_met(runs: list[dict[str, Any]]) -> bool | None:
    """llmos at or above every f32 configuration at 1, 8 and 32; None unless all three ran."""
    rows = [run for run in runs if run["weights"] == "f32" and run["concurrency"] in F32_LEVELS]
    if {run["concurrency"] for run in rows} != set(F32_LEVELS):
        return None
    return all(run["speedup_vs_llama_cpp"] >= 1 for run in rows)


def int8_met(runs: list[dict[str, Any]]) -> bool | None:
    rows = [run for run in runs if run["weights"] == "q8_0" and run["concurrency"] == INT8_LEVEL]
    return all_met([run["speedup_vs_llama_cpp"] >= 1 for run in rows])


def peer_targets(runs: list[dict[str, Any]], weights: str) -> dict[str, bool | None]:
    """The targets of the rows `runs` (PeerBench's), llmos having run `weights`."""
    same = SAME_WEIGHTS.get(weights)
    return {
        "at_least_llama_cpp_f32_at_1_8_32": f32_met(runs) if weights == "float32" else None,
        "int8_at_least_q8_0_at_32": int8_met(runs) if weights == "int8" else None,
        "rss_at_most_1.2x_llama_cpp_same_weights": all_met(
            [rss_ratio(run) <= MAX_RSS_RATIO for run in runs if run["weights"] == same]
        ),
    }
