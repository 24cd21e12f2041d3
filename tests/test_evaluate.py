"""`multiverse eval`: data detection, prompts, the stats adapter, and the loop end to end on a tiny model."""

import json
from types import SimpleNamespace

import pytest
import torch
from tiny import example_response, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from evaluation.cli import main
from evaluation.evaluate import (
    detect_kind,
    evaluate,
    format_summary,
    generation_stats,
    is_multiverse_tokenizer,
    load_records,
    summarize,
)
from modeling_multiverse import PARALLEL_INSTRUCTION, user_turn
from modeling_multiverse.generation import MultiverseGenerateOutput

CHOICE_RECORDS = [
    {"question": "Which planet is largest?", "choices": ["Mars", "Jupiter", "Venus", "Mercury"], "answer": "B"},
    {"question": "2 + 2 = ?", "options": {"A": "4", "B": "5"}, "answer": "A"},
]
BUILTIN_RECORDS = [
    {"id": f"b{i}", "question": f"Add {i} and 1.", "sequential": f"{i} + 1 = {i + 1}", "answer": f"\\boxed{{{i + 1}}}"}
    for i in range(3)
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_kinds_detected_from_the_shared_files(shared_dir):
    expected = {"MATH500_test": "math", "aime24_figures": "aime", "aime2025-I": "aime", "aime2025-II": "aime"}
    for name, kind in expected.items():
        records, detected = load_records(shared_dir / "data" / f"{name}.jsonl", limit=None)
        assert detected == kind, name
        assert all(r["question"] and r["answer"] for r in records)


def test_kinds_detected_for_builtin_and_choice(tmp_path):
    records, kind = load_records(write_jsonl(tmp_path / "b.jsonl", BUILTIN_RECORDS), limit=2)
    assert kind == "builtin" and [r["id"] for r in records] == ["b0", "b1"]
    records, kind = load_records(write_jsonl(tmp_path / "c.jsonl", CHOICE_RECORDS))
    assert kind == "choice"
    assert "B. Jupiter" in records[0]["question"] and "A. 4" in records[1]["question"]
    assert detect_kind([{"problem": "p", "answer": "\\frac12"}]) == "math"


def test_bad_data_is_named(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the data kind"):
        load_records(write_jsonl(tmp_path / "x.jsonl", [{"text": "hi"}]))
    with pytest.raises(ValueError, match=r"c\.jsonl:1: answer 'E' is not one of the choice letters"):
        load_records(write_jsonl(tmp_path / "c.jsonl", [dict(CHOICE_RECORDS[0], answer="E")]))
    with pytest.raises(ValueError, match=r"a\.jsonl:2: aime answer 'twelve' is not an integer"):
        rows = [{"question": "q", "answer": "1"}, {"question": "q", "answer": "twelve"}]
        load_records(write_jsonl(tmp_path / "a.jsonl", rows), kind="aime")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        load_records(bad)


def test_user_message_ends_with_the_parallel_instruction():
    record = {"question": "What is 1+1?", "kind": "math", "answer": "2"}
    assert user_turn(record["question"], record["kind"], parallel=True).endswith(PARALLEL_INSTRUCTION)
    assert PARALLEL_INSTRUCTION not in user_turn(record["question"], record["kind"], parallel=False)
    assert "\\boxed{}" in user_turn(record["question"], record["kind"], parallel=False)


def test_generation_stats_reads_engine_stats_or_falls_back():
    engine = MultiverseGenerateOutput(generated_tokens=[30, 9], decode_steps=[20, 9])
    assert generation_stats(engine, 0, generated_tokens=31) == (30, 20)
    assert generation_stats(engine, 1, generated_tokens=9) == (9, 9)
    assert generation_stats(SimpleNamespace(sequences=None), 0, generated_tokens=12) == (12, 12)


def test_summarize_grades_known_texts():
    good = {"correct": True, "well_formed": True, "finished": True}
    bad = {"correct": False, "well_formed": False, "finished": False}
    records = [
        {**good, "parallelism": 1.5, "generated_tokens": 30, "decode_steps": 20},
        {**bad, "parallelism": 1.0, "generated_tokens": 10, "decode_steps": 10},
    ]
    report = summarize(records, "math", wall_time_s=2.0)
    assert report["accuracy"] == 0.5 and report["well_formed"] == 0.5
    assert report["parallelism"] == 1.25 and report["mean_tokens"] == 20 and report["tokens_per_s"] == 20
    assert "accuracy       50.0%" in format_summary(report)


@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-multiverse")
    model, tokenizer = tiny_model()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_evaluate_end_to_end_on_a_saved_tiny_model(saved_tiny_model, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(saved_tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(saved_tiny_model)
    tokenizer.padding_side = "right"
    records = [{"id": i, "question": f"What is {i}+1?", "answer": str(i + 1), "kind": "aime"} for i in range(3)]
    report = evaluate(model, tokenizer, records, "aime", max_new_tokens=8, batch_size=2, parallel_prompt=True)
    assert report["n"] == 3 and [r["id"] for r in report["records"]] == [0, 1, 2]
    for record in report["records"]:
        assert 1 <= record["generated_tokens"] <= 8 and record["decode_steps"] == record["generated_tokens"]
        assert isinstance(record["response"], str) and isinstance(record["correct"], bool)
    assert 0.0 <= report["accuracy"] <= 1.0 and report["parallelism"] == 1.0
    assert tokenizer.padding_side == "right"  # evaluate pads left for generation without touching the tokenizer
    # left padding must not change greedy outputs: the batch of 2 equals one prompt at a time
    alone = evaluate(model, tokenizer, records, "aime", max_new_tokens=8, batch_size=1, parallel_prompt=True)
    assert [r["response"] for r in alone["records"]] == [r["response"] for r in report["records"]]

    # grading and well-formedness of known texts go through the same loop: make generate return them
    well_formed_and_right = example_response().replace("The answer is 3.", "\\boxed{1}")
    known = [well_formed_and_right, "no structure, answer \\boxed{5}", "\\boxed{3}"]

    def fake_generate(input_ids, attention_mask, max_new_tokens, **kwargs):  # what the engine would return
        assert tokenizer.padding_side == "right"  # the caller's tokenizer is never changed, not even meanwhile
        assert attention_mask[:, -1].all()  # yet the prompts are padded on the left
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in known]
        width = max(map(len, ids))
        rows = [row + [tokenizer.pad_token_id] * (width - len(row)) for row in ids]
        new = torch.tensor(rows)[: input_ids.shape[0]]
        lengths = [len(r) for r in ids[: input_ids.shape[0]]]
        known[:] = known[input_ids.shape[0] :]
        return MultiverseGenerateOutput(
            sequences=torch.cat([input_ids, new], dim=1),
            generated_tokens=lengths,
            decode_steps=[max(1, n // 2) for n in lengths],
        )

    monkeypatch.setattr(model, "generate", fake_generate)
    report = evaluate(model, tokenizer, records, "aime", max_new_tokens=8, batch_size=2, parallel_prompt=True)
    assert [r["correct"] for r in report["records"]] == [True, False, True]
    assert [r["well_formed"] for r in report["records"]] == [True, False, False]
    assert all(r["finished"] for r in report["records"])
    assert report["parallelism"] > 1.9 and report["accuracy"] == pytest.approx(2 / 3)


def test_cli_writes_a_report(saved_tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "c.jsonl", CHOICE_RECORDS)
    output = tmp_path / "out" / "report.json"
    argv = ["--model", str(saved_tiny_model), "--data", str(data), "--max-new-tokens", "4", "--output", str(output)]
    assert main(argv) == 0
    report = json.loads(output.read_text())
    assert report["kind"] == "choice" and report["n"] == 2 and report["parallel_prompt"] is True
    assert {"accuracy", "well_formed", "parallelism", "mean_tokens", "wall_time_s", "records"} <= set(report)
    assert "well-formed" in capsys.readouterr().out


def test_evaluate_a_plain_causal_model():
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    assert not is_multiverse_tokenizer(tokenizer)
    records = [{"id": 0, "question": "Pick one.\n\nA. x\nB. y", "answer": "A", "kind": "choice"}]
    report = evaluate(model, tokenizer, records, "choice", max_new_tokens=6, batch_size=4, parallel_prompt=False)
    assert report["parallelism"] == 1.0 and report["well_formed"] == 0.0
    assert report["records"][0]["decode_steps"] == report["records"][0]["generated_tokens"]
