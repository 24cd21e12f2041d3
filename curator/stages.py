"""The LLM-assisted structurer: five stages from a sequential chain to a plan of parallel blocks.

1. split: the model groups the chain's lines into main steps and sub-steps (a summary tree);
2. group: for each list of sibling steps, the model names runs of independent steps (collective or
   selective) and the step that merges them;
3. rewrite: code turns every run into a block (recursively, so sub-steps give nested blocks);
4. refill: code fills each path with the original lines its steps cover, keeping every sentence;
5. map/reduce: the model writes each block's outlines, a context sentence that makes each path
   self-contained, and the conclusion when no original step merges the paths.

Every model answer is checked (JSON shape, line ranges, run bounds) and a bad one raises `StageError`
naming the stage; the pipeline retries the record with the reason fed back to the model.

Example:
    >>> structurer = LLMStructurer(backend)  # doctest: +SKIP
    >>> plan = structurer.plan(steps, question)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import prompts
from .backends import ChatBackend
from .plan import ParallelPlan, Plan


class StageError(ValueError):
    """A model answer a stage cannot use; the message names the stage and what is wrong."""


@dataclass
class StepNode:
    summary: str
    first: int
    last: int
    substeps: list[StepNode] = field(default_factory=list)


def parse_json_answer(text: str, stage: str) -> dict:
    """The JSON object in a model answer (code fences and chatter around it are tolerated)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise StageError(f"{stage}: the answer holds no JSON object: {text[:80]!r}")
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError as err:
        raise StageError(f"{stage}: invalid JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(value, dict):
        raise StageError(f"{stage}: expected a JSON object")
    return value


def _tree(raw: object, first: int, last: int, where: str) -> list[StepNode]:
    """Check that `raw` steps cover lines first..last contiguously, in order."""
    if not isinstance(raw, list) or not raw:
        raise StageError(f"split: {where} has no steps")
    nodes, expect = [], first
    for k, item in enumerate(raw):
        try:
            a, b = int(item["first"]), int(item["last"])
            summary = str(item.get("summary", "")).strip()
        except (KeyError, TypeError, ValueError):
            raise StageError(f"split: step {k} of {where} lacks integer 'first'/'last'") from None
        if a != expect or b < a or b > last:
            raise StageError(
                f"split: step {k} of {where} covers lines {a}-{b}, expected to start at {expect} and end by {last}"
            )
        children = item.get("substeps") or []
        node = StepNode(summary or f"lines {a}-{b}", a, b, _tree(children, a, b, f"step {a}-{b}") if children else [])
        nodes.append(node)
        expect = b + 1
    if expect != last + 1:
        raise StageError(f"split: {where} leaves lines {expect}-{last} uncovered")
    return nodes


class LLMStructurer:
    """Plans a chain's parallel blocks with a chat model. `max_depth` bounds nesting.

    Thread-safe when the backend is: each `plan` call keeps its state in its own `_ChainPlanner`.
    """

    def __init__(self, backend: ChatBackend, max_depth: int = 2):
        self.backend = backend
        self.max_depth = max_depth

    def plan(self, steps: Sequence[str], question: str = "", feedback: str | None = None) -> Plan:
        """The plan of `steps`; `feedback` is the reason a previous attempt was rejected."""
        return _ChainPlanner(self.backend, self.max_depth, list(steps), question, feedback).plan()


class _ChainPlanner:
    """The five stages for one chain."""

    def __init__(self, backend: ChatBackend, max_depth: int, lines: list[str], question: str, feedback: str | None):
        self.backend, self.max_depth = backend, max_depth
        self.lines, self.question, self.feedback = lines, question, feedback

    def _ask(self, prompt: str, stage: str) -> dict:
        content = prompt + (prompts.FEEDBACK.format(reason=self.feedback) if self.feedback else "")
        answer = self.backend.complete(
            [{"role": "system", "content": prompts.SYSTEM}, {"role": "user", "content": content}]
        )
        return parse_json_answer(answer, stage)

    def plan(self) -> Plan:
        numbered = "\n".join(f"[{i}] {line}" for i, line in enumerate(self.lines))
        answer = self._ask(prompts.SPLIT.format(question=self.question, numbered=numbered), "split")
        tree = _tree(answer.get("steps"), 0, len(self.lines) - 1, "the solution")
        return self._plan_siblings(tree, depth=0)

    def _text(self, node: StepNode) -> list[str]:
        return self.lines[node.first : node.last + 1]

    def _plan_node(self, node: StepNode, depth: int) -> Plan:
        if node.substeps and depth < self.max_depth:
            return self._plan_siblings(node.substeps, depth)
        return self._text(node)

    def _plan_siblings(self, nodes: list[StepNode], depth: int) -> Plan:
        groups = self._groups(nodes) if len(nodes) >= 2 and depth < self.max_depth else []
        plan: Plan = []
        at = 0
        for first, last, kind, merge in groups:
            for node in nodes[at:first]:
                plan += self._plan_node(node, depth)
            members = nodes[first : last + 1]
            paths = [self._plan_node(node, depth + 1) for node in members]
            merged = "\n".join(self._text(nodes[merge])) if merge is not None else None
            plan.append(self._map_reduce(members, paths, kind, merged, members[0].first))
            at = last + 1 if merge is None else merge + 1
        for node in nodes[at:]:
            plan += self._plan_node(node, depth)
        return plan

    def _groups(self, nodes: list[StepNode]) -> list[tuple[int, int, str, int | None]]:
        listing = "\n".join(f"Step {k}: {n.summary}\n  " + "\n  ".join(self._text(n)) for k, n in enumerate(nodes))
        answer = self._ask(prompts.GROUP.format(question=self.question, steps=listing), "group")
        raw = answer.get("groups")
        if not isinstance(raw, list):
            raise StageError("group: the answer has no 'groups' list")
        groups, free_from = [], 0
        for k, item in enumerate(sorted(raw, key=lambda g: int(g.get("first", -1)) if isinstance(g, dict) else -1)):
            try:
                first, last = int(item["first"]), int(item["last"])
                kind = item.get("kind", "collective")
                merge = None if item.get("merge") is None else int(item["merge"])
            except (KeyError, TypeError, ValueError):
                raise StageError(f"group: run {k} lacks integer 'first'/'last'") from None
            if not free_from <= first < last < len(nodes):
                raise StageError(
                    f"group: run {first}-{last} overlaps another run or lies outside steps 0-{len(nodes) - 1}"
                )
            if kind not in ("collective", "selective"):
                raise StageError(f"group: run {first}-{last} has kind {kind!r}, expected 'collective' or 'selective'")
            if merge is not None and merge != last + 1:
                raise StageError(
                    f"group: run {first}-{last} merges at step {merge}, expected the next step {last + 1} or null"
                )
            if merge is not None and merge >= len(nodes):
                raise StageError(f"group: run {first}-{last} merges at step {merge}, past the last step")
            groups.append((first, last, kind, merge))
            free_from = last + 1 if merge is None else merge + 1
        return groups

    def _map_reduce(
        self, members: list[StepNode], paths: list[Plan], kind: str, merged: str | None, first_line: int
    ) -> ParallelPlan:
        n = len(members)
        listing = "\n".join(f"Part {k + 1}:\n" + "\n".join(self._text(m)) for k, m in enumerate(members))
        before = "\n".join(self.lines[max(0, first_line - 12) : first_line]) or "(the start)"
        request = prompts.CONCLUSION_GIVEN if merged is not None else prompts.CONCLUSION_WANTED
        answer = self._ask(
            prompts.MAP_REDUCE.format(
                question=self.question, before=before, n=n, paths=listing, conclusion_request=request
            ),
            "map/reduce",
        )
        outlines, context = answer.get("outlines"), answer.get("context") or [""] * n
        if (
            not isinstance(outlines, list)
            or len(outlines) != n
            or not all(isinstance(o, str) and o.strip() for o in outlines)
        ):
            raise StageError(f"map/reduce: expected {n} non-empty outlines, got {str(outlines)[:80]}")
        if not isinstance(context, list) or len(context) != n:
            raise StageError(f"map/reduce: expected {n} context sentences, got {str(context)[:80]}")
        conclusion = merged if merged is not None else answer.get("conclusion")
        if not isinstance(conclusion, str) or not conclusion.strip():
            raise StageError("map/reduce: no conclusion written")
        return ParallelPlan(
            outlines=[o.strip() for o in outlines], paths=paths, conclusion=conclusion, kind=kind,
            context=[str(c or "").strip() for c in context],
        )
