"""Plain torch references the kernels are tested against: a dense mask and softmax attention.

Example:
    >>> causal = torch.zeros(1, 1, 3, dtype=torch.long)
    >>> allowed_from_intervals(causal, causal)[0].int().tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
"""

from __future__ import annotations

import math

import torch


def allowed_from_intervals(forbid_lo: torch.Tensor, forbid_hi: torch.Tensor) -> torch.Tensor:
    """`[B, S, S]` bool: query t may see key k iff k <= t and k is in no `[lo[d, t], hi[d, t])`."""
    length = forbid_lo.shape[-1]
    position = torch.arange(length, device=forbid_lo.device)
    keys = position[None, None, None, :]
    inside = (keys >= forbid_lo[..., None]) & (keys < forbid_hi[..., None])  # [B, depth, S, S]
    return (position[None, :] <= position[:, None]) & ~inside.any(1)


def masked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Softmax attention in fp32. `allowed` is `[B, Q, K]`; key/value heads are repeated for GQA."""
    heads_per_kv = query.shape[1] // key.shape[1]
    key = key.float().repeat_interleave(heads_per_kv, dim=1)
    value = value.float().repeat_interleave(heads_per_kv, dim=1)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", query.float(), key) * scale
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), value).to(query.dtype)


def reference_prefill_attention(query, key, value, forbid_lo, forbid_hi, scale=None) -> torch.Tensor:
    """What `structured_prefill_attention` must return."""
    return masked_attention(query, key, value, allowed_from_intervals(forbid_lo, forbid_hi), scale)


def reference_branch_decode_attention(
    query, prefix_key, prefix_value, branch_key, branch_value, token_enter, token_exit, query_node, scale=None, *,
    prefix_start=None,
) -> torch.Tensor:
    """What `branch_decode_attention` must return: attention over [prefix, branch tokens] with the tree mask."""
    batch, _, num_branches, _ = query.shape
    prefix_len = prefix_key.shape[2]
    start = torch.zeros(batch, dtype=torch.long, device=query.device) if prefix_start is None else prefix_start
    prefix_allowed = torch.arange(prefix_len, device=query.device)[None, :] >= start[:, None]  # [B, P]
    branch_allowed = (token_enter[:, None, :] <= query_node[:, :, None]) & (
        query_node[:, :, None] < token_exit[:, None, :]
    )
    allowed = torch.cat([prefix_allowed[:, None, :].expand(-1, num_branches, -1), branch_allowed], dim=-1)
    key = torch.cat([prefix_key, branch_key], dim=2)
    value = torch.cat([prefix_value, branch_value], dim=2)
    return masked_attention(query, key, value, allowed, scale)
