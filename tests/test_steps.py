"""Step accuracy on the built-in task and the Wilson intervals: hand-written right and wrong responses."""

import json

import pytest

from curator.synth import synthesize
from evaluation.evaluate import format_summary, grade_record, load_records, summarize
from evaluation.intervals import accuracy_parity, wilson_interval
from evaluation.steps import check_steps, reference_steps, step_summary, written_sums

QUESTION = (
    "Mia has 2 bags with 9 and 3 marbles. Ivy has 3 bags with 7, 3 and 5 marbles. "
    "How many marbles does the one with the most marbles have?"
)
SEQUENTIAL = (
    "Mia: Mia has 2 bags with 9 and 3 marbles. 9 + 3 = 12. Mia's total is 12.\n"
    "Ivy: Ivy has 3 bags with 7, 3 and 5 marbles. 7 + 3 = 10. 10 + 5 = 15. Ivy's total is 15.\n"
    "Mia's total is 12 and Ivy's total is 15, so the most is 15.\n"
    "So the answer is \\boxed{15}."
)
RECORD = {"id": "p0", "question": QUESTION, "sequential": SEQUENTIAL, "answer": "15", "kind": "builtin"}
MULTIVERSE_RIGHT = (
    "<Think>\n<Parallel>\n<Goal>\n<Outline>1: Mia</Outline>\n<Outline>2: Ivy</Outline>\n</Goal>\n"
    "<Path>\n1: Mia: Mia has 2 bags with 9 and 3 marbles. 9 + 3 = 12. Mia's total is 12.</Path>\n"
    "<Path>\n2: Ivy: Ivy has 3 bags with 7, 3 and 5 marbles. 7 + 3 = 10. 10 + 5 = 15. Ivy's total is 15.</Path>\n"
    "<Conclusion>\nMia's total is 12 and Ivy's total is 15, so the most is 15.</Conclusion>\n</Parallel>\n"
    "</Think>\nSo the answer is \\boxed{15}."
)


def test_a_right_response_scores_every_step_in_either_format():
    for response in (MULTIVERSE_RIGHT, SEQUENTIAL):
        counts = check_steps(response, SEQUENTIAL)
        assert counts == {
            "sums_written": 3, "sums_expected": 3, "sums_right": 3, "totals_expected": 2, "totals_right": 2,
            "step_units": 5, "step_units_right": 5,
        }


def test_wrong_sums_are_caught_though_the_format_is_right():
    # the broken baseline of issue 27: the right format, wrong sums ("9 + 5 = 11")
    response = SEQUENTIAL.replace("9 + 3 = 12", "9 + 3 = 11").replace("Mia's total is 12", "Mia's total is 11")
    counts = check_steps(response, SEQUENTIAL)
    assert counts["sums_right"] == 2 and counts["totals_right"] == 1 and counts["step_units_right"] == 3


def test_a_right_sum_of_numbers_the_problem_does_not_have_is_wrong():
    # 9 + 4 = 13 is arithmetic, but Mia's bags hold 9 and 3: a misread operand
    response = SEQUENTIAL.replace("9 + 3 = 12", "9 + 4 = 13")
    assert check_steps(response, SEQUENTIAL)["sums_right"] == 2


def test_a_total_stated_twice_must_be_right_both_times():
    response = SEQUENTIAL.replace("Mia's total is 12 and", "Mia's total is 13 and")
    counts = check_steps(response, SEQUENTIAL)
    assert counts["sums_right"] == 3 and counts["totals_right"] == 1


def test_missing_and_repeated_steps_cost_units():
    stopped = "Mia: 9 + 3 = 12. Mia's total is 12."
    counts = check_steps(stopped, SEQUENTIAL)
    assert (counts["step_units"], counts["step_units_right"]) == (5, 2)
    looped = SEQUENTIAL + " 9 + 3 = 12. 9 + 3 = 12."
    counts = check_steps(looped, SEQUENTIAL)
    assert (counts["sums_written"], counts["sums_right"], counts["step_units"]) == (5, 3, 7)


def test_operand_order_does_not_matter_and_chains_are_not_sums():
    assert check_steps(SEQUENTIAL.replace("9 + 3 = 12", "3 + 9 = 12"), SEQUENTIAL)["sums_right"] == 3
    assert written_sums("2 + 3 + 4 = 9 and 12 + 3 = 15 + 0") == []


def test_every_synthesized_solution_is_a_reference_with_a_total_per_person():
    for row in synthesize(50, seed=4, k=(2, 5), bags=(2, 5), task="most"):
        sums, totals = reference_steps(row["sequential"])
        people = row["question"].count(" bags with ")
        assert len(totals) == people and max(totals.values()) == int(row["answer"])
        assert sum(sums.values()) == sum(int(part.split()[0]) - 1 for part in row["question"].split(" has ")[1:])
        assert check_steps(row["sequential"], row["sequential"])["step_units_right"] == len(totals) + sum(sums.values())


def test_a_wrong_worked_solution_is_no_reference():
    with pytest.raises(ValueError, match="not a reference"):
        reference_steps("Tom: 2 + 2 = 5. Tom's total is 5.")


def test_eval_records_carry_the_steps_and_the_report_pools_them(tmp_path):
    path = tmp_path / "held_out.jsonl"
    path.write_text(json.dumps({k: v for k, v in RECORD.items() if k != "kind"}) + "\n")
    records, kind = load_records(path)
    assert kind == "builtin" and records[0]["sequential"] == SEQUENTIAL
    wrong = SEQUENTIAL.replace("10 + 5 = 15", "10 + 5 = 14")
    results = [
        grade_record(records[0], MULTIVERSE_RIGHT, 10, 5, True, 1.0), grade_record(records[0], wrong, 10, 10, True, 1.0)
    ]
    report = summarize(results, kind, 1.0)
    assert report["step_accuracy"] == pytest.approx(9 / 10) and report["step_counts"]["sums_right"] == 5
    assert report["accuracy"] == 1.0  # the final answer of the wrong response is still 15
    assert report["accuracy_interval"] == pytest.approx(list(wilson_interval(2, 2)))
    assert "step accuracy" in format_summary(report) and "95% CI" in format_summary(report)


def test_other_kinds_have_no_step_accuracy():
    results = [grade_record({"id": 0, "answer": "4", "kind": "aime"}, "\\boxed{4}", 3, 3, True, 1.0)]
    report = summarize(results, "aime", 1.0)
    assert "step_accuracy" not in report and step_summary(results) is None


def test_wilson_interval_matches_the_closed_form_and_bounds():
    low, high = wilson_interval(18, 200)  # the broken baseline of issue 27: 0.090
    assert 0.05 < low < 0.09 < high < 0.14
    assert wilson_interval(200, 200)[1] == 1.0 and wilson_interval(200, 200)[0] > 0.98
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_parity_fails_only_when_measurably_worse():
    base = wilson_interval(172, 200)
    assert accuracy_parity(0.85, wilson_interval(170, 200), 0.86, base)
    assert accuracy_parity(0.80, wilson_interval(160, 200), 0.86, base)  # 6 points, overlapping intervals
    assert not accuracy_parity(0.70, wilson_interval(140, 200), 0.86, base)
