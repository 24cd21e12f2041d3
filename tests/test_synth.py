"""The built-in task: deterministic by seed, arithmetic that checks out, knobs that hold, the CLI."""

from __future__ import annotations

import json
import re

import pytest

from curator.synth import main, synthesize

EQUATION = re.compile(r"(\d+(?: [-+*] \d+)+) = (\d+)")


def test_same_seed_same_problems_other_seed_other_problems():
    assert synthesize(50, seed=11, nesting=0.5) == synthesize(50, seed=11, nesting=0.5)
    assert synthesize(50, seed=11) != synthesize(50, seed=12)
    assert len({r["id"] for r in synthesize(200, seed=3)}) == 200


@pytest.mark.parametrize("nesting", [0.0, 1.0])
def test_chains_compute_the_answer(nesting):
    for row in synthesize(100, seed=5, nesting=nesting):
        lines = row["sequential"].splitlines()
        assert lines[-1] == f"So the answer is \\boxed{{{row['answer']}}}."
        for line in lines[:-1]:
            expression, result = EQUATION.search(line).groups()
            assert eval(expression) == int(result), line  # every step is correct arithmetic
        # every question number appears in the chain and vice versa no result is a question number
        question_numbers = set(re.findall(r"\d+", row["question"]))
        results = {EQUATION.search(line).group(2) for line in lines[:-1]}
        assert not question_numbers & results
        assert int(row["answer"]) > 0


def test_knobs_hold():
    for row in synthesize(60, seed=2, k=(3, 3), digits=(1, 1)):
        lines = row["sequential"].splitlines()
        assert len(lines) == 3 + 2  # three parts, the total, the answer
        operands = [int(n) for line in lines[:-2] for n in EQUATION.search(line).group(1).split() if n.isdigit()]
        assert max(operands) <= 9 + 9  # one-digit operands (a remainder's minuend is one larger)
    nested = synthesize(40, seed=2, k=(2, 2), nesting=1.0)
    assert all(len(r["sequential"].splitlines()) == 2 * 3 + 2 for r in nested)
    with pytest.raises(ValueError, match="nesting is a probability"):
        synthesize(1, nesting=2.0)
    with pytest.raises(ValueError, match="k must satisfy"):
        synthesize(1, k=(3, 2))


def test_cli_writes_jsonl(tmp_path):
    out = tmp_path / "synth.jsonl"
    assert main(["synth", "--n", "25", "--seed", "4", "--k", "2-3", "--digits", "1-2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == synthesize(25, seed=4, k=(2, 3), digits=(1, 2))
    assert set(rows[0]) == {"id", "question", "sequential", "answer"}
    assert main(["synth", "--n", "5", "--task", "most", "--k", "4", "--bags", "3", "--out", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == synthesize(
        5, k=(4, 4), bags=(3, 3), task="most"
    )


def test_problems_are_short():
    # the demo trains a 135M model on CPU: question + chain stay within a couple of hundred tokens
    for row in synthesize(200, seed=9):
        assert len(row["question"]) + len(row["sequential"]) < 700


def test_worked_chains_show_every_equality_and_stay_parallelisable():
    from curator.pipeline import curate_record, make_structurer
    from modeling_multiverse import parse_text

    structurer = make_structurer("rules")
    for row in synthesize(60, seed=4, k=(3, 4), digits=(2, 2), worked=True):
        lines = row["sequential"].splitlines()
        for line in lines[:-1]:
            chain = line.split(": ", 1)[1].rstrip(".")
            if "." in chain:  # a restated part: "Tom has ... . 2 * 43 = ... = 86. Tom has 86 coins"
                chain = chain.split(". ")[1]
            sides = [eval(side) for side in chain.split(" = ")]
            assert len(set(sides)) == 1, line  # every side of every chain has the same value
        curated = curate_record(row, structurer)
        assert curated["status"] == "converted", curated["reason"]
        (block,) = parse_text(curated["multiverse"], require_think=True).blocks
        assert len(block.paths) == len(lines) - 2  # one path per part; the total is the conclusion


def test_most_task_adds_one_bag_at_a_time_and_asks_for_the_largest_count():
    from curator.pipeline import curate_record, make_structurer
    from modeling_multiverse import parse_text

    structurer = make_structurer("rules")
    rows = synthesize(80, seed=6, k=(4, 5), bags=(3, 5), task="most")
    assert rows == synthesize(80, seed=6, k=(4, 5), bags=(3, 5), task="most")
    for row in rows:
        *people, comparison, answer = row["sequential"].splitlines()
        totals = {}
        for line in people:
            name, rest = line.split(": ", 1)
            clause = re.match(rf"{name} has (\d+) bags with ([\d, ]+) and (\d+) (\w+)\. ", rest)
            assert clause.group(0)[:-2] in row["question"]  # the part restated word for word
            given = [int(n) for n in clause.group(2).split(", ")] + [int(clause.group(3))]
            assert len(given) == int(clause.group(1)) and 3 <= len(given) <= 5
            assert all(1 <= n <= 9 for n in given)
            running = given[0]
            additions = re.findall(r"(\d+) \+ (\d+) = (\d+)", rest)
            for (a, b, total), count in zip(additions, given[1:], strict=True):
                assert (int(a), int(b), int(total)) == (running, count, running + count)  # one bag at a time
                running += count
            assert rest.endswith(f"{name}'s total is {running}.")
            totals[name] = running
        assert len(set(totals.values())) == len(totals)
        most = max(totals.values())
        assert row["answer"] == str(most) and answer == f"So the answer is \\boxed{{{most}}}."
        listed = ", ".join(f"{name}'s total is {value}" for name, value in totals.items())
        assert comparison == f"{listed.rsplit(', ', 1)[0]} and {listed.rsplit(', ', 1)[1]}, so the most is {most}."
        curated = curate_record(row, structurer)
        assert curated["status"] == "converted", curated["reason"]
        (block,) = parse_text(curated["multiverse"], require_think=True).blocks
        assert len(block.paths) == len(people)  # one path per person; the comparison is the conclusion
    with pytest.raises(ValueError, match="task must be"):
        synthesize(1, task="median")
