"""The intermediate form every backend produces: a chain cut into steps, and a tree of parallel blocks over them.

A `Plan` is a list of nodes; a node is a step (its original text, untouched) or a `ParallelPlan`
whose paths are Plans again (nesting). Rendering writes the tags only through the core writers
(`format_parallel`, `format_response`), so the curator never spells a tag.

Example:
    >>> steps = split_chain("A: 1 + 2 = 3.\\nB: 4 + 5 = 9.\\nTotal: 3 + 9 = 12.\\nSo the answer is \\\\boxed{12}.")
    >>> think, answer = split_answer(steps)
    >>> block = ParallelPlan(outlines=["A", "B"], paths=[[think[0]], [think[1]]], conclusion=think[2])
    >>> from modeling_multiverse.structure import parse_text
    >>> parse_text(render_response([block], answer), require_think=True).max_paths
    2
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from modeling_multiverse.structure import format_parallel, format_response


@dataclass
class ParallelPlan:
    """One block: `outlines[k]` is the Map text of `paths[k]`; `conclusion` is the Reduce text.

    `kind` is "collective" (every path contributes to the result) or "selective" (alternatives explored).
    """

    outlines: list[str]
    paths: list[list[Node]]
    conclusion: str
    kind: str = "collective"
    context: list[str] = field(default_factory=list)  # per path: a sentence making it self-contained, or ""
    # Where it came from, when known (rules backend): first/last original step of each path and of the block.
    path_spans: list[tuple[int, int]] = field(default_factory=list)
    span: tuple[int, int] | None = None


Node = str | ParallelPlan
Plan = list[Node]


def split_chain(chain: str) -> list[str]:
    """The steps of a chain of thought: its non-empty lines, stripped. Steps are never rewritten."""
    return [line.strip() for line in chain.splitlines() if line.strip()]


def split_answer(steps: list[str]) -> tuple[list[str], str]:
    """(think steps, answer): the answer is the last step holding `\\boxed`, else the last step."""
    if not steps:
        raise ValueError("the chain of thought is empty")
    for i in range(len(steps) - 1, -1, -1):
        if "\\boxed" in steps[i]:
            return steps[:i] + steps[i + 1 :], steps[i]
    return steps[:-1], steps[-1]


def iter_blocks(plan: Plan, depth: int = 0) -> Iterator[tuple[ParallelPlan, int]]:
    """Every block with its depth, outer before inner."""
    for node in plan:
        if isinstance(node, ParallelPlan):
            yield node, depth
            for path in node.paths:
                yield from iter_blocks(path, depth + 1)


def render_body(plan: Plan, prefix: str = "") -> str:
    """The Think body of a plan; nested labels extend their path's label (path 2 holds 2.1, 2.2)."""
    pieces = []
    for node in plan:
        if isinstance(node, ParallelPlan):
            labels = [f"{prefix}{k + 1}" for k in range(len(node.paths))]
            bodies = []
            for k, (label, path) in enumerate(zip(labels, node.paths)):
                context = node.context[k] if k < len(node.context) else ""
                body = render_body(path, prefix=f"{label}.")
                bodies.append(f"{context.strip()}\n{body}" if context.strip() else body)
            pieces.append(format_parallel(list(zip(labels, node.outlines)), bodies, node.conclusion))
        else:
            pieces.append(node)
    return "\n".join(pieces)


def render_response(plan: Plan, answer: str) -> str:
    """The full Multiverse response: the think body, then the answer (`format_response`)."""
    return format_response(render_body(plan), answer)
