"""The rules structurer on crafted chains, and the validators on crafted responses."""

from __future__ import annotations

import pytest

from curator.pipeline import curate_record
from curator.plan import ParallelPlan, render_response
from curator.quantities import analyse, dependencies
from curator.rules import RulesStructurer, plan_chain
from curator.synth import synthesize
from curator.validate import coverage, validate_response
from modeling_multiverse import format_parallel, format_response, parse_text


def blocks(plan):
    return [node for node in plan if isinstance(node, ParallelPlan)]


def test_dependencies_follow_defined_quantities():
    steps = ["Let x = 4.", "A: 3 * 12 = 36.", "Then y = x + 1 = 5.", "Total: 36 + 5 = 41."]
    assert dependencies(analyse(steps)) == [set(), set(), {0}, {1, 2}]


def test_independent_steps_then_a_combining_step_make_a_collective_block():
    steps = ["A: 3 * 12 = 36.", "B: 5 + 8 = 13.", "C: 20 - 6 = 14.", "Total: 36 + 13 + 14 = 63."]
    plan = plan_chain(steps)
    [block] = blocks(plan)
    assert block.kind == "collective" and block.outlines == ["A", "B", "C"]
    assert block.paths == [[steps[0]], [steps[1]], [steps[2]]] and block.conclusion == steps[3]


def test_a_dependent_chain_stays_sequential():
    steps = ["A: 3 * 12 = 36.", "B: 36 + 8 = 44.", "C: 44 - 6 = 38."]
    assert plan_chain(steps) == steps


def test_a_step_not_used_by_the_combining_step_stays_outside():
    steps = ["Note: 7 * 7 = 49.", "A: 2 * 9 = 18.", "B: 3 + 4 = 7.", "Sum: 18 + 7 = 25."]
    plan = plan_chain(steps)
    assert plan[0] == steps[0] and blocks(plan)[0].outlines == ["A", "B"]


def test_interleaved_threads_are_not_split():
    steps = ["a = 2 + 3 = 5", "b = 4 + 4 = 8", "c = 5 * 2 = 10", "d = 8 * 3 = 24", "e = 10 + 24 = 34"]
    plan = plan_chain(steps)
    # threads {a, c} and {b, d} interleave: no block over all four, but (c, d) are independent and e merges them
    [block] = blocks(plan)
    assert block.paths == [[steps[2]], [steps[3]]] and plan[:2] == steps[:2]


def test_commentary_attaches_to_its_step_and_nested_groups_nest():
    steps = [
        "P1: 2 * 9 = 18.", "P2: 3 * 7 = 21.", "P: 18 + 21 = 39.", "That was the first person.",
        "Q: 4 * 11 = 44.", "Total: 39 + 44 = 83.",
    ]
    [outer] = blocks(plan_chain(steps))
    assert len(outer.paths) == 2
    [inner] = blocks(outer.paths[0])
    assert inner.conclusion == "P: 18 + 21 = 39." and outer.paths[0][-1] == "That was the first person."
    assert blocks(plan_chain(steps, max_depth=1))[0].paths[0] == steps[:4]  # depth limit: no nested block


def test_cases_and_options_make_selective_blocks():
    steps = ["Case 1: n is even.", "Then n^2 = 4k^2 is 0 mod 4.",
             "Case 2: n is odd.", "Then n^2 = 4k^2 + 4k + 1 is 1 mod 4.",
             "So n^2 is 0 or 1 mod 4."]
    [block] = blocks(plan_chain(steps))
    assert block.kind == "selective" and block.conclusion == steps[-1]
    assert block.outlines[0].startswith("Case 1") and block.paths[1] == steps[2:4]
    options = [
        "(A) 12 is prime: false.",
        "(B) 13 is prime: true.",
        "(C) 15 is prime: false.",
        "Therefore the answer is (B).",
    ]
    [block] = blocks(plan_chain(options))
    assert len(block.paths) == 3 and block.conclusion == options[-1]


def test_synthetic_nested_problems_convert_with_nested_blocks():
    for row in synthesize(30, seed=8, nesting=1.0):
        result = curate_record(row, RulesStructurer())
        assert result["status"] == "converted", result["reason"]
        assert result["scores"]["depth"] == 2 and result["scores"]["coverage"] == 1.0


CHAIN = "A: 1 + 2 = 3.\nB: 4 + 5 = 9.\nTotal: 3 + 9 = 12.\nSo the answer is \\boxed{12}."
ANSWER = "So the answer is \\boxed{12}."


def test_validator_accepts_a_good_conversion():
    response = render_response(
        [ParallelPlan(["A", "B"], [["A: 1 + 2 = 3."], ["B: 4 + 5 = 9."]], "Total: 3 + 9 = 12.")], ANSWER
    )
    verdict = validate_response(response, CHAIN)
    assert verdict.ok and verdict.scores["branches"] == 2 and verdict.scores["coverage"] == 1.0


def test_validator_rejects_broken_grammar_with_an_offset():
    good = render_response(
        [ParallelPlan(["A", "B"], [["A: 1 + 2 = 3."], ["B: 4 + 5 = 9."]], "Total: 3 + 9 = 12.")], ANSWER
    )
    broken = good.replace(format_response("", "").split("\n")[-2], "", 1)  # drop </Think>
    verdict = validate_response(broken, CHAIN)
    assert not verdict.ok and verdict.reason.startswith("grammar: at char")


def test_validator_rejects_lost_content():
    response = format_response(
        format_parallel([("1", "A"), ("2", "B")], ["A: 1 + 2 = 3.", "B: 4 + 5 = 9."], "Sum."), ANSWER
    )
    verdict = validate_response(response, CHAIN)
    assert not verdict.ok and verdict.reason.startswith("coverage:") and verdict.scores["coverage"] < 0.95
    assert coverage(CHAIN, response) == pytest.approx(verdict.scores["coverage"], abs=1e-4)


def test_validator_rejects_a_path_using_a_sibling_result():
    chain = "A: 1 + 2 = 3.\nB: 3 + 5 = 8.\nTotal: 3 + 8 = 11.\n\\boxed{11}"
    response = format_response(
        format_parallel([("1", "A"), ("2", "B")], ["A: 1 + 2 = 3.", "B: 3 + 5 = 8."], "Total: 3 + 8 = 11."),
        "\\boxed{11}",
    )
    verdict = validate_response(response, chain)
    assert not verdict.ok and verdict.reason.startswith(
        "independence: path '2' uses ['3'] first computed in sibling path '1'"
    )
    # the same number given in the question is not a sibling's result
    assert validate_response(response, chain, question="Start from 3.").ok


def test_validator_rejects_empty_outlines_and_wrong_nested_labels():
    empty = format_response(format_parallel([("1", " "), ("2", "B")], ["x = 1 + 1 = 2", "y = 2 + 3 = 5"], "z"), "a")
    assert validate_response(empty, "x y z a").reason.startswith("labels: outline '1'")
    inner = format_parallel([("3.1", "a"), ("3.2", "b")], ["p", "q"], "r")
    nested = format_response(format_parallel([("1", "A"), ("2", "B")], [inner, "s"], "t"), "u")
    parse_text(nested, require_think=True)  # grammatical ...
    # ... but mislabelled
    assert "does not extend its path's label '1'" in validate_response(nested, "p q r s t u").reason


def test_recovery_benchmark_finds_every_block_of_rules_curated_traces(tmp_path):
    # round trip: responses the rules backend wrote, flattened, must be recovered block for block
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "curator_recovery.py"
    spec = importlib.util.spec_from_file_location("curator_recovery", script)
    recovery = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recovery)
    traces = tmp_path / "traces.jsonl"
    with open(traces, "w") as f:
        for row in synthesize(20, seed=3, nesting=0.5):
            f.write(
                json.dumps(
                    {"problem": row["question"], "response": curate_record(row, RulesStructurer())["multiverse"]}
                )
                + "\n"
            )
    assert recovery.main(["--traces", str(traces), "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["parsed"] == 20 and report["original_blocks"] > 20
    assert report["block_recall"] == 1.0 and report["block_precision"] == 1.0
