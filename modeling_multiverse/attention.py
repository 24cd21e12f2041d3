"""Multiverse Attention (SPEC 4) and position ids (SPEC 5) for batches.

Two mask forms come from the same O(S) per-token arrays (`TokenStructure`):
- `dense_mask`: an additive float mask `[B, 1, Q, K]` for sdpa and eager attention. Additive on
  purpose: transformers' eager attention adds a bool 4D mask instead of masking with it.
- `block_mask`: a flex_attention `BlockMask` built block by block from the intervals, never
  materialising the S x S mask (O(S) memory beyond the (S/128)^2 block table).

Example:
    >>> mask, position_ids = multiverse_attention_inputs(input_ids, tag_ids, attention_mask)  # doctest: +SKIP
    >>> model.model(input_ids, attention_mask=mask, position_ids=position_ids)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .structure import TagIds, TokenStructure, kinds_of_ids, parse_kinds, PARALLEL, TEXT

try:  # flex_attention is optional: CPU-only or older builds fall back to dense masks
    from torch.nn.attention.flex_attention import BlockMask
except ImportError:  # pragma: no cover
    BlockMask = None


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
    length = forbid_lo.shape[-1]
    q = torch.arange(length, device=forbid_lo.device)
    k = q
    allowed = (k[None, :] <= q[:, None]).unsqueeze(0).expand(forbid_lo.shape[0], -1, -1).clone()
    for d in range(forbid_lo.shape[1]):
        lo = forbid_lo[:, d, :, None]
        hi = forbid_hi[:, d, :, None]
        allowed &= ~((k >= lo) & (k < hi))
    mask = torch.zeros(allowed.shape, dtype=dtype, device=forbid_lo.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def block_mask(forbid_lo: torch.Tensor, forbid_hi: torch.Tensor, block_size: int = 128, rows_per_chunk: int = 2048):
    """A flex_attention `BlockMask` equal to `dense_mask`, built from the intervals without an S x S tensor."""
    if BlockMask is None:  # pragma: no cover
        raise RuntimeError("flex_attention needs torch >= 2.5")
    batch, depth, length = forbid_lo.shape
    device = forbid_lo.device
    n_blocks = (length + block_size - 1) // block_size
    kv_start = torch.arange(n_blocks, device=device) * block_size
    kv_end = torch.clamp(kv_start + block_size, max=length)
    empty = torch.empty(batch, n_blocks, n_blocks, dtype=torch.bool, device=device)
    full = torch.empty_like(empty)
    rows_per_chunk = max(block_size, rows_per_chunk // block_size * block_size)
    for r0 in range(0, length, rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, length)
        q = torch.arange(r0, r1, device=device)[None, :, None]
        lo = forbid_lo[:, :, r0:r1, None]  # [B, D, R, 1]
        hi = forbid_hi[:, :, r0:r1, None]
        touches = ((kv_start < hi) & (kv_end > lo)).any(1)  # [B, R, NB]
        inside = ((kv_start >= lo) & (kv_end <= hi)).any(1)
        row_empty = (kv_start > q) | inside
        row_full = (kv_end - 1 <= q) & ~touches
        # reduce rows to query blocks; missing rows of the last block count as both empty and full
        rows = r1 - r0
        padded = (rows + block_size - 1) // block_size * block_size
        if padded != rows:
            pad = torch.ones(batch, padded - rows, n_blocks, dtype=torch.bool, device=device)
            row_empty = torch.cat([row_empty, pad], 1)
            row_full = torch.cat([row_full, pad], 1)
        qb0 = r0 // block_size
        qb1 = qb0 + padded // block_size
        empty[:, qb0:qb1] = row_empty.view(batch, -1, block_size, n_blocks).all(2)
        full[:, qb0:qb1] = row_full.view(batch, -1, block_size, n_blocks).all(2)
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


def multiverse_attention_inputs(
    input_ids: torch.Tensor,
    tag_ids: TagIds,
    attention_mask: torch.Tensor | None = None,
    *,
    implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    partial: bool = True,
):
    """Mask and position ids for a batch of token ids with tags, honouring a 2D padding mask.

    Returns `(mask, position_ids)`: `mask` is a `BlockMask` when `implementation == "flex_attention"`,
    else an additive float `[B, 1, S, S]` tensor.
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
    position_ids, lo, hi = position_ids.to(device), lo.to(device), hi.to(device)
    if implementation == "flex_attention":
        return block_mask(lo, hi), position_ids
    return dense_mask(lo, hi, dtype), position_ids
