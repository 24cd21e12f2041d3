"""A brute-force reference for Multiverse Attention (SPEC.md §4) and position ids (SPEC.md §5).

Written straight from the SPEC and independent of `modeling_multiverse`'s code: a recursive-descent
reader builds the block tree from the per-token kinds, then the mask is filled with explicit loops
over (query, key) pairs and positions are assigned by walking the tree. Slow on purpose; for tests.

Kinds are the tag's index in SPEC.md §2's order, or -1 for a token that is not a tag. The input must be
a valid sequence or a prefix of one (a truncated sequence).

Truncation rule (where SPEC.md §5 is silent): whitespace after a `</Path>` whose next `<Path>` has not
been written yet belongs to no path unit (the block may still continue with `<Conclusion>`); it is
placed like a conclusion separator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

TAG_NAMES = (
    "<Think>", "</Think>", "<Parallel>", "</Parallel>", "<Goal>", "</Goal>",
    "<Outline>", "</Outline>", "<Path>", "</Path>", "<Conclusion>", "</Conclusion>",
)  # fmt: skip
KIND = {name: i for i, name in enumerate(TAG_NAMES)}
TEXT = -1


@dataclass
class RefUnit:
    """A path unit: its tokens (separator, <Path>, body, </Path>) as elements, in order."""

    elements: list = field(default_factory=list)  # int token index, or RefBlock


@dataclass
class RefBlock:
    before_paths: list[int] = field(default_factory=list)  # <Parallel> ... </Goal>
    units: list[RefUnit] = field(default_factory=list)
    after_paths: list[int] = field(default_factory=list)  # conclusion separator ... </Parallel>


class _Reader:
    def __init__(self, kinds: list[int]):
        self.kinds = kinds
        self.i = 0

    def at_end(self) -> bool:
        return self.i >= len(self.kinds)

    def peek(self) -> int:
        return self.kinds[self.i]

    def take(self) -> int:
        self.i += 1
        return self.i - 1

    def body(self, inside_path: bool) -> list:
        """Elements up to (not including) the `</Path>` that ends the enclosing path, or the end."""
        elements: list = []
        while not self.at_end():
            kind = self.peek()
            if kind == KIND["</Path>"] and inside_path:
                return elements
            if kind == KIND["<Parallel>"]:
                elements.append(self.block())
            else:
                elements.append(self.take())
        return elements

    def block(self) -> RefBlock:
        block = RefBlock()
        # <Parallel> ... </Goal>
        while not self.at_end():
            kind = self.peek()
            block.before_paths.append(self.take())
            if kind == KIND["</Goal>"]:
                break
        # path units: a run of whitespace followed by <Path> is that path's separator
        while not self.at_end():
            run_end = self.i
            while run_end < len(self.kinds) and self.kinds[run_end] == TEXT:
                run_end += 1
            if run_end >= len(self.kinds) or self.kinds[run_end] != KIND["<Path>"]:
                break
            unit = RefUnit()
            while self.i <= run_end:  # separator and <Path>
                unit.elements.append(self.take())
            unit.elements.extend(self.body(inside_path=True))
            if not self.at_end():
                unit.elements.append(self.take())  # </Path>
            block.units.append(unit)
        # conclusion separator, <Conclusion> ... </Conclusion>, </Parallel>
        while not self.at_end():
            kind = self.peek()
            block.after_paths.append(self.take())
            if kind == KIND["</Parallel>"]:
                break
        return block


def read_tree(kinds: list[int]) -> list:
    """The sequence as a list of elements: token indices and `RefBlock`s."""
    reader = _Reader(list(kinds))
    elements = reader.body(inside_path=False)
    assert reader.at_end()
    return elements


def _tokens_of(elements: list) -> list[int]:
    out = []
    for element in elements:
        if isinstance(element, int):
            out.append(element)
        else:
            out += element.before_paths
            for unit in element.units:
                out += _tokens_of(unit.elements)
            out += element.after_paths
    return out


def reference_positions(kinds: list[int]) -> list[int]:
    """SPEC.md §5: sequential outside blocks; every path unit starts at P0; after the block, P0 + longest extent."""
    positions = [None] * len(kinds)

    def place(elements: list, next_position: int) -> int:
        """Give positions from `next_position` on; returns the position after the last one given."""
        p = next_position
        for element in elements:
            if isinstance(element, int):
                positions[element] = p
                p += 1
                continue
            for t in element.before_paths:
                positions[t] = p
                p += 1
            if element.units:
                p0 = p
                extents = [place(unit.elements, p0) - p0 for unit in element.units]
                p = p0 + max(extents)
            for t in element.after_paths:
                positions[t] = p
                p += 1
        return p

    place(read_tree(kinds), 0)
    assert None not in positions
    return positions


def path_ancestry(kinds: list[int]) -> list[list[tuple[int, int]]]:
    """For each token, the (block number, unit number) of every path unit that contains it."""
    ancestry: list[list[tuple[int, int]]] = [[] for _ in kinds]
    counter = [0]

    def visit(elements: list, enclosing: list[tuple[int, int]]) -> None:
        for element in elements:
            if isinstance(element, int):
                ancestry[element] = list(enclosing)
                continue
            block_number = counter[0]
            counter[0] += 1
            for t in element.before_paths + element.after_paths:
                ancestry[t] = list(enclosing)
            for u, unit in enumerate(element.units):
                visit(unit.elements, enclosing + [(block_number, u)])

    visit(read_tree(kinds), [])
    return ancestry


def reference_allowed(kinds: list[int]) -> torch.Tensor:
    """SPEC.md §4 as a bool [S, S] matrix, by explicit loops: causal, minus sibling path units."""
    n = len(kinds)
    ancestry = path_ancestry(kinds)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        units_of_q = dict(ancestry[q])
        for k in range(q + 1):
            siblings = any(block in units_of_q and units_of_q[block] != unit for block, unit in ancestry[k])
            allowed[q, k] = not siblings
    return allowed


def reference_additive_mask(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An additive [1, 1, S, S] mask: 0 where allowed, the dtype's minimum elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask[~allowed] = torch.finfo(dtype).min
    return mask[None, None]


def branch_view(kinds: list[int], block_number: int, unit_number: int) -> tuple[list[int], list[int]]:
    """What the engine's branch for one path unit sees: every token up to the end of that unit, minus
    the sibling units of it and of every unit enclosing it. Returns (kept token indices, the unit's tokens)."""
    ancestry = path_ancestry(kinds)
    unit_tokens = [t for t, a in enumerate(ancestry) if (block_number, unit_number) in a]
    last = unit_tokens[-1]
    target_chain = dict(ancestry[last])
    kept = [
        k
        for k in range(last + 1)
        if not any(b in target_chain and target_chain[b] != u for b, u in ancestry[k])
    ]
    return kept, unit_tokens


def path_units(kinds: list[int]) -> list[tuple[int, int]]:
    """Every (block number, unit number) in the sequence."""
    found = set()
    for chain in path_ancestry(kinds):
        found.update(chain)
    return sorted(found)


def tokens_in_order(kinds: list[int]) -> list[int]:
    """Sanity helper: the tree visits every token once, in order."""
    return _tokens_of(read_tree(kinds))
