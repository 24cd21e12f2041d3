"""The Multiverse Engine on tiny random models: the SPEC.md §7 invariant, batches, sampling, Hub loading."""

from __future__ import annotations

import pytest
import torch
from engine_skeleton import FREE, SkeletonProcessor, block, skeleton_template
from tiny import tiny_model
from transformers import AutoModelForCausalLM, LogitsProcessorList

from modeling_multiverse import parse_ids, tag_ids_from_tokenizer
from modeling_multiverse.generation import write_custom_generate

SKELETONS = {
    "flat2_uneven": [2, block(["1", "2"], [[3], [11]]), 2],
    "flat8": [1, block([str(i) for i in range(1, 9)], [[i % 4 + 1] for i in range(8)], outline=1), 1],
    "nested": [2, block(["1", "2", "3"], [[4], [2, block(["2.1", "2.2"], [[3], [6]]), 2], [7]]), 3],
    "two_blocks": [1, block(["1", "2"], [[2], [5]]), 2, block(["1", "2", "3", "4"], [[1], [2], [3], [4]]), 1],
}


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request):
    return tiny_model(request.param, layers=2, seed=1)


def encode_prompts(tokenizer, texts: list[str]):
    chats = [[{"role": "user", "content": t}] for t in texts]
    tokenizer.padding_side = "left"
    return tokenizer.apply_chat_template(
        chats, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
    )


def free_argmax_mismatches(model, tokenizer, sequences, prompt_mask, template, responses) -> tuple[int, int]:
    """ONE full forward over prompt + canonical output; compare argmaxes at the template's FREE slots."""
    width = sequences.shape[1] - prompt_mask.shape[1]
    response_mask = torch.zeros(len(responses), width, dtype=prompt_mask.dtype, device=prompt_mask.device)
    for row, r in enumerate(responses):
        response_mask[row, : len(r)] = 1
    with torch.no_grad():
        logits = model(sequences, attention_mask=torch.cat([prompt_mask, response_mask], 1)).logits
    banned = sorted(tag_ids_from_tokenizer(tokenizer).values()) + [tokenizer.eos_token_id]
    start = prompt_mask.shape[1]
    checked = mismatched = 0
    for row, response in enumerate(responses):
        for j, t in enumerate(template.ids):
            if t == FREE:
                scores = logits[row, start + j - 1].clone()
                scores[banned] = -float("inf")
                checked += 1
                mismatched += int(scores.argmax()) != response[j]
    return checked, mismatched


def run(model, tokenizer, texts, template, **kwargs):
    enc = encode_prompts(tokenizer, texts)
    out = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        logits_processor=LogitsProcessorList([SkeletonProcessor(template, tokenizer)]),
        do_sample=False,
        return_dict_in_generate=True,
        tokenizer=tokenizer,
        **{"max_new_tokens": 600, **kwargs},
    )
    start = enc["input_ids"].shape[1]
    responses = []
    for row in range(out.sequences.shape[0]):
        length = out.generated_tokens[row] + out.closing_tokens[row]
        responses.append(out.sequences[row, start : start + length].tolist())
    return enc, out, responses


@pytest.mark.parametrize("name", list(SKELETONS))
def test_spec7_invariant_single_prompt(tiny, name):
    model, tokenizer = tiny
    template = skeleton_template(tokenizer, SKELETONS[name])
    enc, out, responses = run(model, tokenizer, ["What is 2+2?"], template)
    response = responses[0]
    assert len(response) == len(template.ids) + 1 and response[-1] == tokenizer.eos_token_id
    assert all(t == FREE or t == r for t, r in zip(template.ids, response)), "the skeleton was not followed"
    parse_ids(response, tag_ids_from_tokenizer(tokenizer), decode=tokenizer.decode, require_think=True)
    checked, mismatched = free_argmax_mismatches(
        model, tokenizer, out.sequences, enc["attention_mask"], template, responses
    )
    assert checked > 10 and mismatched == 0
    # the stats describe the skeleton, and the engine used fewer steps than tokens
    blocks = out.blocks[0]
    assert [b["labels"] for b in blocks if b["depth"] == 0] == [
        s["labels"] for s in SKELETONS[name] if isinstance(s, dict)
    ]
    assert out.decode_steps[0] < out.generated_tokens[0] and out.parallelism[0] > 1
    # no KV copies, no re-prefill: the cache holds each canonical token at most once
    assert out.cache_tokens <= enc["input_ids"].shape[1] + len(response)


def test_spec7_invariant_batch_of_prompts(tiny):
    model, tokenizer = tiny
    template = skeleton_template(tokenizer, SKELETONS["nested"])
    texts = ["hi", "What is the sum of the first ten odd numbers?", "Solve x+1=3."]
    enc, out, responses = run(model, tokenizer, texts, template)
    checked, mismatched = free_argmax_mismatches(
        model, tokenizer, out.sequences, enc["attention_mask"], template, responses
    )
    assert checked == 3 * sum(t == FREE for t in template.ids) and mismatched == 0
    assert len({tuple(r) for r in responses}) == 3, "different prompts should give different free content"
    for row in range(3):
        single_enc, single, single_responses = run(model, tokenizer, [texts[row]], template)
        assert single_responses[0] == responses[row]


def test_nesting_beyond_max_depth_runs_sequentially(tiny):
    model, tokenizer = tiny
    template = skeleton_template(tokenizer, SKELETONS["nested"])
    _, deep, deep_responses = run(model, tokenizer, ["hey"], template, max_depth=2)
    enc, shallow, responses = run(model, tokenizer, ["hey"], template, max_depth=1)
    assert responses == deep_responses, "depth limit changes the schedule, never the tokens"
    assert shallow.decode_steps[0] > deep.decode_steps[0]
    _, flat, _ = run(model, tokenizer, ["hey"], template, max_depth=0)
    assert flat.decode_steps[0] > shallow.decode_steps[0]
    checked, mismatched = free_argmax_mismatches(
        model, tokenizer, shallow.sequences, enc["attention_mask"], template, responses
    )
    assert mismatched == 0


def test_without_blocks_the_engine_equals_plain_decoding(tiny):
    model, tokenizer = tiny
    template = skeleton_template(tokenizer, [12], answer=6)
    enc = encode_prompts(tokenizer, ["plain"])
    processors = LogitsProcessorList([SkeletonProcessor(template, tokenizer)])
    common = dict(input_ids=enc["input_ids"], logits_processor=processors, do_sample=False, max_new_tokens=40)
    engine = model.generate(**common, tokenizer=tokenizer)
    plain = model.generate(**common, multiverse=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(engine, plain)


def test_prompts_that_finish_early_leave_the_batch_without_changing_the_others(tiny):
    model, tokenizer = tiny
    enc = encode_prompts(tokenizer, ["plain", "a longer prompt here", "x"])
    common = dict(**enc, do_sample=False, max_new_tokens=30, pad_token_id=tokenizer.pad_token_id)
    free = model.generate(**common, multiverse=False)[:, enc["input_ids"].shape[1] :].tolist()
    # an eos the rows write at different steps (or never): rows finish one after another

    def first(row, token):
        return row.index(token) if token in row else len(row)

    eos = next(t for t in sorted({t for row in free for t in row}) if len({first(row, t) for row in free}) == len(free))
    plain = model.generate(**common, multiverse=False, eos_token_id=eos)
    engine = model.generate(**common, eos_token_id=eos, tokenizer=tokenizer)
    assert torch.equal(engine, plain)
    assert len({first(row, eos) for row in free}) == 3


def test_sampling_is_reproducible_with_a_seed(tiny):
    model, tokenizer = tiny
    template = skeleton_template(tokenizer, SKELETONS["two_blocks"])
    enc = encode_prompts(tokenizer, ["sample me"])
    kwargs = dict(
        input_ids=enc["input_ids"],
        logits_processor=LogitsProcessorList([SkeletonProcessor(template, tokenizer)]),
        do_sample=True,
        temperature=1.3,
        top_k=30,
        top_p=0.95,
        repetition_penalty=1.3,
        max_new_tokens=300,
        tokenizer=tokenizer,
    )
    outputs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outputs.append(model.generate(**kwargs))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def test_max_new_tokens_counts_every_branch(tiny):
    model, tokenizer = tiny
    template = skeleton_template(tokenizer, SKELETONS["flat8"])
    _, out, responses = run(model, tokenizer, ["budget"], template, max_new_tokens=40)
    assert out.generated_tokens[0] <= 40 and out.closing_tokens[0] > 0
    parse_ids(responses[0], tag_ids_from_tokenizer(tokenizer))  # closed well-formed (Think may stay open)


def test_stop_strings_end_the_sequence(tiny):
    model, tokenizer = tiny
    template = skeleton_template(tokenizer, ["abc ", 8])
    enc = encode_prompts(tokenizer, ["stop"])
    out = model.generate(
        input_ids=enc["input_ids"],
        logits_processor=LogitsProcessorList([SkeletonProcessor(template, tokenizer)]),
        stop_strings=["abc"],
        max_new_tokens=50,
        tokenizer=tokenizer,
    )
    assert tokenizer.decode(out[0, enc["input_ids"].shape[1] :]).endswith("abc")


def test_save_writes_custom_generate_and_remote_code_uses_it(tmp_path):
    model, tokenizer = tiny_model("qwen2", seed=3)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "custom_generate" / "generate.py").is_file()
    assert (tmp_path / "custom_generate" / "structure.py").is_file()
    assert (tmp_path / "custom_generate" / "decode_attention.py").is_file()
    template = skeleton_template(tokenizer, SKELETONS["flat2_uneven"])
    enc = encode_prompts(tokenizer, ["hub"])
    kwargs = dict(
        input_ids=enc["input_ids"],
        logits_processor=LogitsProcessorList([SkeletonProcessor(template, tokenizer)]),
        do_sample=False,
        max_new_tokens=100,
    )
    expected = model.generate(**kwargs, tokenizer=tokenizer)
    via_hook = model.generate(**kwargs, custom_generate=str(tmp_path), trust_remote_code=True, tokenizer=tokenizer)
    assert torch.equal(via_hook, expected)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)
    assert torch.equal(loaded.generate(**kwargs), expected)  # tokenizer found beside the weights
    assert write_custom_generate(tmp_path / "again") == tmp_path / "again" / "custom_generate"


def test_bad_arguments_are_named(tiny):
    model, tokenizer = tiny
    enc = encode_prompts(tokenizer, ["x"])
    with pytest.raises(ValueError, match="beam"):
        model.generate(input_ids=enc["input_ids"], num_beams=2, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate(input_ids=enc["input_ids"])
    tag = tag_ids_from_tokenizer(tokenizer)
    open_block = torch.tensor([[5, tag["<Parallel>"], 6]])
    with pytest.raises(ValueError, match="prompt 0 ends inside"):
        model.generate(input_ids=open_block, tokenizer=tokenizer)


def test_grouped_query_sdpa_equals_transformers_sdpa():
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from modeling_multiverse.decode_attention import grouped_query_sdpa

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    query = torch.randn(2, 6, 4, 8)  # 6 query heads over 2 key/value heads, 4 queries per row
    key, value = torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    allowed = torch.rand(2, 1, 4, 9) < 0.6
    allowed[..., 0] = True
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    got, _ = grouped_query_sdpa(module, query, key, value, mask, scaling=0.3)
    assert got.shape == expected.shape == (2, 4, 6, 8)
    torch.testing.assert_close(got, expected)
