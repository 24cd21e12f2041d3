"""Multiverse Attention (SPEC.md §4) and position ids (SPEC.md §5) for batches.

Every mask starts from a batch's O(S) per-token arrays: `batch_intervals` gives the position ids and,
per token, the key intervals it may not see. `mask_for` turns those into the mask an attention
implementation takes, in one of two forms:
- `dense_mask`: an additive float mask `[B, 1, Q, K]` for sdpa and eager attention. Additive on
  purpose: transformers' eager attention adds a bool 4D mask instead of masking with it.
- `block_mask`: a flex_attention `BlockMask` built block by block from the intervals, never
  materialising the S x S mask (O(S) memory beyond the (S/128)^2 block table).
The model's forward, the Triton kernel path (which reads the intervals themselves) and the trainer
(which gets the intervals from its collator) all build their masks with these two functions.

Example:
    >>> position_ids, forbid_lo, forbid_hi = batch_intervals(input_ids, tag_ids, attention_mask)  # doctest: +SKIP
    >>> mask = mask_for(forbid_lo, forbid_hi, "sdpa", torch.float32)  # doctest: +SKIP
    >>> model.model(input_ids, attention_mask=mask, position_ids=position_ids)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .structure import PARALLEL, TEXT, TagIds, TokenStructure, kinds_of_ids, parse_kinds

try:  # flex_attention is optional: CPU-only or older builds fall back to dense masks
    from torch.nn.attention.flex_attention import BlockMask
except ImportError:  # pragma: no cover
    BlockMask = None

MULTIVERSE_KERNEL_ATTENTION = "multiverse_kernel"
"""The attention implementation of the opt-in kernel path (`kernel_attention.py`): it takes no mask but the
intervals themselves (`multiverse_intervals=(forbid_lo, forbid_hi)`)."""


def structure_of_ids(ids: torch.Tensor | Sequence[int], tag_ids: TagIds, *, partial: bool = True) -> TokenStructure:
    """Per-token arrays of one unpadded sequence. Partial by default: truncated sequences are legal."""
    kinds = kinds_of_ids(ids, tag_ids)
    if not bool((kinds == PARALLEL).any()):
        # No block: nothing but causal attention. Still parse, so a stray tag is reported.
        if bool((kinds != TEXT).any()):
            parse_kinds(kinds, partial=partial)
        return TokenStructure.causal(len(kinds))
    return parse_kinds(kinds, partial=partial).arrays()


def pack(structures: Sequence[TokenStructure]) -> TokenStructure:
    """Concatenate documents into one row in which no document sees another; positions restart per document."""
    depth = max(s.forbid_lo.shape[0] for s in structures)
    total = sum(s.length for s in structures)
    out = TokenStructure.causal(total, depth - 1)
    at = 0
    for s in structures:
        end = at + s.length
        d = s.forbid_lo.shape[0]
        out.position_ids[at:end] = s.position_ids
        out.forbid_lo[1:d, at:end] = s.forbid_lo[1:] + at
        out.forbid_hi[1:d, at:end] = s.forbid_hi[1:] + at
        out.forbid_lo[0, at:end] = 0
        out.forbid_hi[0, at:end] = at
        at = end
    return out


def stack(structures: Sequence[TokenStructure], offsets: Sequence[int], length: int):
    """Place per-row structures at `offsets` in rows of `length` (padding elsewhere).

    Returns `position_ids [B, S]`, `forbid_lo [B, D, S]`, `forbid_hi [B, D, S]`. Keys before a row's
    offset (left padding) are forbidden to its tokens; padding tokens get position 0.
    """
    depth = max(s.forbid_lo.shape[0] for s in structures)
    batch = len(structures)
    position_ids = torch.zeros(batch, length, dtype=torch.long)
    lo = torch.zeros(batch, depth, length, dtype=torch.long)
    hi = torch.zeros(batch, depth, length, dtype=torch.long)
    for b, (s, o) in enumerate(zip(structures, offsets)):
        end = o + s.length
        d = s.forbid_lo.shape[0]
        position_ids[b, o:end] = s.position_ids
        lo[b, :d, o:end] = s.forbid_lo + o
        hi[b, :d, o:end] = s.forbid_hi + o
        # row 0 isolates the document from what precedes it: left padding, or earlier packed documents
        lo[b, 0, o:end] = 0
        hi[b, 0, o:end] = s.forbid_hi[0] + o
    return position_ids, lo, hi


def dense_mask(forbid_lo: torch.Tensor, forbid_hi: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive mask `[B, 1, S, S]`: 0 where a query may attend, the dtype's minimum elsewhere."""
    batch, depth, length = forbid_lo.shape
    q = torch.arange(length, device=forbid_lo.device)
    k = q
    # built in place: one bool [B, S, S] for what is masked, one scratch, then the float mask
    masked = (k[None, :] > q[:, None]).unsqueeze(0).repeat(batch, 1, 1)
    scratch = torch.empty_like(masked)
    for d in range(depth):
        torch.ge(k, forbid_lo[:, d, :, None], out=scratch)
        scratch.logical_and_(k < forbid_hi[:, d, :, None])
        masked.logical_or_(scratch)
    del scratch
    mask = torch.zeros(masked.shape, dtype=dtype, device=forbid_lo.device)
    mask.masked_fill_(masked, torch.finfo(dtype).min)
    return mask[:, None]


def block_mask(forbid_lo: torch.Tensor, forbid_hi: torch.Tensor, block_size: int = 128):
    """A flex_attention `BlockMask` equal to `dense_mask`, built from the intervals without an S x S tensor.

    Each (query block, kv block) pair is classified by counting, with difference arrays over kv
    blocks, how many of the query block's rows find the kv block entirely masked (causally, or inside
    one interval) and how many rows have an interval touching it: O(B*D*S) scatter-adds plus an
    O(B*(S/block_size)^2) cumulative sum. Relies on the `TokenStructure` invariant that a row's
    intervals of different depths do not overlap and end at or before the row's own token.
    """
    if BlockMask is None:  # pragma: no cover
        raise RuntimeError("flex_attention needs torch >= 2.5")
    batch, depth, length = forbid_lo.shape
    device = forbid_lo.device
    n_blocks = (length + block_size - 1) // block_size
    width = n_blocks + 1  # one spare column for the "-1" ends of difference ranges
    q = torch.arange(length, device=device)
    q_block = q // block_size
    row_base = (torch.arange(batch, device=device)[:, None] * n_blocks + q_block) * width  # [B, S]
    masked_rows = torch.zeros(batch * n_blocks * width, dtype=torch.int32, device=device)
    touched_rows = torch.zeros_like(masked_rows)

    def add_ranges(counts: torch.Tensor, first: torch.Tensor, stop: torch.Tensor) -> None:
        """For every row with first < stop, count +1 on kv blocks first..stop-1 of its query block."""
        keep = stop > first
        base = row_base.expand_as(first)[keep]
        ones = torch.ones(base.shape, dtype=torch.int32, device=device)
        counts.index_add_(0, base + first[keep], ones)
        counts.index_add_(0, base + stop[keep], -ones)

    # keys after the query are masked: kv blocks whose first key is past the row
    causal_first = (q_block + 1).expand(batch, length)
    add_ranges(masked_rows, causal_first, torch.full_like(causal_first, n_blocks))
    for d in range(depth):
        lo, hi = forbid_lo[:, d], forbid_hi[:, d]
        nonempty = hi > lo
        # kv blocks overlapping [lo, hi)
        add_ranges(
            touched_rows,
            torch.where(nonempty, lo // block_size, 0),
            torch.where(nonempty, (hi - 1) // block_size + 1, 0),
        )
        # kv blocks inside [lo, hi), not already counted as causally masked
        inside_first = (lo + block_size - 1) // block_size
        inside_stop = torch.where(hi >= length, n_blocks, hi // block_size)
        inside_stop = torch.minimum(inside_stop, causal_first)
        add_ranges(masked_rows, inside_first, torch.where(nonempty, inside_stop, inside_first))
    masked_rows = masked_rows.view(batch, n_blocks, width).cumsum(-1, dtype=torch.int32)[..., :n_blocks]
    touched_rows = touched_rows.view(batch, n_blocks, width).cumsum(-1, dtype=torch.int32)[..., :n_blocks]
    kv_start = torch.arange(n_blocks, device=device) * block_size
    kv_last = torch.clamp(kv_start + block_size, max=length) - 1
    q_first = kv_start  # query blocks and kv blocks share the grid
    rows_in_block = (torch.clamp(q_first + block_size, max=length) - q_first)[:, None]  # [NQB, 1]
    empty = masked_rows == rows_in_block
    full = (kv_last[None, :] <= q_first[:, None]) & (touched_rows == 0)
    partial = ~empty & ~full
    lo_all, hi_all = forbid_lo, forbid_hi

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = kv_idx <= q_idx
        for d in range(depth):
            allowed = allowed & ~((kv_idx >= lo_all[b, d, q_idx]) & (kv_idx < hi_all[b, d, q_idx]))
        return allowed

    def to_indices(selected: torch.Tensor):
        count = selected.sum(-1, dtype=torch.int32)
        order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return count[:, None], order[:, None]

    kv_num, kv_idx = to_indices(partial)
    full_num, full_idx = to_indices(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(length, length)
    )


def batch_intervals(
    input_ids: torch.Tensor, tag_ids: TagIds, attention_mask: torch.Tensor | None = None, *, partial: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(position_ids [B, S], forbid_lo [B, D, S], forbid_hi [B, D, S])` of a batch of token ids with tags,
    on the ids' device, a 2D padding mask folded into the intervals (left or right padding; no holes).

    >>> from modeling_multiverse import TAGS
    >>> tag_ids = {tag: 100 + k for k, tag in enumerate(TAGS)}
    >>> batch_intervals(torch.tensor([[0, 7, 8]]), tag_ids, torch.tensor([[0, 1, 1]]))[0]  # left padding
    tensor([[0, 0, 1]])
    """
    batch, length = input_ids.shape
    ids_cpu = input_ids.detach().cpu()
    structures, offsets = [], []
    for b in range(batch):
        if attention_mask is None:
            start, end = 0, length
        else:
            real = torch.nonzero(attention_mask[b].detach().cpu()).flatten()
            start, end = (int(real[0]), int(real[-1]) + 1) if len(real) else (0, 0)
            if len(real) != end - start:
                raise ValueError(f"attention_mask row {b} has holes: only left or right padding is supported")
        structures.append(structure_of_ids(ids_cpu[b, start:end], tag_ids, partial=partial))
        offsets.append(start)
    position_ids, lo, hi = stack(structures, offsets, length)
    device = input_ids.device
    return position_ids.to(device), lo.to(device), hi.to(device)


def mask_for(
    forbid_lo: torch.Tensor, forbid_hi: torch.Tensor, implementation: str = "sdpa", dtype: torch.dtype = torch.float32
):
    """The mask an attention `implementation` takes for these intervals: a flex `BlockMask` for
    `flex_attention`, else an additive `dtype` tensor `[B, 1, S, S]` (sdpa, eager).

    >>> causal = torch.zeros(1, 1, 3, dtype=torch.long)
    >>> mask_for(causal, causal).shape
    torch.Size([1, 1, 3, 3])
    """
    if implementation == "flex_attention":
        return block_mask(forbid_lo, forbid_hi)
    return dense_mask(forbid_lo, forbid_hi, dtype)
