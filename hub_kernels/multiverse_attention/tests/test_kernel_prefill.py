"""Structured prefill attention against the dense-mask torch reference.

The interval arrays are built by hand here so the kernel repository tests stand alone; they follow
`TokenStructure`: row 0 isolates a row from its left padding, row d+1 hides earlier sibling paths
of a block at depth d.
"""

from __future__ import annotations

import pytest
import torch
from multiverse_attention_testing import HAS_CUDA, requires_cuda


def nested_block_intervals(batch: int, length: int, left_padding: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervals of: prefix, paths A B C (A holding a nested block with paths A1 A2), conclusion.

    Boundaries are fractions of the length so every size gets the same shape of tree.
    """
    lo = torch.zeros(batch, 3, length, dtype=torch.long)
    hi = torch.zeros_like(lo)
    cut = [left_padding + round(f * (length - left_padding)) for f in (0.2, 0.45, 0.7, 0.9)]
    first, second, third, conclusion = cut
    for start, end in ((second, third), (third, conclusion)):  # paths B and C hide the earlier paths
        lo[:, 1, start:end] = first
        hi[:, 1, start:end] = start
    nested_first = first + (second - first) // 3
    nested_second = first + 2 * (second - first) // 3
    lo[:, 2, nested_second:second] = nested_first  # A2 hides A1
    hi[:, 2, nested_second:second] = nested_second
    lo[-1, 0, left_padding:] = 0  # the last row is left padded
    hi[-1, 0, left_padding:] = left_padding
    return lo, hi


CPU_CASES = [  # (batch, heads, kv_heads, length, head_dim, block)
    (1, 2, 2, 37, 16, 16),  # causal-only rows after the structure, ragged last block
    (2, 4, 2, 96, 32, 16),  # grouped-query attention, padding, whole key blocks hidden
]


@pytest.mark.parametrize("batch,heads,kv_heads,length,head_dim,block", CPU_CASES)
def test_kernel_prefill_matches_dense_reference(kernel, device, batch, heads, kv_heads, length, head_dim, block):
    if HAS_CUDA:
        block = max(block, 32)
    torch.manual_seed(0)
    q = torch.randn(batch, heads, length, head_dim, device=device)
    k = torch.randn(batch, kv_heads, length, head_dim, device=device)
    v = torch.randn(batch, kv_heads, length, head_dim, device=device)
    lo, hi = (t.to(device) for t in nested_block_intervals(batch, length, left_padding=5))
    out = kernel.structured_prefill_attention(q, k, v, lo, hi, block_m=block, block_n=block)
    expected = kernel.reference.reference_prefill_attention(q, k, v, lo, hi)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_kernel_prefill_plain_causal_equals_sdpa(kernel, device):
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 48, 16, device=device) for _ in range(3))
    empty = torch.zeros(1, 1, 48, dtype=torch.long, device=device)
    out = kernel.structured_prefill_attention(q, k, v, empty, empty, block_m=16, block_n=16)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("length", [1000, 4096])
def test_kernel_prefill_cuda_half(kernel, dtype, length):
    torch.manual_seed(2)
    q = torch.randn(2, 8, length, 128, device="cuda", dtype=dtype)
    k, v = (torch.randn(2, 2, length, 128, device="cuda", dtype=dtype) for _ in range(2))
    lo, hi = (t.cuda() for t in nested_block_intervals(2, length, left_padding=17))
    out = kernel.structured_prefill_attention(q, k, v, lo, hi)
    expected = kernel.reference.reference_prefill_attention(q, k, v, lo, hi)
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
