"""`multiverse eval` with continuous batching: finished problems are refilled at once, and every problem's
response and statistics equal the static batches' (fp32, greedy); `--batching auto` refills on an accelerator only."""

from __future__ import annotations

import torch
from tiny import tiny_model

from evaluation.continuous import use_continuous
from evaluation.evaluate import evaluate
from modeling_multiverse import tag_ids_from_tokenizer


def test_continuous_eval_equals_static_batches():
    model, tokenizer = tiny_model("qwen2", seed=1)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():  # a head that favours the tags and eos: problems finish at different times
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[list(tag_ids_from_tokenizer(tokenizer).values())] = 3.0
        head.bias[tokenizer.eos_token_id] = 2.8
    model.lm_head = head
    questions = [f"What is {i} + {i * 7}?" for i in range(7)]
    records = [{"id": i, "question": q, "answer": str(8 * i), "kind": "aime"} for i, q in enumerate(questions)]
    common = {"kind": "aime", "max_new_tokens": 32, "batch_size": 3, "parallel_prompt": True}
    static = evaluate(model, tokenizer, records, **common)
    continuous = evaluate(model, tokenizer, records, **common, continuous=True)
    fields = ("id", "response", "generated_tokens", "decode_steps", "finished", "correct", "well_formed")
    rows = [[[r[f] for f in fields] for r in report["records"]] for report in (static, continuous)]
    assert rows[0] == rows[1]
    lengths = [r["generated_tokens"] for r in static["records"]]
    assert lengths[:2] == [32, 32] and min(lengths) == 1  # two long problems: the short ones are refilled beside them


def test_auto_batching_refills_on_an_accelerator_only():
    assert use_continuous("auto", "cuda:0") and use_continuous("auto", torch.device("cuda", 1))
    assert not use_continuous("auto", "cpu") and not use_continuous("auto", torch.device("cpu"))
    assert use_continuous("continuous", "cpu") and not use_continuous("static", "cuda")
