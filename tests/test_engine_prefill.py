"""Prompts that already hold blocks (a response being continued) are prefilled under SPEC.md §4 and 5 (issue 14).

Continuing a response from a cut after its first closed block must give the rest of that response,
token for token and log-probability for log-probability: the prefill reads the cut exactly as the
first run's cache held it. A causal prefill (positions 0..P-1, paths seeing each other) does not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_skeleton import SkeletonProcessor, skeleton_template
from test_engine import SKELETONS, run
from tiny import tiny_model
from transformers import LogitsProcessorList

import modeling_multiverse.engine_state as engine_state
from modeling_multiverse import StructureError, parse_ids, tag_ids_from_tokenizer
from modeling_multiverse.kernel_attention import enable_multiverse_kernels

KERNEL_REPO = Path(__file__).resolve().parents[1] / "hub_kernels" / "multiverse_attention"


def cut_after_first_block(model, tokenizer, skeleton: str):
    """One run: (template, prompt + response cut 2 tokens after its first top-level block, the rest, its logprobs)."""
    template = skeleton_template(tokenizer, SKELETONS[skeleton])
    enc, out, responses = run(model, tokenizer, ["What is 2+2?"], template, output_scores=True)
    response = responses[0]
    cut = parse_ids(response, tag_ids_from_tokenizer(tokenizer), partial=True).blocks[0].close + 2
    prompt = enc["input_ids"][0].tolist() + response[:cut]
    return template, prompt, response[cut:], out.token_logprobs[0, cut : len(response)]


def continue_(model, tokenizer, template, prompts: list[list[int]]):
    """Greedy continuation of left-padded prompts under the template; (responses, token_logprobs)."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_processor=LogitsProcessorList([SkeletonProcessor(template, tokenizer)]),
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
        tokenizer=tokenizer,
        max_new_tokens=600,
    )
    responses = [
        out.sequences[row, width : width + n + c].tolist()
        for row, (n, c) in enumerate(zip(out.generated_tokens, out.closing_tokens))
    ]
    return responses, out.token_logprobs, out


def free_gap(expected: torch.Tensor, got: torch.Tensor) -> float:
    """Largest log-probability difference over the freely chosen tokens (forced ones carry 0)."""
    free = torch.isfinite(expected) & (expected != 0)
    assert int(free.sum()) >= 4
    return float((expected - got[: len(expected)])[free].abs().max())


@pytest.mark.parametrize("family,skeleton", [("llama", "two_blocks"), ("qwen2", "nested")])
def test_continuing_after_a_block_gives_the_rest_of_the_run(family, skeleton):
    model, tokenizer = tiny_model(family, layers=2, seed=1)
    template, prompt, rest, logprobs = cut_after_first_block(model, tokenizer, skeleton)
    responses, token_logprobs, out = continue_(model, tokenizer, template, [prompt])
    assert responses[0] == rest
    assert free_gap(logprobs, token_logprobs[0]) < 1e-5
    # statistics describe the continuation only; the prompt's block is not one of its blocks
    assert all(block["start"] >= 0 for block in out.blocks[0])


def test_a_batch_mixing_structured_and_plain_prompts():
    model, tokenizer = tiny_model("qwen2", layers=2, seed=1)
    template, prompt, rest, logprobs = cut_after_first_block(model, tokenizer, "two_blocks")
    _, plain, _, _ = cut_after_first_block(model, tokenizer, "flat2_uneven")
    # cut before any block
    plain = plain[: parse_ids(plain, tag_ids_from_tokenizer(tokenizer), partial=True).blocks[0].open]
    alone, _, _ = continue_(model, tokenizer, template, [plain])
    responses, token_logprobs, _ = continue_(model, tokenizer, template, [plain, prompt])
    assert responses == [alone[0], rest]
    assert free_gap(logprobs, token_logprobs[1]) < 1e-5


def test_the_kernel_path_gets_the_intervals(monkeypatch):
    """With the opt-in kernel implementation the prefill passes `multiverse_intervals` (torch fallback on CPU)."""
    model, tokenizer = tiny_model("llama", layers=2, seed=1)
    template, prompt, rest, logprobs = cut_after_first_block(model, tokenizer, "two_blocks")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the layer's torch forward, whatever Triton is here
    assert not enable_multiverse_kernels(model, repo_path=KERNEL_REPO)
    seen = []
    attention = model.model.layers[0].self_attn.multiverse_attention
    original = attention.forward
    monkeypatch.setattr(attention, "forward", lambda *a, **k: seen.append(a[0].shape) or original(*a, **k))
    responses, token_logprobs, _ = continue_(model, tokenizer, template, [prompt])
    assert responses[0] == rest and free_gap(logprobs, token_logprobs[0]) < 1e-5
    assert len(seen) == 1 and seen[0][2] == len(prompt), "the kernel layer runs once: the prefill of the prompt"


def test_a_causal_prefill_would_be_caught(monkeypatch):
    """The check above is sharp: reading the prompt causally, as the engine used to, moves the log-probabilities."""
    model, tokenizer = tiny_model("llama", layers=2, seed=1)
    template, prompt, _, logprobs = cut_after_first_block(model, tokenizer, "two_blocks")
    start = engine_state._Sequence.__init__

    def causal(self, *args):
        start(self, *args)
        self.prompt_structure = None
        self.root.pending_positions = None

    monkeypatch.setattr(engine_state._Sequence, "__init__", causal)
    _, token_logprobs, _ = continue_(model, tokenizer, template, [prompt])
    assert free_gap(logprobs, token_logprobs[0]) > 1e-4


def test_a_prompt_whose_tags_break_the_grammar_is_refused_with_its_row():
    model, tokenizer = tiny_model("llama", layers=2, seed=1)
    tags = tag_ids_from_tokenizer(tokenizer)
    text = tokenizer("hello there", add_special_tokens=False)["input_ids"]
    prompts = [text, text + [tags["<Parallel>"], tags["<Goal>"], tags["</Goal>"], tags["</Parallel>"]] + text]
    with pytest.raises(StructureError, match=r"prompt 1: at token \d+: found </Goal>, expected at least one <Outline>"):
        continue_(model, tokenizer, skeleton_template(tokenizer, [2]), prompts)
