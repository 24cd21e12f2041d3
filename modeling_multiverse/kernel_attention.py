"""Opt-in Triton attention for MultiverseForCausalLM, loaded with the `kernels` package.

The kernel repository is `hub_kernels/multiverse_attention` (kernel-builder layout). Its structured
prefill kernel reads the O(S) interval arrays of `TokenStructure` instead of an S x S mask.

How to switch it on (inference; training keeps flex_attention with the core's `BlockMask`):
    >>> model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).cuda()  # doctest: +SKIP
    >>> enable_multiverse_kernels(model, repo_path=Path("hub_kernels/multiverse_attention/build"))  # doctest: +SKIP
    True
    >>> # from the Hub:
    >>> enable_multiverse_kernels(model, repo_id="<org>/multiverse-attention", version=1)  # doctest: +SKIP

It attaches a stateless `MultiverseAttention` layer to every attention module, maps that layer to the
kernel repository with `kernels.use_kernel_mapping` and `kernels.kernelize`, and selects the
`multiverse_kernel` attention implementation. Without `kernels` or Triton, or on CPU (unless
`TRITON_INTERPRET=1`), the layer keeps its torch forward (sdpa with the dense mask), so results are
the same everywhere. This file ships as remote code: it must import with only torch and transformers.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from .attention import MULTIVERSE_KERNEL_ATTENTION, dense_mask

try:  # optional: the file ships as Hub remote code, where `kernels` may be absent
    from kernels import (
        LayerRepository,
        LocalLayerRepository,
        Mode,
        kernelize,
        use_kernel_forward_from_hub,
        use_kernel_mapping,
    )
except ImportError:
    kernelize = None

    def use_kernel_forward_from_hub(layer_name: str):
        """Without `kernels`, layers keep their own forward."""
        return lambda cls: cls


@use_kernel_forward_from_hub("MultiverseAttention")
class MultiverseAttention(nn.Module):
    """Multiverse Attention from interval arrays, `[B, H, S, D]` in and out; `kernelize` swaps in Triton.

    This torch forward is the reference and the fallback; its signature is the kernel layer's.

    >>> causal = torch.zeros(1, 1, 4, dtype=torch.long)
    >>> q = torch.randn(1, 2, 4, 16)
    >>> MultiverseAttention()(q, q, q, causal, causal, None).shape
    torch.Size([1, 2, 4, 16])
    """

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        forbid_lo: torch.Tensor,
        forbid_hi: torch.Tensor,
        scale: float | None,
    ) -> torch.Tensor:
        heads_per_kv = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(heads_per_kv, dim=1)
        value = value.repeat_interleave(heads_per_kv, dim=1)
        mask = dense_mask(forbid_lo, forbid_hi, query.dtype)
        return nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


def multiverse_kernel_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    multiverse_intervals: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: the module's `MultiverseAttention` when intervals came with the
    call (a fresh sequence with tags), else sdpa (plain text, cached decoding)."""
    if multiverse_intervals is None or not hasattr(module, "multiverse_attention"):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    forbid_lo, forbid_hi = multiverse_intervals
    out = module.multiverse_attention(query, key, value, forbid_lo, forbid_hi, scaling)
    return out.transpose(1, 2).contiguous(), None


def register_multiverse_kernel_attention() -> None:
    """Make `multiverse_kernel` a transformers attention implementation (masks built as for sdpa)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(MULTIVERSE_KERNEL_ATTENTION, multiverse_kernel_attention)
    AttentionMaskInterface.register(MULTIVERSE_KERNEL_ATTENTION, sdpa_mask)


def triton_usable(device_type: str) -> bool:
    """Triton runs on a GPU, or on CPU tensors in its interpreter (`TRITON_INTERPRET=1`, tests)."""
    if kernelize is None or importlib.util.find_spec("triton") is None:
        return False
    return device_type == "cuda" or (device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def enable_multiverse_kernels(
    model: nn.Module,
    *,
    repo_path: Path | None = None,
    repo_id: str | None = None,
    version: int | None = None,
    trust_remote_code: bool = False,
) -> bool:
    """Route Multiverse Attention through the kernel repository; returns whether Triton is in use.

    Give `repo_path` (a local kernel repo or its `build/`) or `repo_id` and `version` (the Hub).
    The model's attention becomes `multiverse_kernel` either way, falling back to torch when the
    kernel cannot run here.
    """
    if (repo_path is None) == (repo_id is None):
        raise ValueError("give exactly one of repo_path (local kernel repo) and repo_id (Hub)")
    register_multiverse_kernel_attention()
    for module in model.modules():
        if hasattr(module, "q_proj") and hasattr(module, "layer_idx"):  # Llama/Qwen2 attention
            module.multiverse_attention = MultiverseAttention()
    model.set_attn_implementation(MULTIVERSE_KERNEL_ATTENTION)
    device_type = next(model.parameters()).device.type
    if not triton_usable(device_type):
        return False
    if repo_path is not None:
        repository = LocalLayerRepository(repo_path=Path(repo_path), layer_name="MultiverseAttention")
    else:
        repository = LayerRepository(
            repo_id, layer_name="MultiverseAttention", version=version, trust_remote_code=trust_remote_code
        )
    with use_kernel_mapping({"MultiverseAttention": {device_type: repository}}, inherit_mapping=False):
        kernelize(model, mode=Mode.INFERENCE, device=device_type)
    return True


__all__ = [
    "MULTIVERSE_KERNEL_ATTENTION",
    "MultiverseAttention",
    "enable_multiverse_kernels",
    "register_multiverse_kernel_attention",
]
