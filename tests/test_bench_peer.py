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
        assert len(run["round_speedups"]) == 1
        assert run["kv_cells_per_seq"] >= 8 + 4  # a prompt and its answer, at least
        resolved = {"enabled", "disabled"} if run["flash_attn"] == "auto" else {"disabled"}
        assert run["flash_attn_resolved"] in resolved
    check = peer["f32_check"]
    matches = summary["peer_f32_matches_transformers_tokens"]
    assert matches == check["matching_leading_tokens"] and 0 < matches <= CHECK_TOKENS
    assert check["llama_cpp_token_ids"][:matches] == check["transformers_token_ids"][:matches]
