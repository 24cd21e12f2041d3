"""Branch decode attention: one new token per live branch, all branches sharing one prompt prefix.

Cascade (shared-prefix) attention. The keys and values fall in two parts:
- the shared prefix `[B, Hkv, P, D]`, which every branch sees; it is read ONCE per key/value head for
  all branches and all query heads of the group (a `[G * N, D] x [D, block]` product, G = H / Hkv),
- the branch tokens `[B, Hkv, T, D]`, in any order (the engine's interleaved physical order is fine),
  each seen only by the branches whose tree path runs through the branch that wrote it.
Both parts are split into chunks; each chunk gives a partial output and its log-sum-exp, and
`_combine_partials` merges them, so the result is exactly softmax attention over the visible keys.

Tree visibility in O(T + N): number the branch tree by a depth-first walk (`tree_intervals`). A node
`u` is an ancestor-or-self of `n` iff `enter[u] <= enter[n] < exit[u]`. A branch token carries its
writer's `[enter, exit)` (`token_enter`, `token_exit`), a query its branch's `enter` (`query_node`):
query n sees token t iff `token_enter[t] <= query_node[n] < token_exit[t]`. Unused cache slots get
`[0, 0)` and are seen by nobody. Nested branches see their ancestors' tokens, not their siblings'.

Example:
    >>> enter, exit = tree_intervals([-1, -1, 0, 0])  # branches 0, 1; 0 forked into 2 and 3
    >>> enter.tolist(), exit.tolist()
    ([0, 3, 1, 2], [3, 4, 2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl


def tree_intervals(parents: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth-first `[enter, exit)` numbers of a forest given by parent indices (-1 for a root).

    Children are visited in index order. `u` is an ancestor-or-self of `n` iff
    `enter[u] <= enter[n] < exit[u]`.

    >>> tree_intervals([-1, 0])
    (tensor([0, 1]), tensor([2, 2]))
    """
    children: list[list[int]] = [[] for _ in parents]
    roots = []
    for node, parent in enumerate(parents):
        (roots if parent < 0 else children[parent]).append(node)
    enter = [0] * len(parents)
    exit = [0] * len(parents)
    counter = 0
    stack = [(node, False) for node in reversed(roots)]
    while stack:
        node, done = stack.pop()
        if done:
            exit[node] = counter
            continue
        enter[node] = counter
        counter += 1
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(children[node]))
    return torch.tensor(enter, dtype=torch.long), torch.tensor(exit, dtype=torch.long)


@triton.jit
def _partial_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    part_out_ptr,
    part_lse_ptr,
    key_start_ptr,
    token_enter_ptr,
    token_exit_ptr,
    query_node_ptr,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_pm,
    stride_lb,
    stride_lh,
    stride_ls,
    stride_tb,
    stride_nb,
    num_kv_heads,
    heads_per_kv,
    num_branches,
    num_keys,
    keys_per_split,
    first_split,
    HAS_KEY_START: tl.constexpr,
    HAS_TREE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    batch_head = tl.program_id(0)
    split = tl.program_id(1)
    b = batch_head // num_kv_heads
    kv_h = batch_head % num_kv_heads

    # Row r of the block is query head kv_h * heads_per_kv + r // num_branches, branch r % num_branches.
    rows = tl.arange(0, BLOCK_M)
    num_rows = heads_per_kv * num_branches
    row_valid = rows < num_rows
    head = kv_h * heads_per_kv + rows // num_branches
    branch = rows % num_branches
    dims = tl.arange(0, HEAD_DIM)
    cols = tl.arange(0, BLOCK_N)
    q = tl.load(
        q_ptr + b * stride_qb + head[:, None] * stride_qh + branch[:, None] * stride_qn + dims[None, :],
        mask=row_valid[:, None],
        other=0.0,
    )
    if HAS_TREE:
        query_node = tl.load(query_node_ptr + b * stride_nb + branch, mask=row_valid, other=-1)
    key_start = 0
    if HAS_KEY_START:
        key_start = tl.load(key_start_ptr + b)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    k_base = k_ptr + b * stride_kb + kv_h * stride_kh
    v_base = v_ptr + b * stride_vb + kv_h * stride_vh
    split_start = tl.maximum(split * keys_per_split, key_start)
    split_end = tl.minimum((split + 1) * keys_per_split, num_keys)
    for start_n in range(split_start, split_end, BLOCK_N):
        keys = start_n + cols
        key_valid = keys < split_end
        k = tl.load(k_base + keys[:, None] * stride_ks + dims[None, :], mask=key_valid[:, None], other=0.0)
        v = tl.load(v_base + keys[:, None] * stride_vs + dims[None, :], mask=key_valid[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        allowed = key_valid[None, :] & row_valid[:, None]
        if HAS_TREE:
            enter = tl.load(token_enter_ptr + b * stride_tb + keys, mask=key_valid, other=0)
            exit = tl.load(token_exit_ptr + b * stride_tb + keys, mask=key_valid, other=0)
            allowed = allowed & (enter[None, :] <= query_node[:, None]) & (query_node[:, None] < exit[None, :])
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        # A row that saw nothing yet keeps m = -inf: shift by 0 there so exp2 gives 0, not NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - shift)
        p = tl.exp2(scores - shift[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    # log2-domain log-sum-exp of the scaled scores; -inf for a chunk with no visible key.
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
    slot = first_split + split
    tl.store(
        part_out_ptr + b * stride_pb + kv_h * stride_ph + slot * stride_ps + rows[:, None] * stride_pm + dims[None, :],
        out,
        mask=row_valid[:, None],
    )
    tl.store(part_lse_ptr + b * stride_lb + kv_h * stride_lh + slot * stride_ls + rows, lse, mask=row_valid)


@triton.jit
def _combine_partials_kernel(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_pm,
    stride_lb,
    stride_lh,
    stride_ls,
    stride_ob,
    stride_oh,
    stride_on,
    num_kv_heads,
    heads_per_kv,
    num_branches,
    num_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    batch_head = tl.program_id(0)
    row = tl.program_id(1)
    b = batch_head // num_kv_heads
    kv_h = batch_head % num_kv_heads
    splits = tl.arange(0, BLOCK_S)
    dims = tl.arange(0, HEAD_DIM)
    split_valid = splits < num_splits
    lse = tl.load(
        part_lse_ptr + b * stride_lb + kv_h * stride_lh + splits * stride_ls + row,
        mask=split_valid,
        other=float("-inf"),
    )
    top = tl.max(lse, axis=0)
    weight = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top))
    partial = tl.load(
        part_out_ptr + b * stride_pb + kv_h * stride_ph + splits[:, None] * stride_ps + row * stride_pm + dims[None, :],
        mask=split_valid[:, None],
        other=0.0,
    )
    total = tl.sum(weight, axis=0)
    out = tl.sum(partial * weight[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    head = kv_h * heads_per_kv + row // num_branches
    branch = row % num_branches
    tl.store(out_ptr + b * stride_ob + head * stride_oh + branch * stride_on + dims, out.to(out_ptr.dtype.element_ty))


def _splits_for(num_keys: int, programs: int, block_n: int, target_programs: int) -> tuple[int, int]:
    """(number of chunks, keys per chunk): enough chunks to fill the GPU, each a whole number of blocks."""
    if num_keys == 0:
        return 0, block_n
    wanted = max(1, min(triton.cdiv(num_keys, block_n), triton.cdiv(target_programs, programs)))
    keys_per_split = triton.cdiv(triton.cdiv(num_keys, wanted), block_n) * block_n
    return triton.cdiv(num_keys, keys_per_split), keys_per_split


def branch_decode_attention(
    query: torch.Tensor,
    prefix_key: torch.Tensor,
    prefix_value: torch.Tensor,
    branch_key: torch.Tensor,
    branch_value: torch.Tensor,
    token_enter: torch.Tensor,
    token_exit: torch.Tensor,
    query_node: torch.Tensor,
    scale: float | None = None,
    *,
    prefix_start: torch.Tensor | None = None,
    block_n: int = 64,
    target_programs: int = 264,
) -> torch.Tensor:
    """Attention of one new token per branch over the shared prefix and the visible branch tokens.

    Args:
        query: `[B, H, N, D]`, the newest token of each of N live branches; `D` a power of two >= 16.
        prefix_key, prefix_value: `[B, Hkv, P, D]`, the prompt (and any sequential text) all branches share.
        branch_key, branch_value: `[B, Hkv, T, D]`, every branch token so far, the new ones included.
        token_enter, token_exit: `[B, T]` the writer's depth-first interval (`tree_intervals`); `[0, 0)` unused.
        query_node: `[B, N]` the `enter` number of each query's branch.
        scale: softmax scale, `1/sqrt(D)` by default.
        prefix_start: `[B]` first real prefix key per row (left padding before it), or None.
        target_programs: chunks are added until about this many programs run (~2 per SM on an H100).

    Example:
        >>> enter, exit = tree_intervals([-1, -1])  # doctest: +SKIP
        >>> out = branch_decode_attention(  # doctest: +SKIP
        ...     q, pk, pv, bk, bv, enter[owner][None], exit[owner][None], enter[None]
        ... )
    """
    batch, num_heads, num_branches, head_dim = query.shape
    num_kv_heads = prefix_key.shape[1]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} key/value heads")
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
    query, prefix_key, prefix_value, branch_key, branch_value = (
        t if t.stride(-1) == 1 else t.contiguous() for t in (query, prefix_key, prefix_value, branch_key, branch_value)
    )
    heads_per_kv = num_heads // num_kv_heads
    num_rows = heads_per_kv * num_branches
    block_m = max(16, triton.next_power_of_2(num_rows))
    programs = batch * num_kv_heads
    prefix_splits, prefix_chunk = _splits_for(prefix_key.shape[2], programs, block_n, target_programs)
    branch_splits, branch_chunk = _splits_for(branch_key.shape[2], programs, block_n, target_programs // 4)
    num_splits = prefix_splits + branch_splits
    device = query.device
    part_out = torch.empty(batch, num_kv_heads, num_splits, num_rows, head_dim, device=device, dtype=torch.float32)
    part_lse = torch.empty(batch, num_kv_heads, num_splits, num_rows, device=device, dtype=torch.float32)
    token_enter = token_enter.to(torch.int32).contiguous()
    token_exit = token_exit.to(torch.int32).contiguous()
    query_node = query_node.to(torch.int32).contiguous()
    key_start = None if prefix_start is None else prefix_start.to(torch.int32).contiguous()
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    common = dict(HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n)
    precision = "ieee" if query.dtype == torch.float32 else None
    launches = (
        (prefix_key, prefix_value, prefix_splits, prefix_chunk, 0, key_start is not None, False),
        (branch_key, branch_value, branch_splits, branch_chunk, prefix_splits, False, True),
    )
    for key, value, splits, chunk, first_split, has_key_start, has_tree in launches:
        if splits == 0:
            continue
        _partial_attention_kernel[(programs, splits)](
            query,
            key,
            value,
            part_out,
            part_lse,
            key_start if has_key_start else query_node,
            token_enter,
            token_exit,
            query_node,
            scale * math.log2(math.e),
            *query.stride()[:3],
            *key.stride()[:3],
            *value.stride()[:3],
            *part_out.stride()[:4],
            *part_lse.stride()[:3],
            token_enter.stride(0),
            query_node.stride(0),
            num_kv_heads,
            heads_per_kv,
            num_branches,
            key.shape[2],
            chunk,
            first_split,
            HAS_KEY_START=has_key_start,
            HAS_TREE=has_tree,
            DOT_PRECISION=precision,
            **common,
        )
    out = torch.empty_like(query)
    _combine_partials_kernel[(programs, num_rows)](
        part_out,
        part_lse,
        out,
        *part_out.stride()[:4],
        *part_lse.stride()[:3],
        *out.stride()[:3],
        num_kv_heads,
        heads_per_kv,
        num_branches,
        num_splits,
        HEAD_DIM=head_dim,
        BLOCK_S=triton.next_power_of_2(max(num_splits, 1)),
    )
    return out
