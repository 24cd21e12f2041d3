"""The `rules` backend: an offline structurer for step-structured solutions.

Two patterns become parallel blocks:
- **collective**: a run of consecutive steps that splits into >= 2 groups with no dependency between
  groups (dependency = a step uses a quantity another step defines, see `quantities`), each group a
  contiguous run, followed by a step that uses a result of *every* group. The groups become paths and
  that combining step becomes the Conclusion. Each path is structured again (nesting).
- **selective**: "Case 1 / Case 2", "Option (A) ... (D)" or "(A) ... (B)" markers at the start of steps:
  each case becomes a path; a following "So/Therefore/Thus/..." step becomes the Conclusion.

Steps are never rewritten: every original line lands in exactly one place of the plan.

Example:
    >>> plan = plan_chain(["A: 2 + 3 = 5.", "B: 4 * 7 = 28.", "Total: 5 + 28 = 33."])
    >>> plan[0].outlines, plan[0].conclusion
    (['A', 'B'], 'Total: 5 + 28 = 33.')
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .plan import ParallelPlan, Plan
from .quantities import StepQuantities, analyse, dependencies

# Longest run of steps considered for one block (keeps the search linear in the chain length).
MAX_WINDOW = 32
CASE_MARKER = re.compile(
    r"^\W{0,4}(?:(case|subcase|option|scenario|possibility|approach|method)\s*\(?\w{1,3}\)?\s*[:.)\-]|\([A-Ea-e]\)\s)",
    re.IGNORECASE,
)
CONCLUDING = re.compile(
    r"^\W{0,4}(so|therefore|thus|hence|overall|combining|comparing|in (all|both|either|each|summary|total)|"
    r"putting|altogether|together|total)\b",
    re.IGNORECASE,
)
LABEL_PREFIX = re.compile(r"^([^:=]{1,60}):\s")
TRAILING_RESULT = re.compile(r"\s*=\s*[^=]*$")


def outline_of(steps: Sequence[str]) -> str:
    """A short Map text for a path: what its last step computes, without giving the result away."""
    last = steps[-1]
    prefix = LABEL_PREFIX.match(last)
    if prefix:
        return prefix.group(1).strip()
    words = TRAILING_RESULT.sub("", last).split()
    text = " ".join(words[:16])
    return text.rstrip(".,;:") or last[:60]


def _case_family(step: str) -> str | None:
    match = CASE_MARKER.match(step)
    if not match:
        return None
    return (match.group(1) or "(letter)").lower()


class RulesStructurer:
    """Plans parallel blocks over a chain's steps. `max_depth` bounds nesting (1 = no nested blocks)."""

    def __init__(self, max_depth: int = 3, max_window: int = MAX_WINDOW):
        self.max_depth = max_depth
        self.max_window = max_window

    def plan(self, steps: Sequence[str], question: str = "") -> Plan:
        """The plan of `steps` (the think steps of one chain, answer line excluded)."""
        self.steps = list(steps)
        self.quantities: list[StepQuantities] = analyse(self.steps, question)
        self.deps = dependencies(self.quantities)
        return self._plan(list(range(len(self.steps))), depth=0)

    # -- the recursion ----------------------------------------------------------------------
    def _plan(self, indices: list[int], depth: int) -> Plan:
        plan: Plan = []
        at = 0
        while at < len(indices):
            found = None
            if depth < self.max_depth:
                found = self._cases(indices, at) or self._collective(indices, at)
            if found is None:
                plan.append(self.steps[indices[at]])
                at += 1
                continue
            groups, conclusion_index, kind = found
            paths = [self._plan(group, depth + 1) for group in groups]
            if kind == "selective":  # a case is announced by its marker line
                outlines = [" ".join(self.steps[group[0]].split()[:16]) for group in groups]
            else:
                outlines = [outline_of([self.steps[i] for i in group]) for group in groups]
            if conclusion_index is None:
                conclusion = "Each of these cases has been worked out above."
                at = indices.index(groups[-1][-1]) + 1
            else:
                conclusion = self.steps[conclusion_index]
                at = indices.index(conclusion_index) + 1
            spans = [(group[0], group[-1]) for group in groups]
            last = groups[-1][-1] if conclusion_index is None else conclusion_index
            plan.append(
                ParallelPlan(
                    outlines=outlines, paths=paths, conclusion=conclusion, kind=kind, path_spans=spans,
                    span=(groups[0][0], last),
                )
            )
        return plan

    def _computes(self, i: int) -> bool:
        q = self.quantities[i]
        return bool(q.defines or q.uses)

    def _collective(self, indices: list[int], start: int) -> tuple[list[list[int]], int, str] | None:
        """The widest window at `start` whose steps form >= 2 contiguous independent groups the next step combines."""
        if not self._computes(indices[start]):
            return None
        last_end = min(len(indices) - 1, start + self.max_window)
        for end in range(last_end, start + 1, -1):
            window = indices[start:end]
            groups = self._groups(window)
            if groups is None or len(groups) < 2:
                continue
            combining = indices[end]
            if all(self.deps[combining] & set(group) for group in groups):
                return groups, combining, "collective"
        return None

    def _groups(self, window: list[int]) -> list[list[int]] | None:
        """Connected components of the dependency graph on `window`, if each is a contiguous run."""
        parent = {i: i for i in window}

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        previous = None
        for i in window:
            # a step with no quantities (commentary) belongs to the step before it
            links = [d for d in self.deps[i] if d in parent]
            if not self._computes(i) and previous is not None:
                links.append(previous)
            for d in links:
                parent[find(i)] = find(d)
            previous = i
        groups: list[list[int]] = []
        roots: list[int] = []
        for i in window:
            root = find(i)
            if roots and roots[-1] == root:
                groups[-1].append(i)
            elif root in roots:
                return None  # interleaved groups: not a contiguous split
            else:
                roots.append(root)
                groups.append([i])
        return groups

    def _cases(self, indices: list[int], start: int) -> tuple[list[list[int]], int | None, str] | None:
        """Consecutive "Case k" / option markers of one family starting at `start`."""
        family = _case_family(self.steps[indices[start]])
        if family is None:
            return None
        markers = [start]
        end = None
        for at in range(start + 1, min(len(indices), start + self.max_window)):
            step = self.steps[indices[at]]
            if _case_family(step) == family:
                markers.append(at)
            elif len(markers) >= 2 and CONCLUDING.match(step):
                end = at
                break
        if len(markers) < 2:
            return None
        if end is None:
            # no concluding step: the last case is as long as the longest earlier one
            longest = max(b - a for a, b in zip(markers, markers[1:]))
            stop = min(len(indices), markers[-1] + longest)
        else:
            stop = end
        bounds = markers + [stop]
        groups = [indices[a:b] for a, b in zip(bounds, bounds[1:])]
        return groups, (indices[end] if end is not None else None), "selective"


def plan_chain(steps: Sequence[str], question: str = "", max_depth: int = 3) -> Plan:
    """Plan the think steps of one chain with the rules structurer."""
    return RulesStructurer(max_depth=max_depth).plan(steps, question)
