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
from workers.mixed_step import MixedStep, NewcomerGroup, mixed_forward, supports_mixed_steps

PAD_TOKEN_ID = 0  # what fills padded input positions; the mask hides them, any id does
CachedPrefix = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [kv_heads, tokens, head_dim]


@dataclass
class PrefillJob:
    """Requests prefilled together. Row i's context sits in columns `[pad_lengths[i], num_columns)`."""

    request_ids: list[str]
    token_ids: torch.Tensor  # [rows, columns], left-padded
    pad_lengths: list[int]
    cache: DynamicCache
    num_done: int = 0  # columns already run

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
    def __init__(
        self,
        model: Any,
        max_num_seqs: int,
        mixed_steps: bool = True,
        cpu_weights: str = "fast",
        release_unused_weights: bool = False,
    ) -> None:
        self.model = model
        self.device = model.device
        num_layers = model.config.get_text_config().num_hidden_layers
        self.batch = BatchCache(num_layers, max_num_seqs)
        # newer transformers call the cache argument `cache`, older ones `past_key_values`
        parameters = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self.can_keep_last_logits = "logits_to_keep" in parameters
        self.cpu_linears = CpuLinears(model, cpu_weights, release_unused_weights)
        self.supports_mixed_steps = mixed_steps and supports_mixed_steps(model)

    # ---------------------------------------------------------------- prefill

    def start_prefill(
        self,
        request_ids: list[str],
        contexts: list[list[int]],
        cached: list[CachedPrefix | None] | None = None,
    ) -> PrefillJob:
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
            token_ids[row, pad_lengths[-1] :] = torch.tensor(context, dtype=torch.long)
        job = PrefillJob(request_ids, token_ids.to(self.device), pad_lengths, DynamicCache())
        cached = cached or [None] * len(contexts)
        start = min(
            pad + (0 if prefix is None else prefix[0][0].shape[-2])
            for pad, prefix in zip(pad_lengths, cached, strict=True)
        )
        if start > 0:  # then some row has a cached prefix
            some_prefix = next(prefix for prefix in cached if prefix is not None)
            heads, _, head_dim = some_prefix[0][0].shape
            for layer in range(len(some_prefix)):
                keys = some_prefix[0][0].new_zeros((len(contexts), heads, start, head_dim))
                values = torch.zeros_like(keys)
                for row, (pad, prefix) in enumerate(zip(pad_lengths, cached, strict=True)):
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

    # ---------------------------------------------------------------- decode and prefill at once

    def can_mix(self, job: PrefillJob, num_columns: int) -> bool:
        """Whether this step may run the batch's decodes and the job's next `num_columns`
        columns in one forward: the model allows it, there is a batch, and they finish the job."""
        return (
            self.supports_mixed_steps
            and self.batch.num_rows > 0
            and job.num_columns - job.num_done <= num_columns
        )

    @torch.inference_mode()
    def decode_and_prefill(self, last_token_ids: list[int], job: PrefillJob) -> torch.Tensor:
        """One forward for a new token per batch row and the rest of the job, whose rows then
        join the batch (`workers.mixed_step`); the next-token logits `[rows, vocab]` of the
        batch rows, then of the job's rows (the batch's new row order)."""
        batch, num_rows = self.batch, self.batch.num_rows
        assert len(last_token_ids) == num_rows
        batch.make_room(job.num_columns - 1, 1)
        step, input_ids, position_ids, keep = self.plan_mixed_step(last_token_ids, job)
        batch.add_newcomer_rows(job.cache, job.request_ids, job.pad_lengths, job.num_columns)
        try:
            with mixed_forward(self.model, step):
                logits = self.run_model(input_ids, None, position_ids, batch, keep)[0]
        except Exception:
            batch.truncate(num_rows)
            raise
        batch.advance(1)
        job.num_done = job.num_columns
        return logits

    def plan_mixed_step(
        self, last_token_ids: list[int], job: PrefillJob
    ) -> tuple[MixedStep, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step's layout, its packed input ids and position ids `[1, tokens]`, and the
        positions whose logits it keeps (each row's token, each newcomer's last)."""
        batch, device = self.batch, self.device
        decode_mask, decode_positions = batch.decode_inputs(device)
        step = MixedStep(
            batch.num_rows,
            batch.base,
            batch.end,
            None if decode_mask is None else decode_mask[:, None, None, :],
            [],
        )
        token_ids = [torch.tensor(last_token_ids, device=device)]
        positions = [decode_positions[:, 0]]
        keep = list(range(batch.num_rows))
        for row, pad in enumerate(job.pad_lengths):
            first = max(job.num_done, pad)  # a pad is never computed
            num_context, num_new = job.num_columns - pad, job.num_columns - first
            last = step.groups[-1] if step.groups else None
            if last is not None and (last.num_context, last.num_new) == (num_context, num_new):
                last.num_rows += 1
            else:
                step.groups.append(
                    NewcomerGroup(batch.num_rows + row, 1, num_context, num_new, step.num_tokens)
                )
            token_ids.append(job.token_ids[row, first:])
            positions.append(torch.arange(first - pad, num_context, device=device))
            keep.append(step.num_tokens - 1)
        return (
            step,
            torch.cat(token_ids)[None, :],
            torch.cat(positions)[None, :],
            torch.tensor(keep, device=device),
        )

    # ---------------------------------------------------------------- the model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        """The next-token logits of each row `[rows, vocab]` (its last input token's)."""
        return self.run_model(input_ids, attention_mask, position_ids, cache, 1)[:, -1]

    def run_model(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Any,
        logits_to_keep: int | torch.Tensor,
    ) -> torch.Tensor:
        """Logits `[rows, kept positions, vocab]`: the last `logits_to_keep` positions, or
        those it lists (as generate does for the last one: same matmul, same rounding)."""
        kwargs = {self.cache_kwarg: cache, "use_cache": True}
        if self.can_keep_last_logits:
            kwargs["logits_to_keep"] = logits_to_keep
        with self.cpu_linears.on_onednn():
            logits = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            ).logits
        if self.can_keep_last_logits:
            return logits
        return logits[:, -logits_to_keep:] if isinstance(logits_to_keep, int) else logits[:, logits_to_keep]
