"""Acceptance: the SPEC.md §7 invariant on the output of a *converted* model's plain `generate(...)` call.

The model is loaded from the folder `multiverse convert` wrote (remote code + `custom_generate/`),
and `generate` is called exactly as the issue states: input_ids, a logits processor, greedy,
return_dict_in_generate; no tokenizer argument (the engine finds it beside the weights).
"""

from __future__ import annotations

import json

import pytest
import torch
from engine_skeleton import SkeletonProcessor, block, skeleton_template
from test_engine import free_argmax_mismatches
from tiny import tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM

from modeling_multiverse import parallel_user_turn, parse_ids, tag_ids_from_tokenizer
from multiverse.convert import main as convert
from multiverse.generate_cmd import main as generate_cmd

FLAT = [2, block(["1", "2", "3", "4"], [[5], [9], [3], [7]]), 2]
NESTED = [1, block(["1", "2"], [[3, block(["1.1", "1.2", "1.3"], [[4], [2], [6]]), 2], [8]]), 2]


def check_invariant(model, tokenizer, skeleton, question: str) -> dict:
    template = skeleton_template(tokenizer, skeleton)
    chat = [{"role": "user", "content": parallel_user_turn(question)}]
    enc = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(
        input_ids=enc["input_ids"],
        logits_processor=LogitsProcessorList([SkeletonProcessor(template, tokenizer)]),
        do_sample=False,
        return_dict_in_generate=True,
        max_new_tokens=len(template.ids) + 8,
    )
    response = out.sequences[0, enc["input_ids"].shape[1] :].tolist()
    parse_ids(response, tag_ids_from_tokenizer(tokenizer), decode=tokenizer.decode, require_think=True)
    checked, mismatched = free_argmax_mismatches(
        model, tokenizer, out.sequences, torch.ones_like(enc["input_ids"]), template, [response]
    )
    assert checked > 10 and mismatched == 0
    assert out.decode_steps[0] < out.generated_tokens[0]
    return {"checked": checked, "parallelism": out.parallelism[0]}


def test_spec7_invariant_tiny_qwen2_through_convert(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    torch.manual_seed(5)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    assert convert(["--base", str(tmp_path / "base"), "--out", str(tmp_path / "mv")]) in (0, None)
    assert (tmp_path / "mv" / "custom_generate" / "generate.py").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "mv", trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "mv")
    for skeleton in (FLAT, NESTED):
        check_invariant(model, tokenizer, skeleton, "What is 6 * 7?")
    # the command line on the same folder: chat template + instruction, response and stats as JSON
    assert generate_cmd(["--model", str(tmp_path / "mv"), "--prompt", "hi", "--max-new-tokens", "12", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["generated_tokens"] <= 12 and printed["decode_steps"] >= 1 and "response" in printed


@pytest.mark.slow
def test_spec7_invariant_embedded_default(tmp_path):
    assert convert(["--base", "smollm2", "--out", str(tmp_path / "smollm2")]) in (0, None)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2", trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "smollm2")
    for skeleton in (FLAT, NESTED):
        check_invariant(model, tokenizer, skeleton, "How many positive divisors does 36 have?")
