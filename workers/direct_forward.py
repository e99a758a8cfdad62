"""A packed forward of a Llama-style model straight through its weights, for the paged engine on CPU.

transformers' forward of a decode step costs several milliseconds on CPU beyond
its matrix products: some forty small operators a layer (RMSNorm's six, the
rotary embedding's ten), module calls and hooks, each one dispatch and often a
wake-up of the thread pool, where the arithmetic of a few rows takes
microseconds. For the families whose layers are the Llama layer (Llama,
Mistral, Qwen2 with its biases, Qwen3 with its per-head norms), with SiLU-gated
MLPs, in float32, `DirectForward` runs the same layers with the project's CPU
operators (`workers/kernels/decode_ops.cpp`): one call for the residual add and
the norm, one for the rotary embedding and the KV store, the paged attention,
and the model's linears as the engine runs them (`workers.cpu_linears`). The
rotary embedding's cos and sin still come from the model's own `rotary_emb`, so
every RoPE scaling transformers knows is kept.

The arithmetic is transformers': logits equal its forward's up to the order of
additions (tests/test_direct_forward.py). Any other model, dtype or machine
without the kernels runs transformers' forward (`direct_forward_for` says None).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from workers import cpu_kernels, paged_ops
from workers.paged_cache import PagedCache, PagedStep

DIRECT_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3"})

Linear = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Norm:
    weight: torch.Tensor
    eps: float


@dataclass(frozen=True)
class DirectLayer:
    input_norm: Norm
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    q_norm: Norm | None  # Qwen3: an RMSNorm of each head's query and key, before the rotation
    k_norm: Norm | None
    post_norm: Norm
    gate: Linear
    up: Linear
    down: Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float


def direct_forward_for(model: Any, linears: dict[int, Linear]) -> DirectForward | None:
    """A DirectForward of `model`, or None where it does not apply (then transformers'
    forward runs). `linears`: the engine's forward of each linear, by `id` of the module
    (a linear not in it runs its module's own forward: an int8 one, for instance)."""
    config = model.config
    is_direct = (
        getattr(config, "model_type", None) in DIRECT_FAMILIES
        and getattr(config, "hidden_act", None) == "silu"
        and model.device.type == "cpu"
        and model.dtype == torch.float32
        and cpu_kernels.has_kernels()
        and hasattr(model, "lm_head")
        and hasattr(getattr(model, "model", None), "rotary_emb")
        and rotates_whole_heads(config)
    )
    if not is_direct:
        return None
    try:
        layers = [direct_layer(layer, linears) for layer in model.model.layers[: config.num_hidden_layers]]
    except AttributeError:  # a layer not shaped as the Llama one: transformers' forward
        return None
    return DirectForward(model, layers, linears)


def rotates_whole_heads(config: Any) -> bool:
    """Whether the rotary embedding turns every dimension of a head (`rope_store` does)."""
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    factor = parameters.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    return factor in (None, 1.0)


def norm_of(module: Any) -> Norm:
    return Norm(module.weight, float(module.variance_epsilon))


def direct_layer(layer: Any, linears: dict[int, Linear]) -> DirectLayer:
    attention, mlp = layer.self_attn, layer.mlp
    config = attention.config
    has_head_norms = hasattr(attention, "q_norm")
    return DirectLayer(
        input_norm=norm_of(layer.input_layernorm),
        q=linears.get(id(attention.q_proj), attention.q_proj),
        k=linears.get(id(attention.k_proj), attention.k_proj),
        v=linears.get(id(attention.v_proj), attention.v_proj),
        o=linears.get(id(attention.o_proj), attention.o_proj),
        q_norm=norm_of(attention.q_norm) if has_head_norms else None,
        k_norm=norm_of(attention.k_norm) if has_head_norms else None,
        post_norm=norm_of(layer.post_attention_layernorm),
        gate=linears.get(id(mlp.gate_proj), mlp.gate_proj),
        up=linears.get(id(mlp.up_proj), mlp.up_proj),
        down=linears.get(id(mlp.down_proj), mlp.down_proj),
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        head_dim=attention.head_dim,
        scaling=float(attention.scaling),
    )


class DirectForward:
    def __init__(self, model: Any, layers: list[DirectLayer], linears: dict[int, Linear]) -> None:
        self.embed = model.model.embed_tokens
        self.rotary = model.model.rotary_emb
        self.layers = layers
        self.final_norm = norm_of(model.model.norm)
        self.head = linears.get(id(model.lm_head), model.lm_head)

    @torch.inference_mode()
    def __call__(
        self,
        cache: PagedCache,
        step: PagedStep,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        last: torch.Tensor,
    ) -> torch.Tensor:
        """`input_ids` and `positions` `[tokens]`; logits `[rows, vocab]` of the tokens `last`."""
        ops = torch.ops.llmos_cpu
        hidden = self.embed(input_ids)  # [tokens, hidden]
        cos, sin = (part[0].contiguous() for part in self.rotary(hidden[None], positions[None]))
        num_tokens = hidden.shape[0]
        delta: torch.Tensor | None = None
        for layer, pools in zip(self.layers, cache.paged_layers, strict=True):
            normed = add_norm(hidden, delta, layer.input_norm)
            query = layer.q(normed).view(num_tokens, layer.num_heads, layer.head_dim).contiguous()
            key = layer.k(normed).view(num_tokens, layer.num_kv_heads, layer.head_dim).contiguous()
            value = layer.v(normed).view(num_tokens, layer.num_kv_heads, layer.head_dim).contiguous()
            if layer.q_norm is not None and layer.k_norm is not None:
                query = ops.rms_norm(query, layer.q_norm.weight, layer.q_norm.eps)
                key = ops.rms_norm(key, layer.k_norm.weight, layer.k_norm.eps)
            keys, values = pools.pools_for(layer.num_kv_heads, layer.head_dim, hidden.dtype, hidden.device)
            ops.rope_store(query, key, value, cos, sin, keys, values, step.slots)
            attended = paged_ops.paged_attention(
                query,
                keys,
                values,
                step.block_tables,
                step.token_rows,
                step.context_lens,
                layer.scaling,
                max_context_len=step.max_context_len,
            )
            delta = layer.o(attended.reshape(num_tokens, -1))
            normed = add_norm(hidden, delta, layer.post_norm)
            gated = torch.nn.functional.silu(layer.gate(normed), inplace=True).mul_(layer.up(normed))
            delta = layer.down(gated)
        hidden = hidden[last]
        assert delta is not None, "a model has layers"
        return self.head(ops.add_rms_norm(hidden, delta[last], self.final_norm.weight, self.final_norm.eps))


def add_norm(hidden: torch.Tensor, delta: torch.Tensor | None, norm: Norm) -> torch.Tensor:
    """RMSNorm of `hidden + delta` (of `hidden` where delta is None); the sum is kept in
    `hidden` (add_rms_norm adds in place)."""
    if delta is None:
        return torch.ops.llmos_cpu.rms_norm(hidden, norm.weight, norm.eps)
    return torch.ops.llmos_cpu.add_rms_norm(hidden, delta.contiguous(), norm.weight, norm.eps)
