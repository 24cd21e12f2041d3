"""Graders on known answers: the shared MATH500 and AIME files, multiple choice, the built-in task."""

import random

import pytest

from evaluation.grading import (
    extract_choice,
    extract_integer,
    grade,
    integer_reference,
    last_boxed,
    math_equal,
    normalize_math,
)
from runtime.jsonl import iter_jsonl


def read_jsonl(path):
    return [record for _, record in iter_jsonl(path)]


def test_math500_solutions_grade_correct_against_their_answers(shared_dir):
    records = read_jsonl(shared_dir / "data" / "MATH500_test.jsonl")
    correct = sum(grade(r["solution"], r["answer"], "math") for r in records)
    # measured: 500 / 500
    assert correct / len(records) >= 0.95, f"{correct}/{len(records)}"


def test_math500_solutions_do_not_match_other_problems_answers(shared_dir):
    records = read_jsonl(shared_dir / "data" / "MATH500_test.jsonl")
    shuffled = [r["answer"] for r in records]
    random.Random(0).shuffle(shuffled)
    false_matches = [
        (r["answer"], other)
        for r, other in zip(records, shuffled)
        if normalize_math(other) != normalize_math(r["answer"]) and grade(r["solution"], other, "math")
    ]
    assert not false_matches


def test_aime_references_and_solutions(shared_dir):
    for name in ("aime2025-I.jsonl", "aime2025-II.jsonl", "aime24_figures.jsonl"):
        for r in read_jsonl(shared_dir / "data" / name):
            value = integer_reference(r["answer"])
            assert value is not None and 0 <= value <= 999, (name, r["answer"])
            assert grade(f"<Think>\nwork\n</Think>\nThe answer is $\\boxed{{{value}}}$.", r["answer"], "aime")
            assert not grade(f"\\boxed{{{value + 1}}}", r["answer"], "aime")
    aime24 = read_jsonl(shared_dir / "data" / "aime24_figures.jsonl")
    # the one miss ends with a signature number ("-sepehr2010") instead of the answer
    assert sum(grade(r["solution"], r["answer"], "aime") for r in aime24) >= len(aime24) - 1


@pytest.mark.parametrize(
    "predicted, reference",
    [
        (r"\dfrac{14}{3}", r"\frac{14}{3}"),
        (r"\frac 32", r"\frac{3}{2}"),
        ("3/56", r"\frac{3}{56}"),
        ("0.5", r"\frac12"),
        (".15", "0.15"),
        (r"90", r"90^\circ"),
        (r"\text{Evelyn}", "Evelyn"),
        (r"11\sqrt{2}", r"11\sqrt2"),
        ("5", "x=5"),
        ("-2,1", "1,-2"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        ("864", r"864 \mbox{ inches}^2"),
        ("4210_5", "4210_{5}"),
        ("10,000", "10000"),
        ("2.50", "2.5"),
    ],
)
def test_math_equal_accepts_equivalent_forms(predicted, reference):
    assert math_equal(predicted, reference)


@pytest.mark.parametrize(
    "predicted, reference",
    [("3", "4"), (r"\frac{1}{3}", "0.33"), ("(1,2)", "(2,1)"), ("[0,1)", "[0,1]"), ("x^2", "x^3"), ("2m", "2")],
)
def test_math_equal_rejects_different_answers(predicted, reference):
    assert not math_equal(predicted, reference)


def test_last_boxed_handles_nesting_and_truncation():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{\sqrt{2}}{2}}") == r"\frac{\sqrt{2}}{2}"
    assert last_boxed(r"\boxed{7} and a cut-off \boxed{\frac{1}{") == "7"
    assert last_boxed(r"so \boxed 5.") == "5"
    assert last_boxed("no box here") is None


def test_multiple_choice_extraction_on_made_up_responses():
    assert extract_choice(r"<Think>A or C?</Think> \boxed{C}") == "C"
    assert extract_choice(r"\boxed{\text{(B)}}") == "B"
    assert extract_choice("<Think>maybe (A)</Think>\nThe answer is (D).") == "D"
    assert extract_choice("Answer: b") == "B"
    assert extract_choice("I have no idea.") is None
    assert grade("Final answer: (A)", "A", "choice")
    assert not grade("Final answer: (A)", "B", "choice")


def test_builtin_and_integer_answers():
    assert grade("<Think>\n3 + 4 = 7\n</Think>\n\\boxed{7}", r"\boxed{7}", "builtin")
    assert grade("so \\boxed{1,024}", "1024", "builtin")
    assert not grade("the total is 8", "7", "builtin")
    assert extract_integer("<Think>maybe 12</Think>It is 13.") == 13
    assert extract_integer("nothing") is None
    with pytest.raises(ValueError, match="not an integer"):
        grade(r"\boxed{3}", "three", "aime")
    with pytest.raises(ValueError, match="unknown answer kind"):
        grade("x", "y", "gsm8k")
