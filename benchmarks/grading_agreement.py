"""How often the math-verify grader agrees with the grader it replaced, on real MATH500 and AIME answers.

The old grader is `evaluation/grading.py` as it was at `--old-ref` (its own normal forms, exact fractions and
unordered lists), read from git; the new one is this checkout's (`math_verify` for equivalence). Both grade:
- `math500-solutions`: each MATH500 problem's `answer` against its reference `solution`'s last `\\boxed{}`;
- `math500-shuffled`: the same solutions against another problem's answer (seeded shuffle): both should say no;
- `traces`: the held-out responses of a Multiverse model (`../shared/traces`) against their problems' answers,
  with a third column, math-verify run on the whole response as TRL's `accuracy_reward` does;
- `aime-solutions`: the AIME 2024/2025 solutions against their integer answers;
- `probes`: made-up boxed answers in forms a model writes (`PROBES`), where the graders are expected to differ.
It prints each set's counts, then every disagreement: id, reference, predicted, old verdict, new verdict.

    python benchmarks/grading_agreement.py
    python benchmarks/grading_agreement.py --shared ../shared --old-ref 2b7a647
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path

from math_verify import parse, verify

from evaluation.grading import extract_answer, grade
from runtime.jsonl import iter_jsonl

ROOT = Path(__file__).resolve().parent.parent
OLD_REF = "2b7a647"  # main before math-verify: the grader `multiverse eval` used until then

Case = tuple[str, str, str, str]  # (id, response, reference, kind)

PROBES: tuple[tuple[str, str], ...] = (  # (predicted, reference)
    ("2^{10}", "1024"),
    (r"\sqrt{8}", r"2\sqrt{2}"),
    (r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
    ("x^2+2x+1", "(x+1)^2"),
    (r"\{1,2\}", "1,2"),
    (r"(1,\infty)", "x>1"),
    ("10^{-2}", "0.01"),
    ("0.3333333", r"\frac13"),
    ("0.333", r"\frac13"),
    ("50\\%", "0.5"),
    ("0.5", r"\frac{1}{2}\%"),
    ("3+2i", "2i+3"),
    (r"\pi", "3.14159"),
    ("2m", "2"),
)


def load_old_grader(ref: str) -> Callable[[str, str, str], bool]:
    """`grade` from `evaluation/grading.py` at git `ref`, loaded as a module of its own."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:evaluation/grading.py"],
            check=True, capture_output=True, text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        sys.exit(f"cannot read evaluation/grading.py at git ref {ref!r} in {ROOT}: {error}")
    module = types.ModuleType("old_grading")
    exec(compile(source, f"{ref}:evaluation/grading.py", "exec"), module.__dict__)
    return module.grade


def whole_text_verdict(response: str, reference: str) -> bool:
    """math-verify on the whole response, the way TRL's `accuracy_reward` calls it (no extraction of ours)."""
    return verify(parse(f"${reference}$"), parse(response))


def read(path: Path) -> list[dict]:
    if not path.is_file():
        sys.exit(f"{path}: missing (pass --shared, the folder holding data/ and traces/)")
    return [record for _, record in iter_jsonl(path)]


def math500_cases(shared: Path) -> tuple[list[Case], list[Case], dict[str, dict]]:
    """(solutions against their answers, solutions against shuffled answers, records by trace id)."""
    records = read(shared / "data" / "MATH500_test.jsonl")
    own = [(r["unique_id"], r["solution"], r["answer"], "math") for r in records]
    others = [r["answer"] for r in records]
    random.Random(0).shuffle(others)
    shuffled = [(r["unique_id"], r["solution"], other, "math") for r, other in zip(records, others)]
    # traces name problems "test_algebra_1184" for MATH500's "test/algebra/1184.json"
    by_trace_id = {r["unique_id"].removesuffix(".json").replace("/", "_"): r for r in records}
    return own, shuffled, by_trace_id


def trace_cases(shared: Path, by_trace_id: dict[str, dict]) -> list[Case]:
    cases = []
    for trace in read(shared / "traces" / "math500_multiverse_responses.jsonl"):
        if trace["id"] not in by_trace_id:
            sys.exit(f"traces: id {trace['id']!r} is not a MATH500 problem")
        cases.append((trace["id"], trace["response"], by_trace_id[trace["id"]]["answer"], "math"))
    return cases


def aime_cases(shared: Path) -> list[Case]:
    return [
        (f"{name}:{r.get('id', n)}", r["solution"], str(r["answer"]), "aime")
        for name in ("aime24_figures.jsonl", "aime2025-I.jsonl", "aime2025-II.jsonl")
        for n, r in enumerate(read(shared / "data" / name))
        if r.get("solution")
    ]


def compare(name: str, cases: Iterable[Case], old_grade, whole_text: bool = False) -> list[tuple]:
    """Grades every case both ways, prints the counts, returns the disagreements."""
    cases = list(cases)
    old_right = new_right = whole_right = agree = 0
    disagreements = []
    for case_id, response, reference, kind in cases:
        old, new = old_grade(response, reference, kind), grade(response, reference, kind)
        old_right, new_right, agree = old_right + old, new_right + new, agree + (old == new)
        if whole_text:
            whole_right += whole_text_verdict(response, reference)
        if old != new:
            disagreements.append((name, case_id, reference, extract_answer(response, kind), old, new))
    line = f"{name}: {len(cases)} cases, old grader {old_right} correct, new {new_right}, agree on {agree}"
    if whole_text:
        line += f" (math-verify on the whole text: {whole_right})"
    print(line, flush=True)
    return disagreements


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="folder with data/ and traces/")
    parser.add_argument("--old-ref", default=OLD_REF, help="git ref of the grader to compare with")
    args = parser.parse_args(argv)
    old_grade = load_old_grader(args.old_ref)
    own, shuffled, by_trace_id = math500_cases(args.shared)
    disagreements = compare("math500-solutions", own, old_grade)
    disagreements += compare("math500-shuffled", shuffled, old_grade)
    disagreements += compare("traces", trace_cases(args.shared, by_trace_id), old_grade, whole_text=True)
    disagreements += compare("aime-solutions", aime_cases(args.shared), old_grade)
    probes = [(f"probe-{n}", f"\\boxed{{{pred}}}", ref, "math") for n, (pred, ref) in enumerate(PROBES)]
    disagreements += compare("probes", probes, old_grade)
    print(f"{len(disagreements)} disagreements (set, id, reference, predicted, old verdict, new verdict)")
    for row in disagreements:
        print("\t".join(map(str, row)))


if __name__ == "__main__":
    main()
