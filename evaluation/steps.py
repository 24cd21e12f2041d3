"""Step accuracy on the built-in task: every written sum and every person's total, checked against the problem.

A final answer can be right by luck (the largest of five wrong counts can still be the right number) and
wrong for one slip among many right steps; the steps say how sound a model's arithmetic is. A built-in
record (`multiverse data synth`) carries its problem's true worked solution, `sequential`, computed from the
numbers of the question; the response is checked against it.

What is checked, per problem:
- **sums**: every standalone `a + b = c` a response writes (not part of a longer chain such as
  `a + b + c = d`). A sum is right when it is one of the problem's own sums: the arithmetic is right *and*
  its operands are the problem's numbers (a bag count, a running total), so `9 + 4 = 13` where the
  problem adds 9 and 5 is wrong although 9 + 4 is 13. The order of the two operands does not matter.
  Each true sum is matched at most once: writing a right sum twice does not count twice.
- **totals**: each person whose total the solution states (`Tom's total is 26`) is one check, right when
  the response states that person's total at least once and every statement of it is the true total
  (the path that computes it and the conclusion that repeats it).

A problem's step units are `max(sums written, sums of the solution)` plus its people: a missing sum and an
extra or wrong one each cost a unit, so a response that stops early or loops cannot score well.
`step_accuracy` over a set of problems is (right sums + right totals) / (step units), pooled.

Tags are removed first, so the same check serves a Multiverse response and a sequential one.

Example:
    >>> truth = "Tom: Tom has 2 bags with 9 and 3 coins. 9 + 3 = 12. Tom's total is 12."
    >>> check_steps("Tom: 9 + 3 = 12. Tom's total is 12.", truth)["step_units_right"]
    2
    >>> check_steps("Tom: 9 + 3 = 11. Tom's total is 11.", truth)["step_units_right"]
    0
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from modeling_multiverse.structure import TEXT, split_tags, tag_kind

# `a + b = c` on its own: no operator or `=` right before `a`, no operator right after `c`
_SUM = re.compile(r"(?<![\d+\-*/=]\s)(?<![\d+\-*/=])(\d+)\s*\+\s*(\d+)\s*=\s*(\d+)(?!\d)(?!\s*[+\-*/])")
_TOTAL = re.compile(r"\b([A-Z][a-z]+)'s total is (\d+)")

STEP_FIELDS = (
    "sums_written", "sums_expected", "sums_right", "totals_expected", "totals_right", "step_units", "step_units_right"
)
"""The per-problem counts `check_steps` returns (and `evaluate` stores in each record)."""


def plain_text(response: str) -> str:
    """The response's text with every tag replaced by a space (so `12</Path><Path>3` stays two numbers).

    >>> plain_text("<Path>\\n1: 2 + 3 = 5</Path><Path>4</Path>")
    ' \\n1: 2 + 3 = 5  4 '
    """
    return "".join(piece if tag_kind(piece) == TEXT else " " for piece in split_tags(response))


def written_sums(text: str) -> list[tuple[int, int, int]]:
    """The standalone `a + b = c` sums of a text, operands in order of size.

    >>> written_sums("9 + 5 = 14. 14 + 2 = 16. 1 + 2 + 3 = 6. 7 + 8 = 15 + 1")
    [(5, 9, 14), (2, 14, 16)]
    """
    sums = []
    for a, b, c in _SUM.findall(text):
        low, high = sorted((int(a), int(b)))
        sums.append((low, high, int(c)))
    return sums


def stated_totals(text: str) -> dict[str, list[int]]:
    """Every `NAME's total is N` of a text, by name, in order.

    >>> stated_totals("Tom's total is 12. Ann's total is 9, Tom's total is 13")
    {'Tom': [12, 13], 'Ann': [9]}
    """
    totals: dict[str, list[int]] = {}
    for name, value in _TOTAL.findall(text):
        totals.setdefault(name, []).append(int(value))
    return totals


def reference_steps(sequential: str) -> tuple[Counter, dict[str, int]]:
    """The true sums (a multiset) and each person's true total from a problem's worked solution.

    Raises ValueError when the solution's own arithmetic is wrong: it is not a reference then.

    >>> sums, totals = reference_steps("Tom: 9 + 3 = 12. 12 + 4 = 16. Tom's total is 16.")
    >>> sorted(sums), totals
    ([(3, 9, 12), (4, 12, 16)], {'Tom': 16})
    """
    sums = Counter(written_sums(sequential))
    for a, b, c in sums:
        if a + b != c:
            raise ValueError(f"the worked solution writes {a} + {b} = {c}: not a reference")
    totals: dict[str, int] = {}
    for name, values in stated_totals(sequential).items():
        if len(set(values)) != 1:
            raise ValueError(f"the worked solution gives {name} two totals {sorted(set(values))}: not a reference")
        totals[name] = values[0]
    return sums, totals


def check_steps(response: str, sequential: str) -> dict[str, int]:
    """Per-problem step counts of `response` against the worked solution `sequential` (see the module doc).

    >>> truth = "Ann: 2 + 4 = 6. 6 + 5 = 11. Ann's total is 11."
    >>> counts = check_steps("Ann: 2 + 4 = 6. 6 + 5 = 12. Ann's total is 12.", truth)
    >>> counts["sums_right"], counts["totals_right"], counts["step_units"]
    (1, 0, 3)
    """
    expected, totals = reference_steps(sequential)
    text = plain_text(response)
    written = written_sums(text)
    remaining = Counter(expected)
    right = 0
    for step in written:
        if remaining[step] > 0:
            remaining[step] -= 1
            right += 1
    stated = stated_totals(text)
    totals_right = sum(1 for name, value in totals.items() if stated.get(name) and set(stated[name]) == {value})
    n_expected = sum(expected.values())
    units = max(len(written), n_expected) + len(totals)
    return {
        "sums_written": len(written),
        "sums_expected": n_expected,
        "sums_right": right,
        "totals_expected": len(totals),
        "totals_right": totals_right,
        "step_units": units,
        "step_units_right": right + totals_right,
    }


def step_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Pooled step counts and `step_accuracy` of graded records; None when no record was step-checked.

    >>> step_summary([{"step_units": 4, "step_units_right": 3, "sums_written": 2, "sums_expected": 2,
    ...                "sums_right": 2, "totals_expected": 2, "totals_right": 1}])["step_accuracy"]
    0.75
    """
    checked = [r for r in records if r.get("step_units") is not None]
    if not checked:
        return None
    counts = {name: sum(int(r[name]) for r in checked) for name in STEP_FIELDS}
    units = counts["step_units"]
    return {
        "step_accuracy": counts["step_units_right"] / units if units else 0.0,
        "sum_accuracy": counts["sums_right"] / counts["sums_written"] if counts["sums_written"] else 0.0,
        "total_accuracy": counts["totals_right"] / counts["totals_expected"] if counts["totals_expected"] else 0.0,
        "step_counts": counts,
        "step_checked": len(checked),
    }
