"""What one engine step runs on: the KV cache, the tree-attention mask, and grouped-query sdpa.

- `EngineCache`: one buffer per layer, written in place. It starts at a capacity fitted to the request
  and grows geometrically when full, so memory follows use (a `max_new_tokens` of 10**9 allocates
  nothing up front) and a step never copies the cache, unlike `DynamicCache`'s `torch.cat`.
- `VisibilityTable`: per prompt row, per branch slot, which cache columns the branch sees, on the
  model's device. A step writes its own columns in place; a fork copies a row; a merge ORs rows.
  `step_mask` turns it into the additive mask of the step's queries without leaving the device.
- `grouped_query_sdpa`: the attention of a step with several queries per row under one mask.

Only torch and transformers: this file ships with `generation.py` (see `write_custom_generate`).

Example:
    >>> table = VisibilityTable(rows=1, slots=2, columns=8, device="cpu")
    >>> table.write(torch.tensor([[1, 1]]), start=0)  # slot 1 feeds columns 0 and 1
    >>> table.mask(torch.tensor([[1, 1]]), start=0, dtype=torch.float32)[0, 0, 0].tolist()
    [0.0, -3.4028234663852886e+38]
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GROWTH = 2
"""Factor by which a full buffer grows (amortised O(1) copies per token)."""


def grown(capacity: int, needed: int, limit: int | None) -> int:
    """The next capacity for `needed` slots: at least `GROWTH` times the old one, at most `limit` if that fits."""
    size = max(needed, GROWTH * capacity, 16)
    return max(needed, min(size, limit)) if limit is not None else size


class _GrowingLayer(DynamicLayer):
    """One layer's keys and values `[B, Hkv, capacity, D]`; `keys`/`values` are views of the filled part."""

    def __init__(self, reserve: int, limit: int | None):
        super().__init__()
        self.reserve = reserve  # first capacity (tokens)
        self.limit = limit  # growth stops here, unless more is needed
        self.length = 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            if self.key_buffer is None:
                capacity = max(end, self.reserve)
            else:
                capacity = grown(self.key_buffer.shape[-2], end, self.limit)
            self.key_buffer = self._resized(self.key_buffer, key_states, capacity)
            self.value_buffer = self._resized(self.value_buffer, value_states, capacity)
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._refresh()
        return self.keys, self.values

    def _resized(self, old: torch.Tensor | None, new: torch.Tensor, capacity: int) -> torch.Tensor:
        batch, heads, _, dim = new.shape
        buffer = new.new_empty(batch, heads, capacity, dim)
        if old is not None:
            buffer[:, :, : self.length] = old[:, :, : self.length]
        return buffer

    def _refresh(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    @property
    def capacity(self) -> int:
        return 0 if self.key_buffer is None else self.key_buffer.shape[-2]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.key_buffer is not None:
            self.key_buffer = self.key_buffer[indices]
            self.value_buffer = self.value_buffer[indices]
            self._refresh()

    def add_rows(self, count: int) -> None:
        """`count` new rows of zeros (never NaN: masked columns still enter attention's products as zeros)."""
        if self.key_buffer is not None:
            self.key_buffer = torch.cat([self.key_buffer, self.key_buffer.new_zeros(count, *self.key_buffer.shape[1:])])
            self.value_buffer = torch.cat(
                [self.value_buffer, self.value_buffer.new_zeros(count, *self.value_buffer.shape[1:])]
            )
            self._refresh()

    def select_columns(self, index: torch.Tensor) -> None:
        """Keep only the filled columns `index` (ascending), moved to the front."""
        if self.key_buffer is not None:
            kept = len(index)
            self.key_buffer[:, :, :kept] = self.key_buffer[:, :, index]
            self.value_buffer[:, :, :kept] = self.value_buffer[:, :, index]
            self.length = kept
            self._refresh()


class EngineCache(Cache):
    """A KV cache that grows in place: first `reserve` tokens per row, then x`GROWTH` up to `limit` (a hint).

    >>> cache = EngineCache(num_layers=2, reserve=64, limit=4096)
    """

    def __init__(self, num_layers: int, reserve: int, limit: int | None = None):
        super().__init__(layers=[_GrowingLayer(reserve, limit) for _ in range(num_layers)])

    @property
    def capacity(self) -> int:
        """Tokens per row the buffers hold (filled or not)."""
        return max((layer.capacity for layer in self.layers), default=0)

    def add_rows(self, count: int) -> None:
        """`count` new rows (zeros) after the others, for prompts that join a running batch."""
        for layer in self.layers:
            layer.add_rows(count)

    def select_columns(self, index: torch.Tensor) -> None:
        """Keep only cache columns `index` (ascending) in every row, moved to the front (compaction)."""
        for layer in self.layers:
            layer.select_columns(index)

    def splice(self, rows: list[int], other: EngineCache, batch: int, length: int) -> None:
        """Write the columns of `other` (a cache of one row, n tokens) into each of `rows` at columns 0..n-1.

        This cache has `batch` rows and `length` filled columns; the rows written are new ones, whose columns hold
        zeros that none of their branches sees, so their own prompt can take the first n of them (rows are
        independent: the other rows never see them). When n exceeds `length`, the cache first grows by zero
        columns for every row. A joining prompt thus costs no columns beyond the longest row's.
        """
        n = other.get_seq_length()
        for layer, source in zip(self.layers, other.layers):
            if n > length:
                shape = (batch, source.keys.shape[1], n - length, source.keys.shape[-1])
                layer.update(source.keys.new_zeros(shape), source.values.new_zeros(shape))
            layer.key_buffer[rows, :, :n] = source.keys[0]
            layer.value_buffer[rows, :, :n] = source.values[0]


class VisibilityTable:
    """`visible[row, slot, column]`: branch `slot` of prompt `row` sees cache column `column`. On the device.

    Slot 0 belongs to no branch: padding queries write and read it, so they see only padding.
    """

    def __init__(self, rows: int, slots: int, columns: int, device, limit: int | None = None):
        self.visible = torch.zeros(rows, slots, columns, dtype=torch.bool, device=device)
        self.limit = limit

    def ensure(self, slots: int, columns: int) -> None:
        """Room for `slots` branches and `columns` cache columns per row (grown geometrically, kept)."""
        rows, have_slots, have_columns = self.visible.shape
        if slots <= have_slots and columns <= have_columns:
            return
        new_slots = have_slots if slots <= have_slots else grown(have_slots, slots, None)
        new_columns = have_columns if columns <= have_columns else grown(have_columns, columns, self.limit)
        bigger = self.visible.new_zeros(rows, new_slots, new_columns)
        bigger[:, :have_slots, :have_columns] = self.visible
        self.visible = bigger

    def copy(self, row: int, dst: int, src: int) -> None:
        """A fork: the new branch sees what its parent sees."""
        self.visible[row, dst] = self.visible[row, src]

    def merge(self, row: int, dst: int, src: int) -> None:
        """A merge: the parent sees what a finished path saw, its own tokens included."""
        self.visible[row, dst] |= self.visible[row, src]

    def write(self, slots: torch.Tensor, start: int) -> None:
        """Query q of row b (branch `slots[b, q]`) fills column start + q: its branch sees it from now on."""
        rows, width = slots.shape
        row = torch.arange(rows, device=slots.device)[:, None].expand(rows, width)
        column = (start + torch.arange(width, device=slots.device))[None, :].expand(rows, width)
        self.visible[row, slots, column] = True

    def mask(self, slots: torch.Tensor, start: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask `[B, 1, W, start + W]` of the step's queries: what their branch sees, causally."""
        rows, width = slots.shape
        total = start + width
        row = torch.arange(rows, device=slots.device)[:, None]
        allowed = self.visible[row, slots, :total]  # [B, W, total]
        query = start + torch.arange(width, device=slots.device)
        allowed &= torch.arange(total, device=slots.device)[None, :] <= query[:, None]  # a chunk is causal
        mask = torch.zeros(allowed.shape, dtype=dtype, device=slots.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None]

    def select_rows(self, keep: torch.Tensor) -> None:
        self.visible = self.visible[keep]

    def add_rows(self, count: int) -> None:
        """`count` new rows that see no column yet."""
        self.visible = torch.cat([self.visible, self.visible.new_zeros(count, *self.visible.shape[1:])])

    def select_columns(self, index: torch.Tensor) -> None:
        """Keep only columns `index` (ascending), moved to the front; the freed columns see nothing."""
        kept = len(index)
        self.visible[:, :, :kept] = self.visible[:, :, index]
        self.visible[:, :, kept:] = False


# ---------------------------------------------------------------------------------------------
# Attention

ENGINE_SDPA = "multiverse_engine_sdpa"
"""The attention implementation the engine switches an `sdpa` model to while it decodes."""


def grouped_query_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """sdpa for an engine step: several queries per row under one mask shared by all heads.

    transformers' sdpa copies K and V once per query head (`repeat_kv`) whenever a step has more
    than one query and a mask, which on CPU costs as much as the attention itself. Here the queries
    of the heads that share a key/value head are stacked along the query axis instead, so attention
    runs on the cached K and V as they are; the mask rows repeat once per stacked head (q x k, small).
    """
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, q_len, head_dim = query.shape
    if groups == 1 or q_len == 1 or attention_mask is None or attention_mask.shape[1] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    stacked = query.reshape(batch, heads // groups, groups * q_len, head_dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        stacked, key, value, attn_mask=attention_mask.repeat(1, 1, groups, 1), scale=scaling
    )
    return out.reshape(batch, heads, q_len, head_dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(ENGINE_SDPA, grouped_query_sdpa)
AttentionMaskInterface.register(ENGINE_SDPA, sdpa_mask)


@contextmanager
def engine_attention(model):
    """Decode with `grouped_query_sdpa` when the model runs sdpa; anything else is left as it is."""
    config = model.get_decoder().config
    if config._attn_implementation != "sdpa":
        yield
        return
    config._attn_implementation = ENGINE_SDPA
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


__all__ = ["ENGINE_SDPA", "EngineCache", "VisibilityTable", "engine_attention", "grouped_query_sdpa"]
