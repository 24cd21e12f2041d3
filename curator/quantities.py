"""Which quantities a step of a chain of thought defines and which it uses.

A step *defines* the value at the right end of an equation (`3 * 12 = 36` defines 36), a name on the
left of an assignment (`x = 5`, `f(9) = 1/5`, `Let n be ...`) and *uses* every other number or known
name it mentions. Numbers given in the question are never results: a step mentioning them reads the
question, not an earlier step. Both the rules structurer (which steps are independent) and the
path-independence validator (no path reads a result first computed in a sibling) use this.

Example:
    >>> q = step_quantities("Tom's coins: 3 * 12 = 36.")
    >>> sorted(q.defines), sorted(q.uses)
    (['36'], ['12', '3'])
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NUMBER = re.compile(r"(?<![A-Za-z_\d.])\d+(?:\.\d+)?(?:/\d+)?(?!\d)")
# the right end of an equation is a result only when it is a bare number (not `1 * (x + 1)`)
RESULT = re.compile(r"^\s*\$?\s*-?(\d+(?:\.\d+)?(?:/\d+)?)(?!\d|\.\d|\s*[-+*/^×·(])")
# `=` but not `==`, `<=`, `>=`, `!=`
EQUALS = re.compile(r"(?<![=<>!])=(?!=)")
NAME = r"[A-Za-z](?:_\{?\w+\}?|\d)?(?:\([^()=]{1,12}\))?"
ASSIGNED_NAME = re.compile(rf"(?:^|[\s:,(])({NAME})\s*$")
LET = re.compile(rf"\b[Ll]et\s+({NAME})\s+(?:be|denote|equal)\b")


@dataclass(frozen=True)
class StepQuantities:
    defines: frozenset[str]
    uses: frozenset[str]


def numbers_in(text: str) -> set[str]:
    """The numbers a text mentions, as written."""
    return set(NUMBER.findall(text))


def step_quantities(step: str, names: Iterable[str] = (), given: Iterable[str] = ()) -> StepQuantities:
    """What `step` defines and uses. `names`: names defined anywhere in the chain; `given`: question numbers."""
    given = set(given)
    defines: set[str] = set()
    for equation in _equations(step):
        sides = EQUALS.split(equation)
        if len(sides) < 2:
            continue
        result = RESULT.match(sides[-1])
        if result and result.group(1) not in given:
            defines.add(result.group(1))
        name = ASSIGNED_NAME.search(sides[0])
        if name:
            defines.add(name.group(1))
    defines.update(LET.findall(step))
    mentioned = numbers_in(step)
    mentioned.update(name for name in names if re.search(rf"(?<![A-Za-z_\d]){re.escape(name)}(?![A-Za-z_\d])", step))
    return StepQuantities(frozenset(defines), frozenset(mentioned - defines))


def _equations(step: str) -> list[str]:
    # one equation per clause: "so x = 3, and y = 4" holds two
    return [part for part in re.split(r"[,;]|\band\b|\bso\b", step) if EQUALS.search(part)]


def analyse(steps: Sequence[str], question: str = "") -> list[StepQuantities]:
    """Quantities of every step of a chain (names are collected over the whole chain first)."""
    given = numbers_in(question)
    names: set[str] = set()
    for step in steps:
        names.update(q for q in step_quantities(step, given=given).defines if not NUMBER.fullmatch(q))
    return [step_quantities(step, names, given) for step in steps]


def dependencies(quantities: Sequence[StepQuantities]) -> list[set[int]]:
    """`deps[j]`: the earlier steps whose results step j uses (for each value, its latest definer before j)."""
    latest: dict[str, int] = {}
    deps: list[set[int]] = []
    for j, q in enumerate(quantities):
        deps.append({latest[v] for v in q.uses if v in latest})
        for v in q.defines:
            latest[v] = j
    return deps
