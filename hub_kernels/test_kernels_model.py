"""MultiverseForCausalLM with the opt-in kernel path (`modeling_multiverse.kernel_attention`).

The kernel runs in Triton's interpreter on CPU here (hub_kernels/conftest.py); the logits must equal the default
sdpa path's, with and without `kernels`/Triton (the torch fallback layer) and with left padding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import example_response, tiny_model

from modeling_multiverse.kernel_attention import MULTIVERSE_KERNEL_ATTENTION, enable_multiverse_kernels


@pytest.fixture(scope="module")
def kernel_build(tmp_path_factory):
    from hub_kernels.multiverse_attention.build_noarch import build_noarch

    return build_noarch(tmp_path_factory.mktemp("multiverse-attention"))


def padded_batch(tokenizer):
    """The example response and a shorter one, left padded."""
    texts = [example_response(), example_response().split("<Parallel>")[0] + "plain text, no block"]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True)


def test_kernels_model_logits_match_sdpa(kernel_build):
    pytest.importorskip("triton")
    pytest.importorskip("kernels")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = tiny_model("qwen2")
    model.to(device)
    batch = padded_batch(tokenizer).to(device)
    with torch.no_grad():
        expected = model(**batch).logits
        kernel_model = copy.deepcopy(model)
        assert enable_multiverse_kernels(kernel_model, repo_path=kernel_build)
        assert kernel_model.config._attn_implementation == MULTIVERSE_KERNEL_ATTENTION
        logits = kernel_model(**batch).logits
    real = batch["attention_mask"].bool()
    tolerance = 1e-4 if device == "cpu" else 1e-3
    torch.testing.assert_close(logits[real], expected[real], atol=tolerance, rtol=tolerance)


def test_kernels_model_torch_fallback_matches_sdpa(kernel_build, monkeypatch):
    monkeypatch.setattr("modeling_multiverse.kernel_attention.triton_usable", lambda device_type: False)
    model, tokenizer = tiny_model("llama")
    ids = tokenizer([example_response()], return_tensors="pt")
    with torch.no_grad():
        expected = model(**ids).logits
        assert not enable_multiverse_kernels(model, repo_path=kernel_build)
        logits = model(**ids).logits
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
