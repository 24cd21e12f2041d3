"""Structured prefill attention: Multiverse Attention (SPEC.md §4) from O(S) per-token interval arrays.

The mask is never materialised. Query t may attend to key k iff `k <= t` and, for every depth row d,
`k` lies outside `[forbid_lo[b, d, t], forbid_hi[b, d, t])` (the arrays of the core's `TokenStructure`
/ `attention.stack`). The kernel is a flash-attention forward (online softmax, one program per query
block and head) that loads a query block's intervals once and, per key block:
- skips it when one depth row forbids the whole block to every query of the block (sibling paths),
- skips the per-element mask when causality and every interval leave the whole block visible.

Example:
    >>> out = structured_prefill_attention(q, k, v, forbid_lo, forbid_hi)  # doctest: +SKIP
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _structured_prefill_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    lo_ptr,
    hi_ptr,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_ob,
    stride_oh,
    stride_os,
    stride_ib,
    stride_id,
    num_heads,
    heads_per_kv,
    seq_len,
    DEPTH: tl.constexpr,
    DEPTH_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    block_m = tl.program_id(0)
    batch_head = tl.program_id(1)
    b = batch_head // num_heads
    h = batch_head % num_heads
    kv_h = h // heads_per_kv

    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    depths = tl.arange(0, DEPTH_PAD)
    row_valid = rows < seq_len

    q = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + dims[None, :],
        mask=row_valid[:, None],
        other=0.0,
    )
    # The query block's intervals, [DEPTH_PAD, BLOCK_M]; padding depth rows and rows past the end are empty.
    interval_valid = (depths[:, None] < DEPTH) & row_valid[None, :]
    interval_offsets = b * stride_ib + depths[:, None] * stride_id + rows[None, :]
    lo = tl.load(lo_ptr + interval_offsets, mask=interval_valid, other=0)
    hi = tl.load(hi_ptr + interval_offsets, mask=interval_valid, other=0)
    # Per depth row, the part of the keys that row forbids to every query of the block.
    common_lo = tl.max(tl.where(row_valid[None, :], lo, 0), axis=1)
    common_hi = tl.min(tl.where(row_valid[None, :], hi, seq_len), axis=1)
    nonempty = lo < hi

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    k_base = k_ptr + b * stride_kb + kv_h * stride_kh
    v_base = v_ptr + b * stride_vb + kv_h * stride_vh
    first_row = block_m * BLOCK_M
    causal_end = tl.minimum(first_row + BLOCK_M, seq_len)
    for start_n in range(0, causal_end, BLOCK_N):
        end_n = start_n + BLOCK_N
        hidden = tl.max(((common_lo <= start_n) & (common_hi >= end_n)).to(tl.int32), axis=0)
        if hidden == 0:
            keys = start_n + cols
            key_valid = keys < seq_len
            k = tl.load(k_base + keys[:, None] * stride_ks + dims[None, :], mask=key_valid[:, None], other=0.0)
            v = tl.load(v_base + keys[:, None] * stride_vs + dims[None, :], mask=key_valid[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
            touched = tl.max(tl.max((nonempty & (lo < end_n) & (hi > start_n)).to(tl.int32), axis=1), axis=0)
            if (end_n > first_row + 1) | (end_n > seq_len) | (touched != 0):
                allowed = (keys[None, :] <= rows[:, None]) & key_valid[None, :]
                # One depth row at a time keeps the mask [BLOCK_M, BLOCK_N] (a 3D one would spill registers).
                for d in tl.static_range(DEPTH):
                    lo_d = tl.load(lo_ptr + b * stride_ib + d * stride_id + rows, mask=row_valid, other=0)
                    hi_d = tl.load(hi_ptr + b * stride_ib + d * stride_id + rows, mask=row_valid, other=0)
                    allowed = allowed & ((keys[None, :] < lo_d[:, None]) | (keys[None, :] >= hi_d[:, None]))
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
    tl.store(
        out_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_valid[:, None],
    )


# Tried on the first call per (length, head size, depth) on a GPU; tests pin their own small blocks.
_AUTOTUNED_KERNEL = triton.autotune(
    configs=[
        triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
        for block_m, block_n, warps, stages in (
            (128, 64, 8, 3),
            (128, 128, 8, 3),
            (128, 64, 4, 3),
            (64, 64, 4, 3),
            (128, 32, 4, 4),
            (64, 128, 4, 2),
        )
    ],
    key=["seq_len", "HEAD_DIM", "DEPTH"],
)(_structured_prefill_kernel)


def structured_prefill_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    forbid_lo: torch.Tensor,
    forbid_hi: torch.Tensor,
    scale: float | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Multiverse Attention forward, `[B, H, S, D]` out.

    Args:
        query: `[B, H, S, D]`; `D` a power of two >= 16.
        key, value: `[B, Hkv, S, D]` with `H % Hkv == 0` (grouped-query attention).
        forbid_lo, forbid_hi: `[B, depth, S]` integer intervals (`attention.stack`'s output).
        scale: softmax scale, `1/sqrt(D)` by default.
        block_m, block_n: query and key block sizes; autotuned on a GPU when not given.

    Example:
        >>> q = torch.randn(1, 4, 128, 64, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
        >>> kv = torch.randn(1, 2, 128, 64, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
        >>> causal = torch.zeros(1, 1, 128, dtype=torch.int32, device="cuda")  # doctest: +SKIP
        >>> structured_prefill_attention(q, kv, kv, causal, causal).shape  # doctest: +SKIP
        torch.Size([1, 4, 128, 64])
    """
    batch, num_heads, seq_len, head_dim = query.shape
    num_kv_heads = key.shape[1]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} key/value heads")
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    forbid_lo = forbid_lo.to(torch.int32).contiguous()
    forbid_hi = forbid_hi.to(torch.int32).contiguous()
    depth = forbid_lo.shape[1]
    out = torch.empty_like(query)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    pinned = block_m is not None or block_n is not None or not query.is_cuda
    if pinned:
        kernel = _structured_prefill_kernel
        blocks = {"BLOCK_M": block_m or 64, "BLOCK_N": block_n or 64}
    else:
        kernel = _AUTOTUNED_KERNEL
        blocks = {}

    def grid(meta):
        return (triton.cdiv(seq_len, meta["BLOCK_M"]), batch * num_heads)

    kernel[grid](
        query,
        key,
        value,
        out,
        forbid_lo,
        forbid_hi,
        scale * math.log2(math.e),
        *query.stride()[:3],
        *key.stride()[:3],
        *value.stride()[:3],
        *out.stride()[:3],
        *forbid_lo.stride()[:2],
        num_heads,
        num_heads // num_kv_heads,
        seq_len,
        DEPTH=depth,
        DEPTH_PAD=triton.next_power_of_2(depth),
        HEAD_DIM=head_dim,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else None,
        **blocks,
    )
    return out
