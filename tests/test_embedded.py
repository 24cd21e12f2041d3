"""The converted embedded default (SmolLM2-135M-Instruct) obeys SPEC.md §4-5 on real weights."""

import pytest
import torch
from reference import path_ancestry, reference_additive_mask, reference_allowed, reference_positions
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_multiverse import TAGS, format_parallel, format_response


@pytest.fixture(scope="module")
def embedded(converted_smollm2):
    model = AutoModelForCausalLM.from_pretrained(converted_smollm2, trust_remote_code=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(converted_smollm2)
    return model.eval(), tokenizer


def response() -> str:
    inner = format_parallel(
        [("1.1", "halve"), ("1.2", "double")], ["6 / 2 = 3", "6 * 2 = 12, a longer path"], "3 and 12"
    )
    outer = format_parallel(
        [("1", "the first part"), ("2", "the second part"), ("3", "the third")],
        [f"Compute both. {inner} So 15.", "4 + 5 = 9.", "Nothing to add here."],
        "15 + 9 = 24.",
    )
    return format_response(f"Split it.\n{outer}\nDone.", "The answer is 24.")


def test_logits_equal_an_independent_spec_implementation(embedded):
    model, tokenizer = embedded
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": response()}],
        return_tensors="pt", return_dict=True,
    )["input_ids"]
    tag_of = {model.config.tag_token_ids[t]: i for i, t in enumerate(TAGS)}
    kinds = [tag_of.get(i, -1) for i in ids[0].tolist()]
    mask = reference_additive_mask(reference_allowed(kinds))
    positions = torch.tensor([reference_positions(kinds)])
    with torch.no_grad():
        ours = model(ids).logits
        hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        independent = model.lm_head(hidden)
    assert (positions[0] != torch.arange(ids.shape[1])).any()  # the sequence really has parallel positions
    torch.testing.assert_close(ours, independent, atol=1e-3, rtol=0)


def test_every_path_is_blind_to_its_siblings(embedded):
    model, tokenizer = embedded
    ids = tokenizer(response(), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    tag_of = {model.config.tag_token_ids[t]: i for i, t in enumerate(TAGS)}
    ancestry = path_ancestry([tag_of.get(i, -1) for i in ids.tolist()])
    units = sorted({unit for chain in ancestry for unit in chain})
    assert len(units) == 5
    with torch.no_grad():
        full = model(ids[None]).logits[0]
        for block, unit in units:
            inside = torch.tensor([(block, unit) in chain for chain in ancestry])
            sibling = torch.tensor([any(b == block and u != unit for b, u in chain) for chain in ancestry])
            end = int(torch.nonzero(inside).max()) + 1
            keep = ~sibling
            keep[end:] = False  # what follows the path cannot matter to it; the block stays open
            reduced = model(ids[keep][None]).logits[0]
            torch.testing.assert_close(reduced[inside[keep]], full[inside], atol=1e-3, rtol=0)
