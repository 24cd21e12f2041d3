"""`benchmarks/merge_modes.py` and `multiverse eval --merge`: exact against re-prefill merge on one model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tiny import example_response, tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import merge_modes

from evaluation.cli import main as eval_main

RECORDS = [{"id": f"p{i}", "question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(2)]


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model, tokenizer = tiny_model()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data = write(folder / "problems.jsonl", RECORDS)
    return folder, data, tokenizer


def test_agreement():
    assert merge_modes.agreement([1, 2, 3], [1, 5, 3, 4]) == 0.5 and merge_modes.agreement([], []) is None


def test_compare_reads_the_conclusions_of_both_modes(saved):
    _, _, tokenizer = saved
    block = (
        "<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n</Goal>\n<Path>\n1: a</Path>\n"
        "<Conclusion>\n{}</Conclusion>\n</Parallel>"
    )

    def report(conclusions: list[str], correct: list[bool]) -> dict:
        records = [{"response": block.format(c) if c is not None else "plain", "correct": ok, "predicted": c}
                   for c, ok in zip(conclusions, correct)]
        return {"n": len(records), "records": records, "accuracy": sum(correct) / len(correct), "well_formed": 1.0,
                "parallelism": 1.5, "mean_reprefill_tokens": 0.0, "wall_time_s": 1.0}

    summary = merge_modes.compare(tokenizer, {
        "exact": report(["abcd", "xy", None], [True, True, False]),
        "reprefill": report(["abzd", "xy", None], [False, True, False]),
    })
    # "\nabcd" against "\nabzd": 4 of 5 tokens; "\nxy" alike; the third has no conclusion
    assert summary["conclusion_agreement"] == pytest.approx((4 / 5 + 1) / 2)
    assert summary["problems_with_conclusions"] == 2
    assert summary["identical_responses"] == pytest.approx(2 / 3)
    assert summary["exact"]["accuracy_wilson95"][0] > summary["reprefill"]["accuracy_wilson95"][0]


def test_script_and_eval_flag_run_both_modes(saved, tmp_path, capsys):
    folder, data, _ = saved
    output = tmp_path / "modes.json"
    argv = ["--model", str(folder), "--data", str(data), "--max-new-tokens", "6", "--precision", "fp32"]
    assert merge_modes.main([*argv, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "| exact |" in printed and "| reprefill |" in printed and "conclusion-token agreement" in printed
    result = json.loads(output.read_text())
    assert set(result["reports"]) == {"exact", "reprefill"}
    assert all(result["summary"][mode]["n"] == 2 for mode in ("exact", "reprefill"))
    report_path = tmp_path / "eval.json"
    assert eval_main([*argv, "--merge", "reprefill", "--output", str(report_path)]) == 0
    assert json.loads(report_path.read_text())["merge"] == "reprefill"
    with pytest.raises(SystemExit):
        eval_main([*argv, "--merge", "stock"])


def test_teacher_forced_reading_of_gold_traces(saved, tmp_path, capsys):
    folder, data, tokenizer = saved
    units = ["\n<Path>\n1: aa</Path>", "\n<Path>\n2: bbbb</Path>"]
    flat = ("<Think>\n<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n<Outline>2: b</Outline>\n</Goal>" + "".join(units)
            + "\n<Conclusion>\nab</Conclusion>\n</Parallel>\n</Think>\nok")
    traces = [{"id": "p0", "multiverse": flat}, {"id": "p1", "multiverse": example_response()}]
    traces = write(tmp_path / "traces.jsonl", traces)
    output = tmp_path / "tf.json"
    argv = ["--model", str(folder), "--data", str(data), "--precision", "fp32", "--skip-decoding",
            "--traces", str(traces), "--output", str(output)]
    assert merge_modes.main(argv) == 0
    assert "teacher-forced gold responses" in capsys.readouterr().out
    read = json.loads(output.read_text())["summary"]["teacher_forced"]
    lengths = [len(tokenizer(u, add_special_tokens=False)["input_ids"]) for u in units]
    assert read["traces"] == 1, "the nested trace is not read: a stock engine's reading of it is not one forward"
    assert read["reprefill_tokens"] == sum(lengths) and read["conclusion_position_shift"] == min(lengths)
    after = tokenizer("\nab</Conclusion>\n</Parallel>\n</Think>\nok", add_special_tokens=False)["input_ids"]
    assert read["tokens_scored"] == len(after)
    assert 0.0 <= read["top1_agreement"] <= 1.0
    assert abs(read["gold_logprob_exact"] - read["gold_logprob_reprefill"]) > 1e-6
