"""Lower-precision weights on CPU: the engine's greedy answers against float32's.

bfloat16 and int8 weights round every product, so the answers are not float32's
token for token: where two candidates are close (and a random-weight model has
many near-ties), the rounding picks the other and the answer parts from there.
The tolerance, on dummy:llama-tiny (the same seeded weights in each precision),
32 corpus prompts, 24 new tokens each:

- greedy, through the engine: at least `min_full_matches` of the 32 answers
  equal float32's in full;
- teacher-forced on float32's answers, with the engine's linears: the top-1
  token agrees with float32's at `min_top1_agreement` of the positions or more,
  and no logit is further from float32's than `max_logit_error` standard
  deviations of float32's logits.

Measured: bfloat16 21 / 32, 98.6%, 0.031; int8 16 / 32, 96.2%, 0.12 (int8 also
rounds each activation of its dynamic linears to int8, so its logits move
further; its output head rounds only its weights). Each bound leaves a margin
below that.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from int8_rounding import rounded_per_block
from stack import Stack

from llmos.tiny_model import CORPUS
from workers.batched_engine import BatchedEngine
from workers.config import WorkerConfig
from workers.cpu_linears import PACKED_MIN_ROWS, CpuLinears
from workers.model_loader import kv_bytes_per_token, load_model, load_tokenizer
from workers.quantization import HEAD_INT8
from workers.requests import EngineRequest, SamplingOptions

torch.set_num_threads(1)

MODEL = "dummy:llama-tiny"
NUM_PROMPTS, NEW_TOKENS = 32, 24
# without it, oneDNN would emulate bfloat16 products slowly, so CpuLinears leaves bfloat16 linears alone
needs_native_bfloat16 = pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no native bfloat16 in oneDNN on this CPU"
)
WORDS = CORPUS.split()


@dataclass(frozen=True)
class Tolerance:
    min_full_matches: int  # of NUM_PROMPTS greedy answers
    min_top1_agreement: float  # teacher-forced, over all answer positions
    max_logit_error: float  # teacher-forced, in standard deviations of float32's logits


TOLERANCES = {
    "bfloat16": Tolerance(min_full_matches=16, min_top1_agreement=0.95, max_logit_error=0.08),
    "int8": Tolerance(min_full_matches=12, min_top1_agreement=0.93, max_logit_error=0.25),
}
CONFIGS = {
    "bfloat16": WorkerConfig(model=MODEL, device="cpu", dtype="bfloat16"),
    "int8": WorkerConfig(model=MODEL, device="cpu", dtype="float32", quantization="int8"),
}


def make_prompts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        start, num_words = rng.randrange(len(WORDS)), rng.randint(1, 30)
        prompts.append(" ".join((WORDS * 2)[start : start + num_words]))
    return prompts


def greedy_answers(
    model, tokenizer, prompts: list[str], max_num_seqs: int = 8, **engine_options
) -> list[list[int]]:
    engine = BatchedEngine(model, tokenizer, max_num_seqs=max_num_seqs, eos_token_ids=set(), **engine_options)
    for index, prompt in enumerate(prompts):
        options = SamplingOptions(max_tokens=NEW_TOKENS, temperature=0.0)
        engine.add_request(EngineRequest(str(index), tokenizer.encode(prompt), options))
    answers: dict[str, list[int]] = {}
    while engine.has_work:
        for delta in engine.step():
            answers.setdefault(delta.request_id, []).extend(delta.token_ids)
    return [answers[str(index)] for index in range(len(prompts))]


@torch.inference_mode()
def engine_logits(model, token_ids: list[int]) -> torch.Tensor:
    """Logits `[positions, vocab]` in float32, the linears on the engine's CPU path."""
    with CpuLinears(model).on_onednn():
        return model(input_ids=torch.tensor([token_ids])).logits[0].float()


@pytest.fixture(scope="module")
def float32_run():
    loaded = load_model(WorkerConfig(model=MODEL, device="cpu", dtype="float32"))
    tokenizer = load_tokenizer(loaded.path)
    prompts = make_prompts(NUM_PROMPTS)
    return loaded, tokenizer, prompts, greedy_answers(loaded.model, tokenizer, prompts)


@pytest.mark.parametrize(
    ("precision", "max_num_seqs"),
    [
        ("bfloat16", 8),
        ("int8", 8),
        ("int8", 1),  # every decode product of one row: small_linear_int8, where the kernels build
    ],
)
def test_greedy_answers_stay_within_the_tolerance_of_float32(float32_run, precision, max_num_seqs):
    reference, tokenizer, prompts, reference_answers = float32_run
    tolerance = TOLERANCES[precision]
    loaded = load_model(CONFIGS[precision])
    answers = greedy_answers(loaded.model, tokenizer, prompts, max_num_seqs)
    assert [len(answer) for answer in answers] == [NEW_TOKENS] * NUM_PROMPTS
    num_full_matches = sum(a == b for a, b in zip(answers, reference_answers, strict=True))
    assert num_full_matches >= tolerance.min_full_matches

    num_agreeing, max_error = 0, 0.0
    for prompt, answer in zip(prompts, reference_answers, strict=True):
        token_ids = tokenizer.encode(prompt) + answer
        expected = engine_logits(reference.model, token_ids)[-NEW_TOKENS - 1 : -1]
        got = engine_logits(loaded.model, token_ids)[-NEW_TOKENS - 1 : -1]
        num_agreeing += int((got.argmax(-1) == expected.argmax(-1)).sum())
        max_error = max(max_error, float((got - expected).abs().max() / expected.std()))
    assert num_agreeing / (NUM_PROMPTS * NEW_TOKENS) >= tolerance.min_top1_agreement
    assert max_error <= tolerance.max_logit_error


def test_int8_rounds_the_heads_weights_only_and_leaves_the_kv_cache_in_float32():
    loaded = load_model(CONFIGS["int8"])
    head = loaded.model.lm_head
    linears = [m for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == [head]  # every other linear is a dynamic int8 one
    int8, scales = getattr(head, HEAD_INT8)
    assert int8.dtype == torch.int8 and int8.abs().max() <= 127
    assert torch.equal(head.weight, int8.float() * scales[:, None])  # one set of weights, two layouts
    assert loaded.quantization == "int8" and loaded.dtype == torch.float32
    float32 = load_model(WorkerConfig(model=MODEL, device="cpu", dtype="float32"))
    torch.testing.assert_close(
        head.weight, float32.model.lm_head.weight, rtol=0, atol=float(scales.max()) / 2
    )
    assert kv_bytes_per_token(loaded.model.config, loaded.dtype) == 2 * 2 * 2 * 16 * 4  # 2 layers, 2 kv heads
    assert loaded.kv_capacity_tokens == float32.kv_capacity_tokens
    body_weights = sum(
        m.weight.numel()
        for m in float32.model.modules()
        if isinstance(m, torch.nn.Linear) and m is not float32.model.lm_head
    )
    # the body's weights take 1 byte, not 4; the head keeps 4 and adds its int8 byte
    assert loaded.memory_bytes_used == float32.memory_bytes_used - 3 * body_weights + int8.numel()

    cpu_linears = CpuLinears(loaded.model)
    assert cpu_linears.linears == [head]
    with torch.inference_mode(), cpu_linears.on_onednn():
        for num_rows in (1, PACKED_MIN_ROWS):
            hidden = torch.randn(num_rows, head.in_features)
            out = head(hidden)
            if num_rows < PACKED_MIN_ROWS:  # the int8 copy, bit for bit the kernel's
                assert torch.equal(
                    out, torch.ops.llmos_cpu.small_linear_int8(hidden, int8, scales, head.bias)
                )
                hidden = rounded_per_block(hidden)  # which rounds its input rows too
            torch.testing.assert_close(out, hidden @ head.weight.T, rtol=1e-5, atol=1e-4)


@needs_native_bfloat16
def test_bfloat16_linears_run_on_packed_onednn_weights():
    loaded = load_model(CONFIGS["bfloat16"])
    cpu_linears = CpuLinears(loaded.model)
    num_linears = sum(isinstance(m, torch.nn.Linear) for m in loaded.model.modules())
    assert len(cpu_linears.linears) == num_linears == 2 * 7 + 1  # q k v o gate up down, per layer; head
    assert all(
        few_rows is None and weight.is_mkldnn and weight.dtype == torch.bfloat16
        for few_rows, weight in cpu_linears.weights
    )


def test_float32_linears_keep_the_plain_weight_for_few_rows_and_a_packed_one_for_more():
    loaded = load_model(WorkerConfig(model=MODEL, device="cpu", dtype="float32"))
    cpu_linears = CpuLinears(loaded.model)
    assert len(cpu_linears.linears) == 2 * 7 + 1
    for linear, (few_rows, weight) in zip(cpu_linears.linears, cpu_linears.weights, strict=True):
        assert few_rows is linear.weight and weight.is_mkldnn and weight.dtype == torch.float32
    linear = cpu_linears.linears[0]
    with cpu_linears.on_onednn():  # one row and many rows: the same products either way
        for num_rows in (1, PACKED_MIN_ROWS, 16):
            hidden = torch.randn(num_rows, linear.in_features)
            torch.testing.assert_close(linear(hidden), torch.nn.functional.linear(hidden, linear.weight))


@needs_native_bfloat16
def test_a_worker_frees_the_bfloat16_weights_only_their_packed_copies_serve():
    kept_loaded = load_model(CONFIGS["bfloat16"])
    tokenizer = load_tokenizer(kept_loaded.path)
    prompts = make_prompts(4)
    kept = greedy_answers(kept_loaded.model, tokenizer, prompts)
    model = load_model(CONFIGS["bfloat16"]).model
    freed = greedy_answers(model, tokenizer, prompts, release_unused_weights=True)
    assert freed == kept
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 7 + 1 and all(linear.weight.numel() == 0 for linear in linears)
    assert model.get_input_embeddings().weight.numel() > 0  # what the engine still reads


@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=needs_native_bfloat16)])
def test_compact_cpu_weights_run_every_linear_on_the_models_own_weight(dtype):
    loaded = load_model(WorkerConfig(model=MODEL, device="cpu", dtype=dtype))
    cpu_linears = CpuLinears(loaded.model, "compact")
    for linear, (few_rows, weight) in zip(cpu_linears.linears, cpu_linears.weights, strict=True):
        assert few_rows is None and weight is linear.weight
    linear = cpu_linears.linears[0]
    with cpu_linears.on_onednn():
        hidden = torch.randn(PACKED_MIN_ROWS, linear.in_features, dtype=linear.weight.dtype)
        expected = torch.nn.functional.linear(hidden, linear.weight)
        torch.testing.assert_close(linear(hidden), expected)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"device": "cuda", "quantization": "int8"},
            "llmos worker: --quantization int8 runs on CPU only, not on cuda; "
            "use --device cpu or --quantization none",
        ),
        (
            {"dtype": "bfloat16", "quantization": "int8"},
            "llmos worker: --quantization int8 runs with float32 activations, not torch.bfloat16; "
            "use --dtype float32 (auto on CPU) or --quantization none",
        ),
        (
            {"quantization": "int4"},
            "llmos worker: unknown quantization 'int4'; use one of none, int8",
        ),
        (
            {"cpu_weights": "tiny"},
            "llmos worker: unknown --cpu-weights 'tiny'; use one of fast, compact",
        ),
    ],
)
def test_a_quantization_the_worker_cannot_run_is_refused_in_one_line(settings, message):
    config = WorkerConfig(model=MODEL, **{"device": "cpu", "dtype": "float32", **settings})
    with pytest.raises(SystemExit) as refusal:
        load_model(config)
    assert str(refusal.value) == message


@pytest.mark.e2e
@needs_native_bfloat16
def test_a_bfloat16_worker_serves_the_answers_of_its_engine(tiny_model_dir, tmp_path):
    """The worker frees the plain bfloat16 weights and still answers as the engine does
    with them kept."""
    config = WorkerConfig(model=str(tiny_model_dir), device="cpu", dtype="bfloat16")
    loaded = load_model(config)
    tokenizer = load_tokenizer(loaded.path)
    prompts = make_prompts(3, seed=7)
    expected = greedy_answers(loaded.model, tokenizer, prompts)
    with (
        Stack(tiny_model_dir, tmp_path, worker_args=("--dtype", "bfloat16")) as stack,
        stack.client() as client,
    ):
        answers = [list(client.generate(prompt, max_tokens=NEW_TOKENS).token_ids) for prompt in prompts]
    assert answers == expected
