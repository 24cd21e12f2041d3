"""Graders on known answers: the shared MATH500 and AIME files, multiple choice, the built-in task, math-verify."""

import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from math_verify import parse, verify

from evaluation.grading import (
    extract_answer,
    extract_choice,
    extract_integer,
    grade,
    integer_reference,
    last_boxed,
    math_equal,
    normalize_math,
)
from runtime import mathverify
from runtime.jsonl import iter_jsonl
from runtime.mathverify import verify_equal


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


@pytest.mark.parametrize(
    "predicted, reference",
    [
        ("0.5", r"\frac{1}{2}"),
        (r"\dfrac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}"),
        (r"\sqrt{8}", r"2\sqrt{2}"),
        ("2^{10}", "1024"),
        (r"(5, \infty) \cup (-\infty, -1]", r"(-\infty,-1] \cup (5,\infty)"),
        (r"\{3, 1, 2\}", r"\{1,2,3\}"),
        ("x^2+2x+1", "(x+1)^2"),
        (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt2}{2}"),
    ],
)
def test_math_verify_adds_equivalences_the_normal_form_misses(predicted, reference):
    """Each pair was graded wrong before math-verify: different normal forms, not plain numbers or lists."""
    assert normalize_math(predicted) != normalize_math(reference)
    assert math_equal(predicted, reference)
    assert grade(f"<Think>\nwork\n</Think>\nSo $\\boxed{{{predicted}}}$.", reference, "math")


@pytest.mark.parametrize(
    "predicted, reference",
    [
        (r"(5, \infty)", r"[5, \infty)"),
        (r"\{1, 2\}", r"\{1, 2, 3\}"),
        (r"\sqrt{8}", r"3\sqrt{2}"),
        ("(x+1)^2", "x^2+1"),
    ],
)
def test_math_verify_still_tells_different_answers_apart(predicted, reference):
    assert not math_equal(predicted, reference)


def test_a_truncated_response_without_a_boxed_answer_is_not_credited():
    truncated = "<Think>\n<Parallel>\n<Path>\n1: x = 1/2 works, so the answer is $\\frac{1}{2}$. Let me check"
    # math-verify on the whole text credits it (it finds the last formula); our extraction wants a final \boxed{}
    assert verify(parse("$\\frac{1}{2}$"), parse(truncated))
    assert not grade(truncated, r"\frac{1}{2}", "math")
    assert extract_answer(truncated, "math") is None


def test_aime_boxed_expressions_are_evaluated():
    assert grade(r"<Think>2^10</Think>\boxed{2^{10}}", "1024", "aime")  # used to read the last integer: 10
    assert extract_answer(r"\boxed{2^{10}}", "aime") == "2^{10}"
    assert extract_answer(r"\boxed{\textbf{(073)}}", "aime") == "73"
    assert not grade(r"\boxed{2^{9}}", "1024", "aime")


def test_grading_from_threads_runs_math_verify_in_a_worker_process():
    """math-verify's signal.alarm raises off the main thread: a server or a trainer grades from threads."""
    cases = [
        (r"\boxed{0.5}", r"\frac12", True),
        (r"\boxed{[0, 1)}", "[0,1]", False),
        (r"\boxed{2\sqrt2}", r"\sqrt8", True),
    ]
    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(lambda case: grade(case[0], case[1], "math"), cases))
    assert verdicts == [expected for *_, expected in cases]


def test_a_comparison_past_its_deadline_is_false_and_the_worker_is_replaced():
    def run(function, *args):
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(function, *args).result()

    assert run(verify_equal, "1024", "2^{10}")  # starts the worker
    start = time.monotonic()
    # math-verify's alarm (2 s) would end this comparison; the deadline (0.5 s) comes first and kills the worker
    assert not run(mathverify._verify_in_worker, "5", "10^{10^{10^{10}}}", 2, 0.5)
    assert time.monotonic() - start < 30
    assert run(verify_equal, r"\frac{1}{2}", "0.5")  # a new worker
