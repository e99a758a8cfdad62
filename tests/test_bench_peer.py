"""`llmos bench engine --peer llama.cpp`: without llama.cpp the bench runs on and says
why; with it (llmos[peer], never built in CI), a tiny real comparison. The JSON
line's shape and the conversion's faithfulness, never a speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from llmos.cli import cli
from llmos_bench.peer import CHECK_TOKENS, NOT_INSTALLED
from llmos_bench.peer_gguf import is_gpt2_byte_level
from llmos_bench.peer_targets import llmos_weights, peer_targets
from llmos_bench.report import peer_lines
from tests.test_bench_engine import TINY_ARGS
from workers.dummy import build_dummy_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY_PEER_ARGS = [
    *TINY_ARGS,
    "--poisson-seconds",
    "0",
    "--skip-baselines",
    "--rounds",
    "1",
    "--peer",
    "llama.cpp",
]
# `python -c` runs the CLI with llama_cpp unimportable, as where it was never installed
WITHOUT_LLAMA_CPP = """
import sys
class NoLlamaCpp:
    def find_spec(self, name, path=None, target=None):
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ModuleNotFoundError("No module named 'llama_cpp'", name=name)
sys.meta_path.insert(0, NoLlamaCpp())
from llmos.cli import main
main()
"""


def run_llmos(args: list[str], code: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own (the bench starts children that import from ROOT)."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "llmos", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def json_line(done: subprocess.CompletedProcess[str]) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_llama_cpp_the_bench_says_how_to_install_it_and_runs_on():
    done = run_llmos([*TINY_PEER_ARGS, "--json-only"], code=WITHOUT_LLAMA_CPP)
    summary = json_line(done)

    assert "llama.cpp is not installed: pip install 'llmos[peer]'" in done.stderr
    assert (summary["peer"], summary["peer_skipped"]) == (None, NOT_INSTALLED)
    assert summary["peer_f32_matches_transformers_tokens"] is None
    assert [run["concurrency"] for run in summary["llmos"]] == [1, 2]


def test_the_table_says_why_the_peer_did_not_run():
    done = run_llmos(TINY_PEER_ARGS, code=WITHOUT_LLAMA_CPP)

    assert done.returncode == 0, done.stderr[-3000:]
    assert f"llama.cpp: not run ({NOT_INSTALLED})" in done.stdout.splitlines()


@pytest.mark.parametrize(
    ("option", "value"), [("--peer", "vllm"), ("--peer-dtypes", "q4_k"), ("--peer-dtypes", ",")]
)
def test_an_unknown_peer_or_weight_type_is_a_usage_error(option, value):
    result = CliRunner().invoke(cli, [*TINY_PEER_ARGS, option, value])

    assert result.exit_code == 2
    assert option in result.output


def test_the_dummy_tokenizer_passes_for_gpt2_byte_level_and_a_whitespace_one_does_not():
    whitespace = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()

    assert is_gpt2_byte_level(build_dummy_tokenizer("llama-tiny"))
    assert not is_gpt2_byte_level(PreTrainedTokenizerFast(tokenizer_object=whitespace))


def test_llama_cpp_runs_the_same_work_and_its_f32_answer_is_transformers(tmp_path):
    pytest.importorskip("llama_cpp", reason="pip install 'llmos[peer]'")
    if not os.environ.get("LLMOS_PEER_LLAMA_CPP_DIR"):
        pytest.skip("set LLMOS_PEER_LLAMA_CPP_DIR to a llama.cpp source tree (its convert_hf_to_gguf.py)")

    done = run_llmos(
        [*TINY_PEER_ARGS, "--peer-dtypes", "f32", "--peer-cache-dir", str(tmp_path), "--json-only"]
    )
    summary = json_line(done)

    peer = summary["peer"]
    assert summary["peer_skipped"] is None
    assert sorted(path.name for path in (tmp_path / "dummy-llama-tiny-seed0").iterdir()) == ["f32.gguf"]
    assert [(run["concurrency"], run["kv_type"], run["flash_attn"]) for run in peer["runs"]] == [
        (1, "f16", "auto"),
        (1, "f32", "off"),
        (2, "f16", "auto"),
        (2, "f32", "off"),
    ]
    for run in peer["runs"]:
        assert run["requests"] == run["concurrency"]
        assert run["speedup_vs_llama_cpp"] == run["llmos_tokens_per_s"] / run["llama_cpp_tokens_per_s"]
        assert run["llama_cpp_peak_rss_bytes"] > 0 and run["llmos_peak_rss_bytes"] > 0
        assert run["rss_vs_llama_cpp"] == run["llmos_peak_rss_bytes"] / run["llama_cpp_peak_rss_bytes"]
        assert len(run["round_speedups"]) == 1
        assert run["kv_cells_per_seq"] >= 8 + 4  # a prompt and its answer, at least
        resolved = {"enabled", "disabled"} if run["flash_attn"] == "auto" else {"disabled"}
        assert run["flash_attn_resolved"] in resolved
    assert peer["llmos_weights"] == "float32"
    assert peer["targets"]["int8_at_least_q8_0_at_32"] is None  # llmos ran float32
    assert peer["targets"]["at_least_llama_cpp_f32_at_1_8_32"] is None  # levels 1 and 2 only
    check = peer["f32_check"]
    matches = summary["peer_f32_matches_transformers_tokens"]
    assert matches == check["matching_leading_tokens"] and 0 < matches <= CHECK_TOKENS
    assert check["llama_cpp_token_ids"][:matches] == check["transformers_token_ids"][:matches]


def peer_row(concurrency: int, weights: str, speedup: float, rss_ratio: float, kv_type: str = "f16") -> dict:
    return {
        "concurrency": concurrency,
        "config": f"{weights}, KV {kv_type}",
        "weights": weights,
        "kv_type": kv_type,
        "flash_attn_resolved": "enabled",
        "kv_cache_mib": 1.0,
        "llama_cpp_tokens_per_s": 100.0,
        "llmos_tokens_per_s": 100.0 * speedup,
        "speedup_vs_llama_cpp": speedup,
        "llama_cpp_peak_rss_bytes": 500 * 2**20,
        "llmos_peak_rss_bytes": int(500 * 2**20 * rss_ratio),
        "rss_vs_llama_cpp": rss_ratio,
    }


def test_float32_meets_the_f32_target_only_where_every_f32_row_at_1_8_32_is_at_or_above_llama_cpp():
    rows = [peer_row(level, "f32", 1.1, 1.5) for level in (1, 8, 32)]
    rows += [peer_row(level, "f32", 1.3, 1.5, kv_type="f32") for level in (1, 8, 32)]
    assert peer_targets(rows, "float32") == {
        "at_least_llama_cpp_f32_at_1_8_32": True,
        "int8_at_least_q8_0_at_32": None,
        "rss_at_most_1.2x_llama_cpp_same_weights": False,
    }
    rows[4] = peer_row(8, "f32", 0.99, 1.2, kv_type="f32")
    assert peer_targets(rows, "float32")["at_least_llama_cpp_f32_at_1_8_32"] is False
    assert peer_targets(rows[:2], "float32")["at_least_llama_cpp_f32_at_1_8_32"] is None  # 32 not run
    assert peer_targets(rows, "bfloat16") == dict.fromkeys(peer_targets(rows, "float32"))


def test_int8_is_held_to_q8_0_at_32_and_its_rss_to_q8_0s():
    rows = [peer_row(32, "f32", 0.8, 2.0), peer_row(8, "q8_0", 0.9, 1.1), peer_row(32, "q8_0", 1.4, 1.19)]
    assert peer_targets(rows, "int8") == {
        "at_least_llama_cpp_f32_at_1_8_32": None,
        "int8_at_least_q8_0_at_32": True,
        "rss_at_most_1.2x_llama_cpp_same_weights": True,  # the f32 row is not int8's precision
    }
    assert peer_targets(rows[:2], "int8")["int8_at_least_q8_0_at_32"] is None
    assert llmos_weights("int8", "torch.float32") == "int8"
    assert llmos_weights("none", "torch.float32") == "float32"


def test_the_report_prints_each_rows_rss_ratio_and_the_targets():
    rows = [peer_row(level, "f32", 1.1, 1.5) for level in (1, 8, 32)]
    peer = {
        "version": "0.3.36",
        "threads": 2,
        "llmos_kv_dtype": "float32",
        "rounds": 1,
        "f32_check": None,
        "runs": rows,
        "llmos_weights": "float32",
        "targets": peer_targets(rows, "float32"),
    }
    text = "\n".join(peer_lines({"peer": peer, "peer_skipped": None}))
    assert "500/750 (llmos 1.50x)" in text
    assert "  at_least_llama_cpp_f32_at_1_8_32: met" in text
    assert "  rss_at_most_1.2x_llama_cpp_same_weights: MISSED" in text
    assert "  int8_at_least_q8_0_at_32: not measured" in text
