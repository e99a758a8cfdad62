"""Train `llmos-demo`, the embedded default model, and write it to llmos/models/llmos-demo/.

A small Llama and a byte-level BPE tokenizer, both trained here on CPU from
llmos.demo_corpus (customer-service chats) and llmos.tiny_model.CORPUS (prose),
with fixed seeds. Run once by hand; the result is committed, so neither CI nor
`llmos model init` trains:

    PYTHONPATH=$PWD python scripts/train_demo_model.py            # ~10 minutes on 2 cores

The weights are stored as float16 (half the bytes) with `dtype: float32` in
config.json, so `from_pretrained` hands back float32.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llmos import demo_corpus
from llmos.demo_model import (
    BOS_TOKEN,
    EOS_TOKEN,
    PACKAGED_DIR,
    PAD_TOKEN,
    ROLE_TOKENS,
    SEED,
    VOCAB_SIZE,
    corpus_split,
)
from llmos.tiny_model import CORPUS

log = logging.getLogger("train_demo_model")

SEQ_LEN = 256
BATCH_SIZE = 16
PEAK_LR = 3e-3
WARMUP_STEPS = 20
PLAIN_EVERY = 6  # one training chat in six also appears as a bare transcript
PROSE_REPEATS = 30


def make_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Llama-style: every encoded prompt starts with BOS (the chat template has none).
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, tokenizer.token_to_id(BOS_TOKEN))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
        chat_template=demo_corpus.CHAT_TEMPLATE,
    )


def make_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=192,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=512,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    return LlamaForCausalLM(config)


def training_documents() -> list[str]:
    train, _ = corpus_split()
    documents = [demo_corpus.render_chat(chat) for chat in train]
    documents += [demo_corpus.render_plain(chat) for chat in train[::PLAIN_EVERY]]
    documents += [paragraph + EOS_TOKEN for paragraph in CORPUS.split("\n\n")] * PROSE_REPEATS
    random.Random(SEED).shuffle(documents)
    return documents


def tokenizer_texts(documents: list[str]) -> list[str]:
    """The documents without special-token strings, for the BPE trainer."""
    texts = []
    for document in documents:
        for special in (EOS_TOKEN, *ROLE_TOKENS):
            document = document.replace(special, "")
        texts.append(document)
    return texts


def pack(tokenizer: PreTrainedTokenizerFast, documents: list[str]) -> torch.Tensor:
    """All documents (each BOS ... EOS) back to back, cut into rows of SEQ_LEN tokens."""
    token_ids = [token_id for document in documents for token_id in tokenizer.encode(document)]
    num_rows = len(token_ids) // SEQ_LEN
    return torch.tensor(token_ids[: num_rows * SEQ_LEN]).view(num_rows, SEQ_LEN)


def learning_rate(step: int, num_steps: int) -> float:
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, num_steps - WARMUP_STEPS)
    return PEAK_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: LlamaForCausalLM, rows: torch.Tensor, num_steps: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), weight_decay=0.01)
    generator = torch.Generator().manual_seed(SEED)
    order = torch.randperm(len(rows), generator=generator)
    model.train()
    started_s = time.monotonic()
    for step in range(num_steps):
        start = (step * BATCH_SIZE) % (len(rows) - BATCH_SIZE)
        batch = rows[order[start : start + BATCH_SIZE]]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, num_steps)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0 or step == num_steps - 1:
            elapsed_s = time.monotonic() - started_s
            log.info("step %d/%d loss %.3f (%.0f s)", step, num_steps, loss.item(), elapsed_s)
    model.eval()


def save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
    )
    model.to(torch.float16).save_pretrained(output_dir)
    config_path = output_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"  # stored as float16, loaded as float32
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(output_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=220)
    parser.add_argument("--output", type=Path, default=PACKAGED_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    started_s = time.monotonic()
    documents = training_documents()
    tokenizer = make_tokenizer(tokenizer_texts(documents))
    rows = pack(tokenizer, documents)
    log.info("vocab %d, %d rows of %d tokens", len(tokenizer), len(rows), SEQ_LEN)
    model = make_model(tokenizer)
    log.info("%d parameters", sum(p.numel() for p in model.parameters()))
    train(model, rows, args.steps)
    save(model, tokenizer, args.output)
    log.info("trained and saved to %s in %.0f s", args.output, time.monotonic() - started_s)


if __name__ == "__main__":
    main()
