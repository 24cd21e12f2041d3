"""The kernel repository loads the way the `kernels` package loads Hub kernels, and its layers kernelize."""

from __future__ import annotations

import json

import torch
from torch import nn


def test_kernel_build_layout_and_metadata(kernel_build):
    variants = sorted(path.name for path in kernel_build.iterdir())
    assert variants == ["torch-cpu", "torch-cuda"]
    metadata = json.loads((kernel_build / "torch-cuda" / "metadata.json").read_text())
    assert metadata["name"] == "multiverse-attention" and metadata["backend"] == {"type": "cuda"}
    assert (kernel_build / "torch-cuda" / "multiverse_attention" / "__init__.py").is_file()


def test_kernel_layer_replaces_forward_through_kernelize(kernel, kernel_build, device):
    from kernels import LocalLayerRepository, Mode, kernelize, use_kernel_forward_from_hub, use_kernel_mapping

    @use_kernel_forward_from_hub("MultiverseAttention")
    class TorchMultiverseAttention(nn.Module):
        def forward(self, query, key, value, forbid_lo, forbid_hi, scale):
            raise AssertionError("kernelize should have replaced this forward")

    model = nn.Sequential(TorchMultiverseAttention())
    repository = LocalLayerRepository(repo_path=kernel_build, layer_name="MultiverseAttention")
    with use_kernel_mapping({"MultiverseAttention": {device: repository}}, inherit_mapping=False):
        kernelize(model, mode=Mode.INFERENCE, device=device)
    q, k, v = (torch.randn(1, 2, 20, 16, device=device) for _ in range(3))
    empty = torch.zeros(1, 1, 20, dtype=torch.long, device=device)
    out = model[0](q, k, v, empty, empty, None)
    torch.testing.assert_close(
        out, kernel.reference.reference_prefill_attention(q, k, v, empty, empty), atol=2e-5, rtol=2e-5
    )
