"""Validators every converted trace passes: grammar, labels vs outlines, content preservation, path independence.

`validate_response` runs them in that order and returns the first failure as a reason
("<check>: <what is wrong and where>") plus the scores of the checks that ran.

Example:
    >>> from curator.plan import ParallelPlan, render_response
    >>> chain = "A: 1 + 2 = 3.\\nB: 4 + 5 = 9.\\nTotal: 3 + 9 = 12.\\nSo the answer is \\\\boxed{12}."
    >>> plan = ParallelPlan(["A", "B"], [["A: 1 + 2 = 3."], ["B: 4 + 5 = 9."]], "Total: 3 + 9 = 12.")
    >>> response = render_response([plan], "So the answer is \\\\boxed{12}.")
    >>> validate_response(response, chain).ok
    True
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from modeling_multiverse.structure import Block, Structure, StructureError, parse_text, remove_tags, split_tags

from .quantities import analyse, numbers_in

DEFAULT_MIN_COVERAGE = 0.95
_LABEL = re.compile(r"^\s*([\d.]+)\s*:(.*)$", re.DOTALL)
_LINE_LABEL = re.compile(r"^\s*\d+(?:\.\d+)*:\s?", re.MULTILINE)


def _flat(items: list[str]) -> str:
    """Flattened text without tags and without the `1:`/`2.1:` labels (a label is not a quantity)."""
    return _LINE_LABEL.sub("", remove_tags("".join(items)))


@dataclass
class Verdict:
    ok: bool
    reason: str | None = None
    scores: dict = field(default_factory=dict)


def coverage(original: str, response: str) -> float:
    """Share of the original's words (with multiplicity) found in the flattened response: 1.0 = nothing lost."""
    want = Counter(original.split())
    if not want:
        return 1.0
    have = Counter(remove_tags(response).split())
    return sum((want & have).values()) / sum(want.values())


def structure_scores(structure: Structure) -> dict:
    """Blocks, branches (paths over all blocks), widest block and nesting depth of a parsed response."""
    blocks = list(structure.iter_blocks())
    return {
        "blocks": len(blocks),
        "branches": sum(len(b.paths) for b in blocks),
        "max_paths": structure.max_paths,
        "depth": structure.max_depth,
    }


def check_labels(structure: Structure, items: list[str]) -> str | None:
    """Outlines have text; paths have a body; nested labels extend their enclosing path's label."""

    def walk(block: Block, parent: str | None) -> str | None:
        for k, (outline, unit) in enumerate(zip(block.outlines, block.paths)):
            where = f"block at item {block.open}, outline {k + 1}"
            if parent is not None and not str(outline.label).startswith(parent + "."):
                return f"label {outline.label!r} in {where} does not extend its path's label {parent!r}"
            if not _LABEL.match("".join(items[outline.open + 1 : outline.close])).group(2).strip():
                return f"outline {outline.label!r} in {where} has no text"
            body = "".join(items[unit.open + 1 : unit.close])
            if not remove_tags(_LABEL.match(body).group(2)).strip():
                return f"path {unit.label!r} in {where} is empty"
            for child in unit.blocks:
                problem = walk(child, unit.label)
                if problem:
                    return problem
        return None

    for block in structure.blocks:
        problem = walk(block, None)
        if problem:
            return problem
    return None


def independence_violations(structure: Structure, items: list[str], question: str = "") -> list[str]:
    """Paths that use a result first computed in a sibling path of the same block."""
    names_source = [line for line in _flat(items).splitlines() if line.strip()]
    names = {d for q in analyse(names_source, question) for d in q.defines if not d[0].isdigit()}
    problems = []
    for block in structure.iter_blocks():
        before = _flat(items[: block.open]) + "\n" + question
        known = numbers_in(before) | {
            n for n in names if re.search(rf"(?<![A-Za-z_\d]){re.escape(n)}(?![A-Za-z_\d])", before)
        }
        defined, used = [], []
        for unit in block.paths:
            lines = [line for line in _flat(items[unit.open + 1 : unit.close]).splitlines() if line.strip()]
            quantities = analyse(lines, question)
            own = set().union(*(q.defines for q in quantities))
            defined.append(own - known)
            used.append(set().union(*(q.uses for q in quantities)) - own)
        for j, uses in enumerate(used):
            for k, defines in enumerate(defined):
                leaked = uses & defines if k != j else set()
                if leaked:
                    problems.append(
                        f"path {block.paths[j].label!r} uses {sorted(leaked)} first computed in sibling path "
                        f"{block.paths[k].label!r} (block at item {block.open})"
                    )
    return problems


def validate_response(
    response: str, original: str, question: str = "", min_coverage: float = DEFAULT_MIN_COVERAGE
) -> Verdict:
    """Run every check on a Multiverse `response` converted from the chain `original`."""
    try:
        structure = parse_text(response, require_think=True)
    except StructureError as err:
        return Verdict(False, f"grammar: {err}")
    items = split_tags(response)
    scores = structure_scores(structure)
    problem = check_labels(structure, items)
    if problem:
        return Verdict(False, f"labels: {problem}", scores)
    scores["coverage"] = round(coverage(original, response), 4)
    if scores["coverage"] < min_coverage:
        return Verdict(
            False, f"coverage: {scores['coverage']:.3f} of the original words kept, below {min_coverage}", scores
        )
    violations = independence_violations(structure, items, question)
    scores["independence_violations"] = len(violations)
    if violations:
        return Verdict(False, f"independence: {violations[0]}", scores)
    return Verdict(True, None, scores)
