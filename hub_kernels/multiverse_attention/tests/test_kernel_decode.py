"""Branch decode attention against the torch reference over [prefix, branch tokens] with a tree mask."""

from __future__ import annotations

import pytest
import torch
from multiverse_attention_testing import requires_cuda

# Live branches 1.1, 1.2 and 2 of: prefix -> {1 -> {1.1, 1.2}, 2}. Node order: 1, 2, 1.1, 1.2.
PARENTS = [-1, -1, 0, 0]
LIVE = [2, 3, 1]


def branch_inputs(kernel, batch, heads, kv_heads, prefix, tokens, head_dim, device, dtype=torch.float32, seed=0):
    """Random q/k/v; branch tokens written by random nodes of the tree, the last three slots unused."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    enter, exit = kernel.tree_intervals(PARENTS)
    owner = torch.randint(0, len(PARENTS), (batch, tokens), generator=generator)
    token_enter, token_exit = enter[owner], exit[owner]
    token_enter[:, -3:] = 0
    token_exit[:, -3:] = 0
    query_node = enter[LIVE][None].expand(batch, -1)
    return dict(
        query=randn(batch, heads, len(LIVE), head_dim),
        prefix_key=randn(batch, kv_heads, prefix, head_dim),
        prefix_value=randn(batch, kv_heads, prefix, head_dim),
        branch_key=randn(batch, kv_heads, tokens, head_dim),
        branch_value=randn(batch, kv_heads, tokens, head_dim),
        token_enter=token_enter.to(device),
        token_exit=token_exit.to(device),
        query_node=query_node.to(device),
    )


def test_kernel_tree_intervals_ancestry(kernel):
    enter, exit = kernel.tree_intervals(PARENTS)
    ancestor_or_self = (enter[:, None] <= enter[None, :]) & (enter[None, :] < exit[:, None])  # [u, n]
    assert ancestor_or_self.int().tolist() == [[1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize("prefix,tokens,with_padding", [(50, 20, True), (130, 70, False)])
def test_kernel_decode_matches_reference(kernel, device, prefix, tokens, with_padding):
    inputs = branch_inputs(kernel, 2, 4, 2, prefix, tokens, 16, device)
    prefix_start = torch.tensor([0, 7], device=device) if with_padding else None
    out = kernel.branch_decode_attention(**inputs, prefix_start=prefix_start, block_n=16, target_programs=16)
    expected = kernel.reference.reference_branch_decode_attention(**inputs, prefix_start=prefix_start)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_decode_cuda_half(kernel, dtype):
    inputs = branch_inputs(kernel, 2, 32, 8, 4096, 700, 128, "cuda", dtype)
    out = kernel.branch_decode_attention(**inputs)
    expected = kernel.reference.reference_branch_decode_attention(**inputs)
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
