"""One forward for a step's decodes and its newcomers' prefill (mixed batching).

Without it, a step where requests join runs the model twice: once for the batch's
decodes (`[rows, 1]`) and once for the newcomers' prefill. When the model's time
goes to launching kernels and Python rather than to arithmetic (a small model on
a big GPU, or any model at small batch), the second forward costs about as much
as the first, so a stack whose requests come and go would spend much of its time
on the second forwards. vLLM v1 puts both kinds of token in one forward; so does this.

The tokens are packed into one `[1, tokens]` input: first one per batch row
(its last token), then, for each newcomer, the part of its context not computed
yet. Each token carries its own position. The newcomers join the `BatchCache`
as new rows before the forward, right-aligned so that, like every row, their
contexts end at the column the decodes write (`end`); what was computed before
(a cached prefix, earlier prefill chunks) is copied in first. Then, per layer:

- `update` (the cache's, while a `MixedStep` is current: `mixed_forward`) writes the decodes'
  keys and values at column `end` and each newcomer's at the end of its row,
  and hands on the layer's whole buffers;
- the attention function registered here (`MIXED_ATTENTION`, switched on for
  the one forward) runs the decodes as one `[rows, 1]` attention over their
  columns, and the newcomers in groups of equal shape, causally over their rows.

Linears, norms and the LM head run once over every token. Only the families the
engine tests run this way (MIXED_STEP_FAMILIES: Llama, Mistral, Qwen2, Qwen3,
Phi-3, GPT-2), with plain full attention over the context length, qualify
(`supports_mixed_steps`); the engine runs two forwards for the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.functional import scaled_dot_product_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, use_gqa_in_sdpa

MIXED_ATTENTION = "llmos_mixed"
# families whose attention layers are known to hand `MixedStep.attend` all it needs (the
# engine tests run each): others may pass the attention function extras it would ignore
MIXED_STEP_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2"})


@dataclass
class NewcomerGroup:
    """Newcomers in consecutive batch rows that compute the same number of tokens
    over contexts of the same length (so one attention call serves them)."""

    first_row: int
    num_rows: int
    num_context: int  # context tokens per row: the row's columns [end + 1 - num_context, end + 1)
    num_new: int  # the last tokens of each context, computed in this forward
    query_offset: int  # where the group's tokens start in the packed input

    @property
    def rows(self) -> slice:
        return slice(self.first_row, self.first_row + self.num_rows)

    @property
    def num_tokens(self) -> int:
        return self.num_rows * self.num_new


@dataclass
class MixedStep:
    """The layout of one mixed forward: `num_decode_rows` decodes at column `end`
    (their columns from `base`, hidden before `decode_mask`'s starts), then the groups."""

    num_decode_rows: int
    base: int
    end: int
    decode_mask: torch.Tensor | None  # [rows, 1, 1, end + 1 - base]; None: nothing to hide
    groups: list[NewcomerGroup]

    @property
    def num_tokens(self) -> int:
        return self.num_decode_rows + sum(group.num_tokens for group in self.groups)

    def write(
        self, keys: torch.Tensor, values: torch.Tensor, key_states: torch.Tensor, value_states: torch.Tensor
    ) -> None:
        """Store a layer's new keys and values (`[1, kv_heads, tokens, head_dim]`) in its buffers."""
        rows, end = self.num_decode_rows, self.end
        for buffer, states in ((keys, key_states), (values, value_states)):
            buffer[:rows, :, end] = states[0, :, :rows].transpose(0, 1)
            for group in self.groups:
                new = states[0, :, group.query_offset : group.query_offset + group.num_tokens]
                new = new.unflatten(1, (group.num_rows, group.num_new)).transpose(0, 1)
                buffer[group.rows, :, end + 1 - group.num_new : end + 1] = new

    def attend(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float | None
    ) -> torch.Tensor:
        """`query` `[1, heads, tokens, head_dim]` against the buffers; `[1, tokens, heads, head_dim]`."""
        rows, stop = self.num_decode_rows, self.end + 1
        parts = []
        if rows:
            decode_query = query[0, :, :rows].transpose(0, 1).unsqueeze(2)  # [rows, heads, 1, dim]
            out = attention(
                decode_query,
                keys[:rows, :, self.base : stop],
                values[:rows, :, self.base : stop],
                self.decode_mask,
                False,
                scaling,
            )
            parts.append(out.squeeze(2).transpose(0, 1))  # [heads, rows, dim]
        for group in self.groups:
            tokens = query[0, :, group.query_offset : group.query_offset + group.num_tokens]
            group_query = tokens.unflatten(1, (group.num_rows, group.num_new)).transpose(0, 1)
            first = stop - group.num_context
            causal = group.num_new == group.num_context
            mask = None if causal else causal_mask(group.num_new, group.num_context, query.device)
            out = attention(
                group_query,
                keys[group.rows, :, first:stop],
                values[group.rows, :, first:stop],
                mask,
                causal,
                scaling,
            )
            parts.append(out.transpose(0, 1).flatten(1, 2))  # [heads, tokens, dim]
        return torch.cat(parts, dim=1).transpose(0, 1).unsqueeze(0)


def causal_mask(num_new: int, num_context: int, device: torch.device) -> torch.Tensor:
    """`[num_new, num_context]`: the last `num_new` tokens of a context each see the
    context up to themselves."""
    columns = torch.arange(num_context, device=device)
    last_seen = torch.arange(num_context - num_new, num_context, device=device)
    return columns[None, :] <= last_seen[:, None]


def attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scaling: float | None,
) -> torch.Tensor:
    """Scaled dot-product attention with as many query heads as key heads or a multiple
    (grouped queries), as transformers' own `sdpa` runs it: the kernel groups the heads
    where it can without falling back to its slow path, else the keys are repeated."""
    num_repeats = query.shape[1] // keys.shape[1]
    grouped = num_repeats > 1 and use_gqa_in_sdpa(mask, keys, values)
    if num_repeats > 1 and not grouped:
        keys, values = repeat_kv(keys, num_repeats), repeat_kv(values, num_repeats)
    return scaled_dot_product_attention(
        query, keys, values, attn_mask=mask, is_causal=is_causal, scale=scaling, enable_gqa=grouped
    )


# the step of the mixed forward under way (`mixed_forward`), for the batch cache's
# `update` and for the attention function
CURRENT_STEP: ContextVar[MixedStep | None] = ContextVar("llmos_mixed_step", default=None)


@contextmanager
def mixed_forward(model: Any, step: MixedStep) -> Iterator[None]:
    """For the one forward inside: the step's layout, and the model's attention switched
    to MIXED_ATTENTION; both as they were afterwards, whatever happens."""
    reset = CURRENT_STEP.set(step)
    config = model.config
    implementation, config._attn_implementation = config._attn_implementation, MIXED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = implementation
        CURRENT_STEP.reset(reset)


def mixed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function of a mixed forward: `key` and `value` are the layer's
    whole buffers (what `BatchLayer.update` returns while a step is mixed); the
    step's layout is the one `mixed_forward` set."""
    step = CURRENT_STEP.get()
    assert step is not None, f"{MIXED_ATTENTION} attention outside a mixed forward"
    return step.attend(query, key, value, scaling), None


AttentionInterface.register(MIXED_ATTENTION, mixed_attention)


def supports_mixed_steps(model: Any) -> bool:
    """A family in MIXED_STEP_FAMILIES whose attention goes through transformers'
    interface: what `MixedStep.attend` computes, given full attention (the engine checks
    that: `workers.model_facts.has_full_attention`)."""
    config = model.config
    return (
        getattr(model, "_supports_attention_backend", False)
        and getattr(config, "model_type", None) in MIXED_STEP_FAMILIES
        and config is config.get_text_config()
    )
