"""Stateless layers for `kernels.kernelize`. `MultiverseAttention.forward` replaces that of the same-named
layer in `modeling_multiverse.kernel_attention`, so the signatures match exactly; `BranchDecodeAttention`
exposes the branch-decode kernel the same way.

Example:
    >>> out = MultiverseAttention()(q, k, v, forbid_lo, forbid_hi, None)  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

from .decode import branch_decode_attention
from .prefill import structured_prefill_attention


class MultiverseAttention(nn.Module):
    """Structured prefill attention, `[B, H, S, D]` in and out (see `structured_prefill_attention`)."""

    has_backward = False
    can_torch_compile = False

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        forbid_lo: torch.Tensor,
        forbid_hi: torch.Tensor,
        scale: float | None,
    ) -> torch.Tensor:
        return structured_prefill_attention(query, key, value, forbid_lo, forbid_hi, scale)


class BranchDecodeAttention(nn.Module):
    """One token per live branch over the shared prefix and the visible branch tokens; see `branch_decode_attention`."""

    has_backward = False
    can_torch_compile = False

    def forward(
        self,
        query: torch.Tensor,
        prefix_key: torch.Tensor,
        prefix_value: torch.Tensor,
        branch_key: torch.Tensor,
        branch_value: torch.Tensor,
        token_enter: torch.Tensor,
        token_exit: torch.Tensor,
        query_node: torch.Tensor,
        scale: float | None,
    ) -> torch.Tensor:
        return branch_decode_attention(
            query, prefix_key, prefix_value, branch_key, branch_value, token_enter, token_exit, query_node, scale
        )


__all__ = ["BranchDecodeAttention", "MultiverseAttention"]
