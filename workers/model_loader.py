"""Loading the served model from a local directory, and sizing its KV cache."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmos.demo_model import MODEL_NAME as DEMO_MODEL_NAME
from llmos.demo_model import ensure_demo_model
from llmos.wire import pb
from workers.config import WorkerConfig
from workers.cpu_linears import check_cpu_weights
from workers.dummy import build_dummy_model, build_dummy_tokenizer, dummy_preset_name
from workers.kv_dtype import resolve_kv_cache_dtype
from workers.quantization import int8_weight_bytes, quantize_int8, resolve_quantization
from workers.tasks import embedded_model_name, embedded_model_path, resolve_task

log = logging.getLogger(__name__)

CPU_KV_BUDGET_BYTES = 1 << 30  # CPU memory is shared with everything else: a fixed budget
CUDA_KV_FRACTION = 0.9  # of the memory still free after loading the weights
MAX_UINT32 = 2**32 - 1

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass
class LoadedModel:
    model: Any
    name: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    kv_capacity_tokens: int
    memory_bytes_total: int
    memory_bytes_used: int  # weights and runtime, before the KV cache
    task: int = pb.TASK_KIND_GENERATE  # embed / classify: see workers.pooling_loader
    quantization: str = "none"  # int8: see workers.quantization


def resolve_model_path(config: WorkerConfig) -> tuple[Path, str]:
    """(directory, served name); an empty --model means the embedded llmos-demo model.

    `dummy:<preset>` (random weights, no files; see workers.dummy) passes through
    as the path `dummy:<preset>`, which load_model and load_tokenizer recognise."""
    if not config.model:
        return ensure_demo_model(), config.model_name or DEMO_MODEL_NAME
    try:
        if dummy_preset_name(config.model) is not None:
            return Path(config.model), config.model_name or config.model
    except ValueError as exc:
        raise SystemExit(f"llmos worker: {exc}") from None
    try:  # embedded:<name> (or `minilm`): weights shipped inside a pip package
        if (embedded := embedded_model_name(config.model)) is not None:
            return embedded_model_path(embedded), config.model_name or embedded
    except ValueError as exc:
        raise SystemExit(f"llmos worker: {exc}") from None
    path = Path(config.model).expanduser().resolve()
    try:
        is_dir = path.is_dir()
        if is_dir:
            next(path.iterdir(), None)  # a folder this user may not list fails here, not in transformers
    except PermissionError:
        raise SystemExit(unreadable(path)) from None
    if not is_dir:
        raise SystemExit(f"llmos worker: model directory {path} does not exist")
    return path, config.model_name or path.name


def unreadable(path: Path) -> str:
    """The one line a worker exits with when it may not read its model (a container's
    user rarely owns a mounted folder)."""
    return (
        f"llmos worker: permission denied reading the model at {path} as uid {os.getuid()}; "
        "make it readable to this user (e.g. chmod -R a+rX on the host) or run the worker as its owner"
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_device(device: torch.device) -> None:
    """Process-wide settings for serving on `device`.

    On CUDA, cuDNN's fused attention is turned off, so PyTorch's
    scaled_dot_product_attention picks flash or memory-efficient attention.
    cuDNN builds an execution plan for every new input shape, and every decode
    step brings a new key length (and a batch that changes its row count): the
    planning costs more CPU time than the step itself (docs/benchmarks.md, "CUDA").
    """
    if device.type == "cuda" and torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        log.info("cuDNN attention off: its per-shape plans cost more than a decode step")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise SystemExit(f"llmos worker: unknown dtype {name!r}; use one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    preset = dummy_preset_name(str(path))
    if preset is not None:
        return build_dummy_tokenizer(preset)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_model(config: WorkerConfig) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    path, name = resolve_model_path(config)
    try:
        task = resolve_task(path, config.task)
    except ValueError as exc:
        raise SystemExit(f"llmos worker: {exc}") from None
    except PermissionError:
        raise SystemExit(unreadable(path)) from None
    if task != pb.TASK_KIND_GENERATE:
        from workers.pooling_loader import load_pooling_model  # it imports this module

        return load_pooling_model(config, path, name, task)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    quantization = resolve_quantization(config.quantization, device, dtype)  # refused before any setup
    try:
        check_cpu_weights(config.cpu_weights)
        kv_dtype = resolve_kv_cache_dtype(config.kv_cache_dtype, dtype)
        if config.cuda_graphs and device.type != "cuda":
            raise ValueError(f"--cuda-graphs needs a CUDA device, not {device.type}")
    except ValueError as exc:
        raise SystemExit(f"llmos worker: {exc}") from None
    prepare_device(device)
    preset = dummy_preset_name(str(path))
    if preset is not None:
        model = build_dummy_model(preset, device, dtype)
    else:
        # int8 widens each linear alone as it rounds it (workers.quantization): loaded in the
        # checkpoint's own dtype, a 16-bit checkpoint never stands in memory at float32's size
        load_dtype: torch.dtype | str = "auto" if quantization == "int8" else dtype
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=load_dtype, local_files_only=True)
        except PermissionError:
            raise SystemExit(unreadable(path)) from None
        model = model.to(device).eval()
    if quantization == "int8":
        quantize_int8(model)
    context_length = int(model.config.get_text_config().max_position_embeddings)
    max_model_len = config.max_model_len or context_length
    if max_model_len > context_length:
        log.warning(
            "max_model_len %d exceeds the model's max_position_embeddings %d", max_model_len, context_length
        )
    memory_bytes_total, memory_bytes_used, kv_budget_bytes = _memory(model, device)
    # the KV cache holds activations, in `dtype` whatever the weights' precision (or --kv-cache-dtype's)
    kv_tokens = config.kv_cache_tokens or kv_budget_bytes // kv_bytes_per_token(model.config, kv_dtype)
    return LoadedModel(
        model=model,
        name=name,
        path=path,
        device=device,
        dtype=dtype,
        max_model_len=max_model_len,
        kv_capacity_tokens=min(int(kv_tokens), MAX_UINT32),
        memory_bytes_total=memory_bytes_total,
        memory_bytes_used=memory_bytes_used,
        quantization=quantization,
    )


def kv_bytes_per_token(model_config: Any, dtype: torch.dtype) -> int:
    """Keys and values of every layer for one token."""
    text = model_config.get_text_config()
    num_heads = text.num_attention_heads
    num_kv_heads = getattr(text, "num_key_value_heads", None) or num_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // num_heads
    return 2 * text.num_hidden_layers * num_kv_heads * head_dim * dtype.itemsize


def _memory(model: Any, device: torch.device) -> tuple[int, int, int]:
    """(memory total, memory used before the KV cache, bytes the KV cache may take)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return total, total - free, int(free * CUDA_KV_FRACTION)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) + int8_weight_bytes(model)
    return total, weights, CPU_KV_BUDGET_BYTES
