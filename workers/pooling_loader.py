"""Loading an embedding or classification model (see `workers.pooling`).

Same `from_pretrained` on a local directory as a causal LM, with the
`AutoModel*` class for the task. Nothing is cached between steps, so the
model registers with the kernel with no KV capacity.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from llmos.wire import pb
from workers.config import WorkerConfig
from workers.model_loader import LoadedModel, _memory, prepare_device, resolve_device, resolve_dtype
from workers.quantization import resolve_quantization

log = logging.getLogger(__name__)

# A tokenizer that sets no limit says so with a huge model_max_length.
UNSET_MODEL_MAX_LENGTH = 1_000_000


def load_pooling_model(config: WorkerConfig, path: Path, name: str, task: int) -> LoadedModel:
    from transformers import AutoModel, AutoModelForSequenceClassification

    model_class = AutoModel if task == pb.TASK_KIND_EMBED else AutoModelForSequenceClassification
    device = resolve_device(config.device)
    prepare_device(device)
    dtype = resolve_dtype(config.dtype, device)
    if resolve_quantization(config.quantization, device, dtype) != "none":
        raise SystemExit("llmos worker: --quantization applies to generating models only; use none")
    model = model_class.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()
    memory_bytes_total, memory_bytes_used, _ = _memory(model, device)
    return LoadedModel(
        model=model,
        name=name,
        path=path,
        device=device,
        dtype=dtype,
        max_model_len=pooling_max_length(path, model.config, config.max_model_len),
        kv_capacity_tokens=0,
        memory_bytes_total=memory_bytes_total,
        memory_bytes_used=memory_bytes_used,
        task=task,
    )


def pooling_max_length(path: Path, model_config: Any, requested: int = 0) -> int:
    """Tokens per input; longer inputs are truncated.

    `requested` (--max-model-len) if set, else sentence-transformers'
    `max_seq_length` (256 for all-MiniLM-L6-v2, so embeddings equal its
    `encode`), else the tokenizer's `model_max_length`, never more than the
    model's position embeddings."""
    positions = int(getattr(model_config, "max_position_embeddings", 0) or 0) or UNSET_MODEL_MAX_LENGTH
    if requested:
        if requested > positions:
            log.warning(
                "max_model_len %d exceeds the model's max_position_embeddings %d", requested, positions
            )
        return requested
    sentence_config = _read_json(Path(path) / "sentence_bert_config.json")
    if sentence_config.get("max_seq_length"):
        return min(int(sentence_config["max_seq_length"]), positions)
    tokenizer_limit = int(
        _read_json(Path(path) / "tokenizer_config.json").get("model_max_length") or UNSET_MODEL_MAX_LENGTH
    )
    return min(tokenizer_limit, positions)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
