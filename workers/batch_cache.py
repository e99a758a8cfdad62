"""One KV cache for the whole running batch: a padded tensor pair per layer.

Rows are requests, columns a timeline shared by all rows. Every row's tokens
end at column `end` (left padding), so one decode step writes one column for
every row at once and the model runs the batch as a single `[rows, 1]` input.
Row i holds its tokens in columns `[starts[i], end)`; the attention mask hides
the columns before. The model only sees columns `[base, end)` with
`base = min(starts)`: padding left behind by long rows that finished costs no
attention work and needs no copy.

Buffers are allocated for `max_rows` rows and grow by doubling along the
columns (one copy of the live part), so a step never concatenates: a decode
writes in place. Rows stay packed at `[0, num_rows)`: a row that leaves is
replaced by the last row (one row's copy), not by re-indexing the batch.

The class is a transformers `Cache`, so models call `update` on it as on their
own caches; `update` writes the new keys and values at column `end` and returns
views of `[base, end + new)`. `advance` moves `end` after the forward.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from workers.mixed_step import CURRENT_STEP

MIN_FREE_COLUMNS = 64  # right-hand room made at every reallocation, at least


class BatchLayer(CacheLayerMixin):
    """One layer's keys and values, `[max_rows, num_kv_heads, capacity, head_dim]`."""

    is_sliding = False

    def __init__(self, batch: BatchCache) -> None:
        super().__init__()
        self.batch = batch

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise AssertionError("a BatchCache is filled by add_rows before the model runs on it")

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, mixed = self.batch, CURRENT_STEP.get()
        if mixed is not None:  # its attention finds every row's columns in the whole buffers
            mixed.write(self.keys, self.values, key_states, value_states)
            return self.keys, self.values
        num_rows, end, num_new = batch.num_rows, batch.end, key_states.shape[-2]
        assert key_states.shape[0] == num_rows and end + num_new <= batch.capacity
        self.keys[:num_rows, :, end : end + num_new].copy_(key_states)
        self.values[:num_rows, :, end : end + num_new].copy_(value_states)
        return (
            self.keys[:num_rows, :, batch.base : end + num_new],
            self.values[:num_rows, :, batch.base : end + num_new],
        )

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.batch.end - self.batch.base

    def get_max_length(self) -> int:
        return -1

    def reallocate(
        self,
        template: torch.Tensor,
        max_rows: int,
        capacity: int,
        num_rows: int,
        old_columns: slice,
        new_start: int,
    ) -> None:
        """New buffers of `capacity` columns; the live part moves to start at `new_start`."""
        shape = (max_rows, template.shape[1], capacity, template.shape[3])
        # zeros, not empty: masked columns still enter the matmuls, and NaN * 0 is NaN
        keys = torch.zeros(shape, dtype=template.dtype, device=template.device)
        values = torch.zeros_like(keys)
        if self.is_initialized and num_rows:
            width = old_columns.stop - old_columns.start
            keys[:num_rows, :, new_start : new_start + width] = self.keys[:num_rows, :, old_columns]
            values[:num_rows, :, new_start : new_start + width] = self.values[:num_rows, :, old_columns]
        self.keys, self.values, self.is_initialized = keys, values, True

    def move_row(self, source: int, target: int, columns: slice) -> None:
        self.keys[target, :, columns] = self.keys[source, :, columns]
        self.values[target, :, columns] = self.values[source, :, columns]


class BatchCache(Cache):
    def __init__(self, num_layers: int, max_rows: int) -> None:
        super().__init__(layers=[BatchLayer(self) for _ in range(num_layers)])
        self.max_rows = max_rows
        self.row_ids: list[str] = []  # request id of each row, in row order
        self.starts: list[int] = []  # column of each row's first token
        self.base = 0
        self.end = 0
        self.capacity = 0  # columns allocated

    # ---------------------------------------------------------------- state

    @property
    def num_rows(self) -> int:
        return len(self.row_ids)

    @property
    def num_bytes(self) -> int:
        """Bytes the key and value buffers hold, every layer's: `max_rows` x `capacity`
        columns, live or not."""
        layer = self.layers[0]
        if not layer.is_initialized:
            return 0
        return 2 * len(self.layers) * layer.keys.numel() * layer.keys.element_size()

    @property
    def num_live_tokens(self) -> int:
        """Tokens whose keys and values the rows hold (each row's columns from its start)."""
        return sum(self.end - start for start in self.starts)

    def has_room_for(self, num_new_rows: int) -> bool:
        return self.num_rows + num_new_rows <= self.max_rows

    # ---------------------------------------------------------------- rows in and out

    def add_rows(self, source: Cache, row_ids: list[str], pad_lengths: list[int]) -> None:
        """Append the rows of a prefilled cache whose rows are left-padded by `pad_lengths`."""
        assert self.has_room_for(len(row_ids)), "check has_room_for first"
        assert not set(row_ids) & set(self.row_ids), "a request is in the batch already"
        num_columns = source.get_seq_length()
        self.make_room(num_columns, 1, template=source)
        first, rows = self.end - num_columns, slice(self.num_rows, self.num_rows + len(row_ids))
        for layer, source_layer in zip(self.layers, source.layers, strict=False):
            layer.keys[rows, :, first : self.end] = source_layer.keys
            layer.values[rows, :, first : self.end] = source_layer.values
        self.row_ids += row_ids
        self.starts += [first + pad for pad in pad_lengths]
        self.base = min(self.starts)

    def add_newcomer_rows(
        self, source: Cache, row_ids: list[str], pad_lengths: list[int], num_columns: int
    ) -> None:
        """Append rows whose left-padded contexts are `num_columns` wide and will end, like
        every row, at `end + 1` once the coming forward (a mixed step) computes their
        last columns; copy in the columns `source` holds already (its first ones)."""
        assert self.row_ids and self.has_room_for(len(row_ids))
        assert not set(row_ids) & set(self.row_ids), "a request is in the batch already"
        assert num_columns - 1 <= self.end < self.capacity, "make_room(num_columns - 1, 1) first"
        first = self.end + 1 - num_columns
        rows = slice(self.num_rows, self.num_rows + len(row_ids))
        num_done = source.get_seq_length()
        for layer, source_layer in zip(self.layers, source.layers if num_done else [], strict=False):
            layer.keys[rows, :, first : first + num_done] = source_layer.keys
            layer.values[rows, :, first : first + num_done] = source_layer.values
        self.row_ids += row_ids
        self.starts += [first + pad for pad in pad_lengths]
        self.base = min(self.starts)

    def truncate(self, num_rows: int) -> None:
        """Forget the rows past the first `num_rows` (newcomers whose forward failed)."""
        del self.row_ids[num_rows:], self.starts[num_rows:]
        self.base = min(self.starts) if self.starts else 0

    def remove(self, request_id: str) -> None:
        """Drop a request's row: the last row takes its place."""
        row, last = self.row_ids.index(request_id), self.num_rows - 1
        if row != last:
            columns = slice(self.starts[last], self.end)
            for layer in self.layers:
                layer.move_row(last, row, columns)
            self.row_ids[row], self.starts[row] = self.row_ids[last], self.starts[last]
        self.row_ids.pop()
        self.starts.pop()
        if self.row_ids:
            self.base = min(self.starts)
        else:
            self.base = self.end = 0  # an empty batch starts its timeline again

    def clear(self) -> None:
        self.row_ids.clear()
        self.starts.clear()
        self.base = self.end = 0

    # ---------------------------------------------------------------- decode

    def make_room(self, num_left: int, num_right: int, template: Cache | None = None) -> None:
        """Ensure `num_left` columns end at `end` and `num_right` more fit after it;
        reallocate (moving the live part) when they do not."""
        if self.capacity and self.end >= num_left and self.end + num_right <= self.capacity:
            return
        if not self.row_ids and num_left + num_right <= self.capacity:
            self.base = self.end = num_left  # nothing live to move
            return
        span = self.end - self.base
        new_end = max(span, num_left)
        capacity = new_end + max(num_right, new_end, MIN_FREE_COLUMNS)  # doubles: amortized O(1)
        shift = new_end - self.end
        for index, layer in enumerate(self.layers):
            like = layer.keys if layer.is_initialized else template.layers[index].keys
            layer.reallocate(
                like, self.max_rows, capacity, self.num_rows, slice(self.base, self.end), self.base + shift
            )
        self.starts = [start + shift for start in self.starts]
        self.base, self.end, self.capacity = self.base + shift, new_end, capacity

    def decode_inputs(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(attention mask over columns [base, end + 1), position ids) for one new token per
        row; no mask when no row has padding in view (attention then needs none)."""
        starts = torch.tensor(self.starts, device=device)
        position_ids = (self.end - starts)[:, None]
        if all(start == self.base for start in self.starts):
            return None, position_ids
        columns = torch.arange(self.base, self.end + 1, device=device)
        return columns[None, :] >= starts[:, None], position_ids

    def advance(self, num_columns: int) -> None:
        """The model wrote `num_columns` new columns for every row."""
        assert self.end + num_columns <= self.capacity
        self.end += num_columns
