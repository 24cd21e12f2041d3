"""`merge="reprefill"`: the engine's conclusion reads its paths as a stock engine (vLLM, SGLang unchanged) would.

A stock engine decodes each path as its own request sharing the prefix, then re-prefills the concatenated
paths causally before the conclusion. Checked here with forced skeletons on tiny random models: the same
canonical text structure, the re-fed tokens counted as prefill (not generated), the conclusion equal to a
plain causal forward over the canonical text (what a stock engine computes) and different from the exact
merge's, the paths unchanged.
"""

from __future__ import annotations

import math

import pytest
import test_engine as engine_tests
import torch
from engine_skeleton import FREE, skeleton_template
from tiny import tiny_model

from modeling_multiverse import parse_ids, tag_ids_from_tokenizer
from modeling_multiverse.structure import CONCLUSION, TAGS


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request):
    return tiny_model(request.param, layers=2, seed=1)


def both_modes(model, tokenizer, skeleton: list, **kwargs):
    """(template, encoded prompt, {mode: (output, response ids)}) of one prompt decoded in both merge modes."""
    template = skeleton_template(tokenizer, skeleton)
    runs = {}
    for mode in ("exact", "reprefill"):
        enc, out, responses = engine_tests.run(
            model, tokenizer, ["What is 2+2?"], template, merge=mode, output_scores=True, **kwargs
        )
        runs[mode] = (out, responses[0])
    return template, enc, runs


def causal_logits(model, sequence: torch.Tensor) -> torch.Tensor:
    """Logits of a plain causal forward, positions 0..N-1, no Multiverse mask: what a stock engine computes."""
    with torch.no_grad():
        hidden = model.model(input_ids=sequence).last_hidden_state
        return model.lm_head(hidden)


@pytest.mark.parametrize("name", ["flat2_uneven", "flat8"])
def test_reprefill_conclusion_is_a_stock_engines_and_differs_from_exact(tiny, name):
    model, tokenizer = tiny
    template, enc, runs = both_modes(model, tokenizer, engine_tests.SKELETONS[name])
    (exact, exact_ids), (refill, refill_ids) = runs["exact"], runs["reprefill"]
    tag_ids = tag_ids_from_tokenizer(tokenizer)
    for ids in (exact_ids, refill_ids):  # the same canonical structure: the skeleton followed, the text parses
        assert len(ids) == len(template.ids) + 1 and ids[-1] == tokenizer.eos_token_id
        assert all(t == FREE or t == r for t, r in zip(template.ids, ids))
        parse_ids(ids, tag_ids, decode=tokenizer.decode, require_think=True)
    conclusion = refill_ids.index(tag_ids[TAGS[CONCLUSION]])
    assert exact_ids[:conclusion] == refill_ids[:conclusion], "the paths are decoded the same way in both modes"
    # the re-fed paths are prefill: not generated, not decode steps; the cache holds them once more
    paths = conclusion - len(tokenizer("\n", add_special_tokens=False)["input_ids"]) - template.blocks[0][0]
    assert exact.reprefill_tokens == [0] and refill.reprefill_tokens == [paths] and paths > 0
    assert refill.generated_tokens == exact.generated_tokens and refill.decode_steps == exact.decode_steps
    assert refill.cache_tokens == exact.cache_tokens + paths
    assert [b["branch_lengths"] for b in refill.blocks[0]] == [b["branch_lengths"] for b in exact.blocks[0]]
    # a stock engine: the paths under Multiverse attention (each sees only the trunk), all after them causal
    start = enc["input_ids"].shape[1]
    stock = causal_logits(model, refill.sequences)[0]
    multiverse = model(refill.sequences).logits[0]
    banned = sorted(tag_ids.values()) + [tokenizer.eos_token_id]
    free = [j for j, t in enumerate(template.ids) if t == FREE]
    after = [j for j in free if j > conclusion]
    assert len(after) >= 5
    for j in free:
        scores = (stock if j > conclusion else multiverse)[start + j - 1].clone()
        scores[banned] = -float("inf")
        assert int(scores.argmax()) == refill_ids[j], f"token {j} is not what a stock engine would choose"
    # the conclusion reads something else than under exact merge; the paths' scores are the same
    exact_lp, refill_lp = exact.token_logprobs[0], refill.token_logprobs[0]
    before = [j for j in free if j < conclusion]
    assert torch.allclose(exact_lp[before], refill_lp[before], atol=1e-5)
    first = after[0]  # the first free conclusion token: both modes have the same text before it
    assert abs(float(exact_lp[first]) - float(refill_lp[first])) > 1e-4
    assert not math.isnan(float(refill_lp[first]))


def test_reprefill_nested_and_repeated_blocks_keep_the_structure(tiny):
    model, tokenizer = tiny
    tag_ids = tag_ids_from_tokenizer(tokenizer)
    for name in ("nested", "two_blocks"):
        template, _, runs = both_modes(model, tokenizer, engine_tests.SKELETONS[name])
        (exact, exact_ids), (refill, refill_ids) = runs["exact"], runs["reprefill"]
        assert len(refill_ids) == len(exact_ids) == len(template.ids) + 1
        assert all(t == FREE or t == r for t, r in zip(template.ids, refill_ids))
        parse_ids(refill_ids, tag_ids, decode=tokenizer.decode, require_think=True)
        assert refill.generated_tokens == exact.generated_tokens and refill.parallelism == exact.parallelism
        shape = [[(b["labels"], b["depth"]) for b in out.blocks[0]] for out in (exact, refill)]
        assert shape[0] == shape[1]
        # every merge re-feeds its block's paths (a nested block's once more inside its outer path's)
        re_fed = sum(sum(b["branch_lengths"]) for b in refill.blocks[0])
        assert refill.reprefill_tokens[0] == re_fed and exact.reprefill_tokens == [0]
        exact_lp, refill_lp = exact.token_logprobs[0], refill.token_logprobs[0]
        scored = ~exact_lp.isnan()
        assert torch.equal(scored, ~refill_lp.isnan())
        assert (exact_lp[scored] - refill_lp[scored]).abs().max() > 1e-4, "the conclusions read the same thing"


def test_reprefill_under_a_spent_budget_closes_like_exact(tiny):
    model, tokenizer = tiny
    skeleton = engine_tests.SKELETONS["flat2_uneven"]
    _, _, runs = both_modes(model, tokenizer, skeleton, max_new_tokens=30)  # spent inside the paths
    (exact, exact_ids), (refill, refill_ids) = runs["exact"], runs["reprefill"]
    assert refill.generated_tokens == exact.generated_tokens and exact.generated_tokens[0] <= 30
    assert refill.closing_tokens[0] > 0
    assert refill.closing_tokens == exact.closing_tokens and refill_ids == exact_ids
    assert refill.reprefill_tokens == [0], "a merge without forward passes re-feeds nothing"
    parse_ids(refill_ids, tag_ids_from_tokenizer(tokenizer), partial=True)


def test_merge_option_is_read_and_checked(tiny, monkeypatch):
    from modeling_multiverse.generation import resolve_engine_options

    model, tokenizer = tiny
    assert resolve_engine_options(model)["merge"] == "exact"
    monkeypatch.setattr(model.generation_config, "merge", "reprefill", raising=False)
    assert resolve_engine_options(model)["merge"] == "reprefill"
    template = skeleton_template(tokenizer, engine_tests.SKELETONS["flat2_uneven"])
    _, out, _ = engine_tests.run(model, tokenizer, ["hi"], template)
    assert out.reprefill_tokens[0] > 0, "the model's generation_config chose reprefill"
    with pytest.raises(ValueError, match="merge must be one of exact, reprefill"):
        engine_tests.run(model, tokenizer, ["hi"], template, merge="stock")
