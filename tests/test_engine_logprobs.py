"""`generate(..., output_scores=True)` returns `token_logprobs`: the log-probability of every sampled token
under the distribution the engine drew it from, in canonical order. For GRPO these must equal what ONE
training forward over the canonical output gives (SPEC.md §4 mask, SPEC.md §5 positions), within fp32 tolerance."""

from __future__ import annotations

import pytest
import torch
from engine_skeleton import FREE, SkeletonProcessor, block, skeleton_template
from tiny import tiny_model
from transformers import LogitsProcessorList

from modeling_multiverse import TAGS, tag_ids_from_tokenizer
from modeling_multiverse.generation import ENGINE_DEFAULTS
from modeling_multiverse.structure import tag_constraints

TOLERANCE = 1e-4  # fp32: an incremental KV-cache decode vs one full forward


@pytest.fixture(scope="module")
def tag_happy():
    """A tiny random model whose head favours the tags, so that sampling forks (and nests) by itself."""
    model, tokenizer = tiny_model("qwen2", seed=1)
    tag_ids = tag_ids_from_tokenizer(tokenizer)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[list(tag_ids.values())] = 3.0
    model.lm_head = head
    return model, tokenizer


def encode(tokenizer, texts):
    tokenizer.padding_side = "left"
    chats = [[{"role": "user", "content": t}] for t in texts]
    return tokenizer.apply_chat_template(
        chats, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
    )


def reference_logprobs(
    model, tokenizer, prompt: list[int], response: list[int], max_branches: int = ENGINE_DEFAULTS["max_branches"]
) -> torch.Tensor:
    """One forward over prompt + canonical response; log-softmax under the grammar's tag constraints."""
    full = torch.tensor(prompt + response)
    with torch.no_grad():
        logits = model(full[None]).logits[0, len(prompt) - 1 : -1].float()
    tag_ids = tag_ids_from_tokenizer(tokenizer)
    columns = torch.tensor([tag_ids[t] for t in TAGS])
    allowed = tag_constraints(full.tolist(), tag_ids, len(prompt), max_branches)
    logits[:, columns] = logits[:, columns].masked_fill(~allowed, float("-inf"))
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None]).squeeze(1)


def rows(enc, out):
    """(prompt, response, engine log-probs) per row, padding removed."""
    start = enc["input_ids"].shape[1]
    for row in range(out.sequences.shape[0]):
        n = out.generated_tokens[row] + out.closing_tokens[row]
        prompt = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
        yield prompt, out.sequences[row, start : start + n].tolist(), out.token_logprobs[row]


def test_sampled_logprobs_equal_one_training_forward(tag_happy):
    """Temperature 1, free sampling: every sampled token's log-prob, nested and flat blocks, a padded batch."""
    model, tokenizer = tag_happy
    enc = encode(tokenizer, ["hi", "What is 12 + 30?"])
    depths, compared, worst, unconstrained_worst = set(), 0, 0.0, 0.0
    for seed in range(3):
        torch.manual_seed(seed)
        out = model.generate(
            **enc, tokenizer=tokenizer, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=140, return_dict_in_generate=True, output_scores=True,
        )
        assert out.token_logprobs.shape == (2, out.sequences.shape[1] - enc["input_ids"].shape[1])
        for row, (prompt, response, logprobs) in enumerate(rows(enc, out)):
            depths |= {b["depth"] for b in out.blocks[row]}
            sampled = torch.isfinite(logprobs[: len(response)])
            assert bool(torch.isnan(logprobs[len(response) :]).all())  # padding after the response
            # forced tokens (a seed per path, a conclusion seed per block) carry NaN, not a score
            forced = len(response) - int(sampled.sum())
            assert forced >= sum(len(b["labels"]) + 1 for b in out.blocks[row])
            reference = reference_logprobs(model, tokenizer, prompt, response)
            worst = max(worst, float((reference[sampled] - logprobs[: len(response)][sampled]).abs().max()))
            compared += int(sampled.sum())
            with torch.no_grad():  # the same without the grammar's constraints: must NOT match
                logits = model(torch.tensor(prompt + response)[None]).logits[0, len(prompt) - 1 : -1]
            plain = torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None]).squeeze(1)
            gap = float((plain[sampled] - logprobs[: len(response)][sampled]).abs().max())
            unconstrained_worst = max(unconstrained_worst, gap)
    assert {0, 1} <= depths, f"expected flat and nested blocks, got depths {depths}"
    assert compared > 200
    assert worst < TOLERANCE, worst
    assert unconstrained_worst > 1e-2  # the constraint matters: the test can tell


def test_without_output_scores_no_logprobs(tag_happy):
    model, tokenizer = tag_happy
    prompt = encode(tokenizer, ["hi"])
    out = model.generate(**prompt, tokenizer=tokenizer, max_new_tokens=8, return_dict_in_generate=True)
    assert out.token_logprobs is None


@pytest.mark.parametrize(
    "skeleton",
    [
        [2, block(["1", "2", "3"], [[3], [8], [5]]), 2],
        [2, block(["1", "2"], [[2, block(["1.1", "1.2"], [[3], [5]]), 2], [6]]), 2],
    ],
    ids=["flat", "nested"],
)
def test_skeleton_free_tokens_match_forward(skeleton):
    """Through a user logits processor (a forced skeleton): free slots score under the processed distribution."""
    model, tokenizer = tiny_model("llama", seed=2)
    template = skeleton_template(tokenizer, skeleton)
    enc = encode(tokenizer, ["Split this."])
    torch.manual_seed(0)
    out = model.generate(
        **enc, tokenizer=tokenizer, logits_processor=LogitsProcessorList([SkeletonProcessor(template, tokenizer)]),
        do_sample=True, temperature=1.0, top_k=0, max_new_tokens=300, return_dict_in_generate=True, output_scores=True,
    )
    ((prompt, response, logprobs),) = rows(enc, out)
    assert len(response) == len(template.ids) + 1  # + eos
    with torch.no_grad():
        logits = model(torch.tensor(prompt + response)[None]).logits[0, len(prompt) - 1 : -1]
    banned = sorted(tag_ids_from_tokenizer(tokenizer).values()) + [tokenizer.eos_token_id]
    logits[:, banned] = float("-inf")  # what the processor does at a free slot
    reference = torch.log_softmax(logits, -1)
    free = [j for j, t in enumerate(template.ids) if t == FREE]
    diffs = [abs(float(reference[j, response[j]]) - float(logprobs[j])) for j in free]
    assert len(free) >= 20 and max(diffs) < TOLERANCE
    # slots the processor forced are certain under the processed distribution
    forced_by_processor = [j for j, t in enumerate(template.ids) if t != FREE and torch.isfinite(logprobs[j])]
    assert forced_by_processor and all(float(logprobs[j]) == 0.0 for j in forced_by_processor)
