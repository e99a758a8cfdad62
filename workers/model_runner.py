"""The model side of the batched engine: prefill newcomers, decode the batch.

A decode runs every row of the `BatchCache` as one `[rows, 1]` forward with
explicit position ids and a padding mask. Newcomers are prefilled apart, in a
`PrefillJob`: their contexts left-padded to one length, run through a fresh
`DynamicCache` a chunk of columns at a time, then copied into the batch cache
(right-aligned with the running rows) once the last chunk is done.

The engine decides who runs (workers.batched_engine); this module only turns
token ids into logits. Everything that touches the caches runs in inference
mode, so their tensors are inference tensors throughout.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from workers.batch_cache import BatchCache
from workers.cpu_linears import CpuLinears

PAD_TOKEN_ID = 0  # what fills padded input positions; the mask hides them, any id does
CachedPrefix = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [kv_heads, tokens, head_dim]


@dataclass
class PrefillJob:
    """Requests prefilled together. Row i's context sits in columns `[pad_lengths[i], num_columns)`."""

    request_ids: list[str]
    token_ids: torch.Tensor           # [rows, columns], left-padded
    pad_lengths: list[int]
    cache: DynamicCache
    num_done: int = 0                 # columns already run

    @property
    def num_rows(self) -> int:
        return len(self.request_ids)

    @property
    def num_columns(self) -> int:
        return self.token_ids.shape[1]

    @property
    def is_done(self) -> bool:
        return self.num_done == self.num_columns


class ModelRunner:
    def __init__(self, model: Any, max_num_seqs: int) -> None:
        self.model = model
        self.device = model.device
        num_layers = model.config.get_text_config().num_hidden_layers
        self.batch = BatchCache(num_layers, max_num_seqs)
        # transformers renamed `past_key_values` to `cache`; speak whichever it takes.
        parameters = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self.can_keep_last_logits = "logits_to_keep" in parameters
        self.cpu_linears = CpuLinears(model)

    # ---------------------------------------------------------------- prefill

    def start_prefill(self, request_ids: list[str], contexts: list[list[int]],
                      cached: list[CachedPrefix | None] | None = None) -> PrefillJob:
        """A job for these contexts, left-padded to one length. `cached[i]`: row i's cached
        prefix, per layer `[kv_heads, tokens, head_dim]` keys and values (None: none).

        The job starts at the first column where some row has no cached key and value
        (a pad before a row's tokens counts as cached: the mask hides it): the columns
        before are filled in from the cached prefixes, the rest is computed. A row whose
        prefix reaches past that column has its tail computed again."""
        num_columns = max(len(context) for context in contexts)
        token_ids = torch.full((len(contexts), num_columns), PAD_TOKEN_ID, dtype=torch.long)
        pad_lengths = []
        for row, context in enumerate(contexts):
            pad_lengths.append(num_columns - len(context))
            token_ids[row, pad_lengths[-1]:] = torch.tensor(context, dtype=torch.long)
        job = PrefillJob(request_ids, token_ids.to(self.device), pad_lengths, DynamicCache())
        cached = cached or [None] * len(contexts)
        start = min(pad + (0 if prefix is None else prefix[0][0].shape[-2])
                    for pad, prefix in zip(pad_lengths, cached))
        if start > 0:  # then some row has a cached prefix
            some_prefix = next(prefix for prefix in cached if prefix is not None)
            heads, _, head_dim = some_prefix[0][0].shape
            for layer in range(len(some_prefix)):
                keys = some_prefix[0][0].new_zeros((len(contexts), heads, start, head_dim))
                values = torch.zeros_like(keys)
                for row, (pad, prefix) in enumerate(zip(pad_lengths, cached)):
                    used = start - pad
                    if prefix is not None and used > 0:
                        keys[row, :, pad:start] = prefix[layer][0][:, :used]
                        values[row, :, pad:start] = prefix[layer][1][:, :used]
                job.cache.update(keys, values, layer)
            job.num_done = start
        return job

    @torch.inference_mode()
    def prefill(self, job: PrefillJob, num_columns: int) -> torch.Tensor | None:
        """Run the job's next `num_columns` columns; the last tokens' logits `[rows, vocab]`
        once the whole context is in, else None."""
        start, stop = job.num_done, min(job.num_done + num_columns, job.num_columns)
        pads = torch.tensor(job.pad_lengths, device=self.device)[:, None]
        attention_mask = None
        if any(job.pad_lengths):
            attention_mask = torch.arange(stop, device=self.device)[None, :] >= pads
        position_ids = (torch.arange(start, stop, device=self.device)[None, :] - pads).clamp(min=0)
        logits = self.forward(job.token_ids[:, start:stop], attention_mask, position_ids, job.cache)
        job.num_done = stop
        return logits if job.is_done else None

    @torch.inference_mode()
    def admit(self, job: PrefillJob) -> None:
        """Move a finished job's rows into the batch."""
        assert job.is_done
        self.batch.add_rows(job.cache, job.request_ids, job.pad_lengths)

    @torch.inference_mode()
    def remove(self, request_id: str) -> None:
        self.batch.remove(request_id)

    # ---------------------------------------------------------------- decode

    @torch.inference_mode()
    def decode(self, last_token_ids: list[int]) -> torch.Tensor:
        """One new token per batch row (in row order); the next-token logits `[rows, vocab]`."""
        batch = self.batch
        assert len(last_token_ids) == batch.num_rows
        batch.make_room(0, 1)
        attention_mask, position_ids = batch.decode_inputs(self.device)
        input_ids = torch.tensor(last_token_ids, device=self.device)[:, None]
        logits = self.forward(input_ids, attention_mask, position_ids, batch)
        batch.advance(1)
        return logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        kwargs = {self.cache_kwarg: cache, "use_cache": True}
        if self.can_keep_last_logits:
            kwargs["logits_to_keep"] = 1  # as generate does: same matmul, same rounding
        with self.cpu_linears.on_onednn():
            output = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=position_ids, **kwargs)
        return output.logits[:, -1]
