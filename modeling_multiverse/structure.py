"""The Multiverse format: its tags, its grammar, and the per-token arrays derived from it (SPEC.md §2-5, 8).

This module is the only place in the project that knows the tags. Everything else (the model, the
engine, the collator, the curator, the inspector) goes through it.

A sequence is read as a stream of *items*: each item is a tag or a piece of text. For token ids an
item is one token; for plain text an item is a tag or the text between two tags. The parser is a
small push-down automaton fed one item at a time (`StructureParser.feed`), so the engine can run it
incrementally on every branch; `parse_ids` and `parse_text` run it over a whole sequence.

Example:
    >>> s = parse_text("<Think>\\n<Parallel>\\n<Goal>\\n<Outline>1: a</Outline>\\n<Outline>2: b</Outline>\\n</Goal>"
    ...                "\\n<Path>\\n1: x</Path>\\n<Path>\\n2: y</Path>"
    ...                "\\n<Conclusion>\\nz</Conclusion>\\n</Parallel>\\n</Think>ok")
    >>> [p.label for p in s.blocks[0].paths]
    ['1', '2']
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

TAGS: tuple[str, ...] = (
    "<Think>",
    "</Think>",
    "<Parallel>",
    "</Parallel>",
    "<Goal>",
    "</Goal>",
    "<Outline>",
    "</Outline>",
    "<Path>",
    "</Path>",
    "<Conclusion>",
    "</Conclusion>",
)
(
    THINK,
    THINK_END,
    PARALLEL,
    PARALLEL_END,
    GOAL,
    GOAL_END,
    OUTLINE,
    OUTLINE_END,
    PATH,
    PATH_END,
    CONCLUSION,
    CONCLUSION_END,
) = range(len(TAGS))
TEXT = -1
"""Kind of an item that is not a tag."""

LABEL_PATTERN = re.compile(r"\d+(?:\.\d+)*")
_TAG_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in TAGS) + ")")
_TAG_INDEX = {t: i for i, t in enumerate(TAGS)}
LABEL_WINDOW = 24
"""Labels are short: a label is read from at most this many items after its tag (keeps parsing linear)."""
LABEL_MAX_CHARS = 16
"""A lenient reader takes longer text before ':' for prose, not a label."""


class StructureError(ValueError):
    """A sequence breaks the Multiverse grammar. `index` is the offending item (token, or text offset)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class MissingTagsError(ValueError):
    """A tokenizer or config lacks some of the twelve tags as single tokens."""


def remove_tags(text: str) -> str:
    """Flatten a Multiverse response into plain sequential text: tags removed, paths kept in order.

    >>> remove_tags("<Path>\\n1: a</Path>")
    '\\n1: a'
    """
    return _TAG_SPLIT.sub("", text)


def split_tags(text: str) -> list[str]:
    """Split text into items: each tag alone, and the (non-empty) text between tags."""
    return [piece for piece in _TAG_SPLIT.split(text) if piece]


def tag_kind(piece: str) -> int:
    """The tag index of an item, or TEXT."""
    return _TAG_INDEX.get(piece, TEXT)


def read_label(text: str, strict: bool) -> str | None:
    """The LABEL of `LABEL: ...`, the text right after an `<Outline>` or `<Path>` tag; None if there is none.

    Strict (the parser checking data): a numeric label like "1" or "2.1". Lenient (the engine copying
    what a model wrote): any short single-line text before ':'.

    >>> read_label(" 2.1: b", strict=True), read_label("x: c", strict=True), read_label("x: c", strict=False)
    ('2.1', None, 'x')
    """
    head, colon, _ = text.partition(":")
    label = head.strip()
    if not colon or not label:
        return None
    if strict:
        return label if LABEL_PATTERN.fullmatch(label) else None
    return label if len(label) <= LABEL_MAX_CHARS and "\n" not in label else None


# ----------------------------------------------------------------------------------------------
# Writing the format (the curator and the engine write tags only through these)


def path_seed(label: str) -> str:
    """What the engine forces at the start of branch `label` (SPEC.md §6): separator, `<Path>`, label."""
    return f"\n{TAGS[PATH]}\n{label}:"


CONCLUSION_SEED = f"\n{TAGS[CONCLUSION]}\n"
"""What the engine forces at a merge (SPEC.md §6)."""


def format_parallel(outlines: Sequence[tuple[str, str]], paths: Sequence[str], conclusion: str) -> str:
    """One `<Parallel>` block: `outlines` are (label, text); `paths[k]` is the body of path k.

    >>> format_parallel([("1", "a"), ("2", "b")], ["x", "y"], "z").count("<Path>")
    2
    """
    if len(outlines) != len(paths) or not outlines:
        raise ValueError(f"a block needs one path per outline, got {len(outlines)} outline(s) and {len(paths)} path(s)")
    goal = "".join(f"\n{TAGS[OUTLINE]}{label}: {text.strip()}{TAGS[OUTLINE_END]}" for label, text in outlines)
    units = "".join(
        f"{path_seed(label)} {body.strip()}{TAGS[PATH_END]}" for (label, _), body in zip(outlines, paths)
    )
    return (
        f"{TAGS[PARALLEL]}\n{TAGS[GOAL]}{goal}\n{TAGS[GOAL_END]}{units}"
        f"{CONCLUSION_SEED}{conclusion.strip()}{TAGS[CONCLUSION_END]}\n{TAGS[PARALLEL_END]}"
    )


def format_response(think: str, answer: str) -> str:
    """`<Think>` body `</Think>` answer."""
    return f"{TAGS[THINK]}\n{think.strip()}\n{TAGS[THINK_END]}\n{answer.strip()}"


# ----------------------------------------------------------------------------------------------
# The tree


@dataclass
class Outline:
    label: str | None
    open: int
    close: int | None = None


@dataclass
class PathUnit:
    """`sep <Path> LABEL: body </Path>`: `start` is the first item of the unit (its separator, if any)."""

    label: str | None
    start: int
    open: int
    close: int | None = None
    blocks: list[Block] = field(default_factory=list)

    @property
    def end(self) -> int | None:
        """One past the last item of the unit, or None while it is open."""
        return None if self.close is None else self.close + 1


@dataclass
class Block:
    """One `<Parallel>` block. Indices are item indices; None marks what was not reached yet."""

    open: int
    depth: int
    goal_open: int | None = None
    goal_close: int | None = None
    outlines: list[Outline] = field(default_factory=list)
    paths: list[PathUnit] = field(default_factory=list)
    conclusion_start: int | None = None
    conclusion_open: int | None = None
    conclusion_close: int | None = None
    close: int | None = None

    @property
    def labels(self) -> list[str | None]:
        return [o.label for o in self.outlines]

    def iter_blocks(self):
        yield self
        for unit in self.paths:
            for child in unit.blocks:
                yield from child.iter_blocks()


@dataclass
class Structure:
    """The parse of one sequence: top-level blocks, the think span, and what is still open at the end."""

    length: int
    blocks: list[Block]
    think_open: int | None
    think_close: int | None
    open_elements: list[str]

    @property
    def complete(self) -> bool:
        return not self.open_elements

    def iter_blocks(self):
        """Every block, outer before inner, in sequence order."""
        for block in self.blocks:
            yield from block.iter_blocks()

    @property
    def max_depth(self) -> int:
        return max((b.depth + 1 for b in self.iter_blocks()), default=0)

    @property
    def max_paths(self) -> int:
        return max((len(b.paths) for b in self.iter_blocks()), default=0)

    def arrays(self) -> TokenStructure:
        """Per-item position ids and sibling intervals (SPEC.md §4-5); see `TokenStructure`."""
        return TokenStructure.from_structure(self)


# ----------------------------------------------------------------------------------------------
# The parser


@dataclass
class _Frame:
    kind: int  # the tag that opened it (PARALLEL, GOAL, OUTLINE, PATH, CONCLUSION) or THINK
    node: object = None
    phase: str = ""  # PARALLEL frames: "goal", "paths", "conclusion", "end"
    separator_start: int | None = None  # first item of the whitespace run since the last tag
    label_checked: bool = False


def _describe(kind: int) -> str:
    return "text" if kind == TEXT else TAGS[kind]


class StructureParser:
    """Incremental parser for the SPEC.md §3 grammar.

    Feed items in order with `feed(kind, index)`; `finish()` returns the `Structure`. With
    `partial=True` open elements at the end are legal. `text_of(i, j)` (optional) returns the text of
    items i..j-1; with it, labels and the whitespace-only places are checked as well.

    Example:
        >>> p = StructureParser(partial=True)
        >>> for i, piece in enumerate(split_tags("<Parallel><Goal><Outline>1: a</Outline></Goal>")):
        ...     p.feed(tag_kind(piece), i)
        >>> p.expects_fork
        True
    """

    def __init__(
        self,
        *,
        partial: bool = False,
        require_think: bool = False,
        text_of: Callable[[int, int], str] | None = None,
        unit: str = "token",
    ):
        self.partial = partial
        self.require_think = require_think
        self.text_of = text_of
        self.unit = unit
        self.stack: list[_Frame] = [_Frame(kind=TEXT)]
        self.blocks: list[Block] = []
        self.think_open: int | None = None
        self.think_close: int | None = None
        self.length = 0
        self.last_kind = TEXT

    def copy(self) -> StructureParser:
        """An independent copy (the engine forks a parser per branch)."""
        return copy.deepcopy(self)

    # -- queries the engine uses ------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Number of enclosing `<Parallel>` blocks."""
        return sum(1 for f in self.stack if f.kind == PARALLEL)

    @property
    def current_block(self) -> Block | None:
        for frame in reversed(self.stack):
            if frame.kind == PARALLEL:
                return frame.node
        return None

    @property
    def expects_fork(self) -> bool:
        """True right after `</Goal>` closed the goal of an open block: the moment to fork (SPEC.md §6)."""
        return self.last_kind == GOAL_END and self.stack[-1].kind == PARALLEL

    # -- errors -----------------------------------------------------------------------------
    def _fail(self, index: int, found: int, expected: str) -> None:
        context = ""
        frame = self.stack[-1]
        if frame.kind != TEXT:
            context = f" (inside {TAGS[frame.kind]} opened at {self.unit} {self._opened_at(frame)})"
        raise StructureError(
            f"at {self.unit} {index}: found {_describe(found)}, expected {expected}{context}", index
        )

    @staticmethod
    def _opened_at(frame: _Frame) -> int | None:
        if frame.kind == GOAL:
            return frame.node.goal_open
        if frame.kind == CONCLUSION:
            return frame.node.conclusion_open
        return frame.node.open

    def _text(self, i: int, j: int) -> str | None:
        if self.text_of is None or j <= i:
            return "" if self.text_of is not None else None
        return self.text_of(i, j)

    def _check_whitespace(self, start: int | None, end: int, where: str) -> None:
        if start is None or self.text_of is None:
            return
        text = self._text(start, end)
        if text.strip():
            raise StructureError(
                f"at {self.unit} {start}: found text {text.strip()[:40]!r} {where}, expected only whitespace",
                start,
            )

    def _label(self, open_index: int, end: int, what: str) -> str | None:
        """The LABEL before ':' in the text right after an opening tag."""
        if self.text_of is None:
            return None
        text = self._text(open_index + 1, min(end, open_index + 1 + LABEL_WINDOW))
        label = read_label(text, strict=True)
        if label is None:
            raise StructureError(
                f"at {self.unit} {open_index + 1}: found {text.strip()[:30]!r} after {what}, "
                f"expected a label like '1:' or '2.1:'",
                open_index + 1,
            )
        return label

    # -- the automaton ----------------------------------------------------------------------
    def feed(self, kind: int, index: int) -> None:
        """Consume one item. Raises `StructureError` on the first item the grammar does not allow."""
        self.length = index + 1
        top = self.stack[-1]
        if kind == TEXT:
            if top.kind == PARALLEL and top.separator_start is None:
                top.separator_start = index
            elif top.kind == GOAL and top.separator_start is None:
                top.separator_start = index
            self.last_kind = kind
            return
        self._HANDLERS[kind](self, index, top)
        self.last_kind = kind

    def _think(self, index: int, top: _Frame) -> None:
        if len(self.stack) != 1:
            self._fail(index, THINK, self._expected(top))
        if self.require_think and index > 0:
            self._check_whitespace(0, index, "before <Think>")
        if self.think_open is not None:
            self._fail(index, THINK, f"a single <Think> (one was opened at {self.unit} {self.think_open})")
        self.think_open = index

    def _think_end(self, index: int, top: _Frame) -> None:
        if len(self.stack) != 1:
            self._fail(index, THINK_END, self._expected(top))
        if self.think_open is None or self.think_close is not None:
            self._fail(index, THINK_END, "</Think> only once, after <Think>")
        self.think_close = index

    def _in_body(self, top: _Frame) -> bool:
        return top.kind in (TEXT, PATH)

    def _parallel(self, index: int, top: _Frame) -> None:
        if not self._in_body(top):
            self._fail(index, PARALLEL, self._expected(top))
        if self.require_think and self.think_close is not None:
            self._fail(index, PARALLEL, "text: the answer after </Think> holds no parallel block")
        if top.kind == PATH and not top.label_checked:
            top.node.label = self._label(top.node.open, index, "<Path>")
            top.label_checked = True
        block = Block(open=index, depth=self.depth)
        (self.blocks if top.kind == TEXT else top.node.blocks).append(block)
        self.stack.append(_Frame(kind=PARALLEL, node=block, phase="goal"))

    def _goal(self, index: int, top: _Frame) -> None:
        if top.kind != PARALLEL or top.phase != "goal":
            self._fail(index, GOAL, self._expected(top))
        self._check_whitespace(top.separator_start, index, "between <Parallel> and <Goal>")
        top.separator_start = None
        top.node.goal_open = index
        self.stack.append(_Frame(kind=GOAL, node=top.node))

    def _outline(self, index: int, top: _Frame) -> None:
        if top.kind != GOAL:
            self._fail(index, OUTLINE, self._expected(top))
        self._check_whitespace(top.separator_start, index, "between outlines")
        top.separator_start = None
        outline = Outline(label=None, open=index)
        top.node.outlines.append(outline)
        self.stack.append(_Frame(kind=OUTLINE, node=outline))

    def _outline_end(self, index: int, top: _Frame) -> None:
        if top.kind != OUTLINE:
            self._fail(index, OUTLINE_END, self._expected(top))
        top.node.close = index
        top.node.label = self._label(top.node.open, index, "<Outline>")
        self.stack.pop()

    def _goal_end(self, index: int, top: _Frame) -> None:
        if top.kind != GOAL:
            self._fail(index, GOAL_END, self._expected(top))
        self._check_whitespace(top.separator_start, index, "between outlines")
        block: Block = top.node
        if not block.outlines:
            self._fail(index, GOAL_END, "at least one <Outline> in the <Goal>")
        labels = [o.label for o in block.outlines]
        if self.text_of is not None and len(set(labels)) != len(labels):
            raise StructureError(
                f"at {self.unit} {index}: found duplicate outline labels {labels}, expected distinct labels",
                index,
            )
        block.goal_close = index
        self.stack.pop()
        parallel = self.stack[-1]
        parallel.phase = "paths"
        parallel.separator_start = None

    def _path(self, index: int, top: _Frame) -> None:
        if top.kind != PARALLEL or top.phase != "paths":
            self._fail(index, PATH, self._expected(top))
        block: Block = top.node
        if len(block.paths) >= len(block.outlines):
            self._fail(index, PATH, f"<Conclusion>: the goal has {len(block.outlines)} outline(s)")
        start = index if top.separator_start is None else top.separator_start
        self._check_whitespace(top.separator_start, index, "before <Path>")
        top.separator_start = None
        unit = PathUnit(label=None, start=start, open=index)
        block.paths.append(unit)
        self.stack.append(_Frame(kind=PATH, node=unit))

    def _path_end(self, index: int, top: _Frame) -> None:
        if top.kind != PATH:
            self._fail(index, PATH_END, self._expected(top))
        unit: PathUnit = top.node
        if not top.label_checked:
            unit.label = self._label(unit.open, index, "<Path>")
        unit.close = index
        self.stack.pop()
        parallel = self.stack[-1]
        block: Block = parallel.node
        k = len(block.paths) - 1
        expected = block.outlines[k].label
        if self.text_of is not None and unit.label != expected:
            raise StructureError(
                f"at {self.unit} {unit.open}: found path label {unit.label!r}, expected {expected!r} "
                f"(the label of outline {k + 1})",
                unit.open,
            )

    def _conclusion(self, index: int, top: _Frame) -> None:
        if top.kind != PARALLEL or top.phase != "paths":
            self._fail(index, CONCLUSION, self._expected(top))
        block: Block = top.node
        if len(block.paths) != len(block.outlines):
            self._fail(
                index,
                CONCLUSION,
                f"<Path> ({len(block.paths)} of {len(block.outlines)} paths written)",
            )
        self._check_whitespace(top.separator_start, index, "before <Conclusion>")
        block.conclusion_start = index if top.separator_start is None else top.separator_start
        block.conclusion_open = index
        top.separator_start = None
        top.phase = "conclusion"
        self.stack.append(_Frame(kind=CONCLUSION, node=block))

    def _conclusion_end(self, index: int, top: _Frame) -> None:
        if top.kind != CONCLUSION:
            self._fail(index, CONCLUSION_END, self._expected(top))
        top.node.conclusion_close = index
        self.stack.pop()
        self.stack[-1].phase = "end"
        self.stack[-1].separator_start = None

    def _parallel_end(self, index: int, top: _Frame) -> None:
        if top.kind != PARALLEL or top.phase != "end":
            self._fail(index, PARALLEL_END, self._expected(top))
        self._check_whitespace(top.separator_start, index, "between </Conclusion> and </Parallel>")
        top.node.close = index
        self.stack.pop()

    _HANDLERS = (  # indexed by tag kind
        _think,
        _think_end,
        _parallel,
        _parallel_end,
        _goal,
        _goal_end,
        _outline,
        _outline_end,
        _path,
        _path_end,
        _conclusion,
        _conclusion_end,
    )

    # -- what may come next ------------------------------------------------------------------
    _TEXT_INSIDE = (TEXT, PATH, OUTLINE, CONCLUSION)  # frames whose content is free text

    def allowed_next(self, max_outlines: int | None = None) -> list[int]:
        """The tag kinds the grammar accepts as the next item, in tag order; text is not listed (`text_allowed`).

        `max_outlines` caps the outlines of the open goal (the engine's `max_branches`).

        >>> p = StructureParser(partial=True)
        >>> for i, piece in enumerate(split_tags("<Parallel><Goal>")):
        ...     p.feed(tag_kind(piece), i)
        >>> [TAGS[k] for k in p.allowed_next()]
        ['<Outline>']
        """
        top = self.stack[-1]
        if top.kind == TEXT:
            allowed = [] if self.think_open is not None else [THINK]
            if self.think_open is not None and self.think_close is None:
                allowed.append(THINK_END)
            if not (self.require_think and self.think_close is not None):
                allowed.append(PARALLEL)
            return sorted(allowed)
        if top.kind == PATH:
            return [PARALLEL, PATH_END]
        if top.kind == GOAL:
            outlines = len(top.node.outlines)
            allowed = [GOAL_END] if outlines else []
            if max_outlines is None or outlines < max_outlines:
                allowed.append(OUTLINE)
            return sorted(allowed)
        if top.kind == OUTLINE:
            return [OUTLINE_END]
        if top.kind == CONCLUSION:
            return [CONCLUSION_END]
        block: Block = top.node
        if top.phase == "paths":
            return [PATH] if len(block.paths) < len(block.outlines) else [CONCLUSION]
        return [{"goal": GOAL, "conclusion": CONCLUSION_END, "end": PARALLEL_END}[top.phase]]

    @property
    def text_allowed(self) -> bool:
        """Whether free text may come next (elsewhere only whitespace is legal, and only checked with `text_of`)."""
        return self.stack[-1].kind in self._TEXT_INSIDE

    def _expected(self, top: _Frame) -> str:
        """`allowed_next` in words, for error messages: text first, then opening tags, then closing tags."""
        kinds = sorted(self.allowed_next(), key=lambda k: (k % 2, k))  # even kinds open, odd ones close
        words = (["text"] if self.text_allowed else []) + [TAGS[k] for k in kinds]
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"

    def closing_items(self) -> list[int | str]:
        """The items that close what is open, innermost first: tag kinds, and text (str) where the grammar
        needs some. They stop where the open block needs its paths written (after `</Goal>` or `</Path>`);
        `<Think>` is left open. A goal without outlines gets one, labelled "1".

        >>> p = StructureParser(partial=True)
        >>> for i, piece in enumerate(split_tags("<Parallel><Goal><Outline>1: a")):
        ...     p.feed(tag_kind(piece), i)
        >>> [TAGS[k] if isinstance(k, int) else k for k in p.closing_items()]
        ['</Outline>', '</Goal>']
        """
        items: list[int | str] = []
        for frame in reversed(self.stack[1:]):
            if frame.kind == OUTLINE:
                items.append(OUTLINE_END)
            elif frame.kind == GOAL:
                if not frame.node.outlines:
                    items += [OUTLINE, "1:", OUTLINE_END]
                return items + [GOAL_END]
            elif frame.kind == PATH:
                return items + [PATH_END]
            elif frame.kind == CONCLUSION:
                items.append(CONCLUSION_END)
            elif frame.phase == "goal":
                return items + [GOAL, OUTLINE, "1:", OUTLINE_END, GOAL_END]
            elif frame.phase in ("conclusion", "end"):  # "conclusion": closed by the item above
                items += ["\n", PARALLEL_END]
            else:  # "paths": written by the engine, not closing items
                return items
        return items

    def finish(self) -> Structure:
        """End of input: returns the Structure, or raises if something is open and not `partial`."""
        open_elements = [TAGS[f.kind] for f in self.stack[1:]]
        if self.require_think:
            if self.think_open is None:
                raise StructureError(
                    f"at {self.unit} 0: found no <Think>, expected the response to open with <Think>", 0
                )
            if self.think_close is None and not self.partial:
                raise StructureError(
                    f"at {self.unit} {self.length}: found the end, expected </Think> "
                    f"(opened at {self.unit} {self.think_open})",
                    self.length,
                )
        if open_elements and not self.partial:
            top = self.stack[-1]
            raise StructureError(
                f"at {self.unit} {self.length}: found the end, expected {self._expected(top)} "
                f"({TAGS[top.kind]} opened at {self.unit} {self._opened_at(top)} is unclosed)",
                self.length,
            )
        if self.think_open is not None and self.think_close is None:
            open_elements.insert(0, TAGS[THINK])
        return Structure(self.length, self.blocks, self.think_open, self.think_close, open_elements)


# ----------------------------------------------------------------------------------------------
# Entry points


TagIds = Mapping[str, int]


def tag_ids_from_tokenizer(tokenizer) -> dict[str, int]:
    """Map each tag to its single token id; raises `MissingTagsError` listing the tags not present as one token."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in TAGS if t not in vocab]
    if missing:
        raise MissingTagsError(
            f"the tokenizer lacks {len(missing)} Multiverse tag(s) as single tokens: {', '.join(missing)}; "
            "add them with modeling_multiverse.add_multiverse_tokens(model, tokenizer)"
        )
    return {t: vocab[t] for t in TAGS}


def kinds_of_ids(ids: torch.Tensor | Sequence[int], tag_ids: TagIds) -> torch.Tensor:
    """Per-token kind: the tag index, or TEXT (-1). Vectorised."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    kinds = torch.full_like(ids, TEXT)
    for i, tag in enumerate(TAGS):
        kinds[ids == tag_ids[tag]] = i
    return kinds


def parse_kinds(
    kinds: torch.Tensor | Sequence[int],
    *,
    partial: bool = False,
    require_think: bool = False,
    text_of: Callable[[int, int], str] | None = None,
    unit: str = "token",
) -> Structure:
    """Parse a sequence given its per-item kinds. Only the tags are visited: linear in the number of tags."""
    kinds = torch.as_tensor(kinds, dtype=torch.long)
    parser = StructureParser(partial=partial, require_think=require_think, text_of=text_of, unit=unit)
    is_text = kinds == TEXT
    # Only text runs that start right after a tag matter to the automaton: feed their first item.
    run_start = is_text.clone()
    run_start[1:] &= ~is_text[:-1]
    events = torch.nonzero(~is_text | run_start).flatten().tolist()
    kind_list = kinds[events].tolist()
    for index, kind in zip(events, kind_list):
        parser.feed(kind, index)
    parser.length = len(kinds)
    return parser.finish()


def parse_ids(
    ids: torch.Tensor | Sequence[int],
    tag_ids: TagIds,
    *,
    decode: Callable[[list[int]], str] | None = None,
    partial: bool = False,
    require_think: bool = False,
) -> Structure:
    """Parse token ids. With `decode` (e.g. `tokenizer.decode`), labels and whitespace are checked too.

    >>> # s = parse_ids(tokenizer(text)["input_ids"], tag_ids_from_tokenizer(tokenizer), decode=tokenizer.decode)
    """
    ids_list = torch.as_tensor(ids, dtype=torch.long).tolist()
    text_of = None if decode is None else (lambda i, j: decode(ids_list[i:j]))
    return parse_kinds(
        kinds_of_ids(ids_list, tag_ids), partial=partial, require_think=require_think, text_of=text_of
    )


def allowed_tags(parser: StructureParser, max_branches: int) -> torch.Tensor:
    """Which of the twelve tags may come next in `parser`'s state: a bool tensor `[12]` in `TAGS` order.

    The engine gives every other tag -inf before sampling (path seeds, conclusion seeds and closing tags
    are forced, never sampled), so this is the support of its sampling distribution over tags.
    `max_branches` caps the outlines of one goal.

    >>> p = StructureParser(partial=True)
    >>> p.feed(PARALLEL, 0)
    >>> [TAGS[k] for k in torch.nonzero(allowed_tags(p, 8)).flatten().tolist()]
    ['<Goal>']
    """
    allowed = torch.zeros(len(TAGS), dtype=torch.bool)
    top = parser.stack[-1]
    if top.kind == PARALLEL and top.phase == "paths":  # the engine writes the paths' seeds, it samples none
        return allowed
    allowed[parser.allowed_next(max_outlines=max_branches)] = True
    return allowed


def tag_constraints(
    ids: torch.Tensor | Sequence[int], tag_ids: TagIds, start: int, max_branches: int
) -> torch.Tensor:
    """`allowed_tags` before each token of `ids[start:]`: a bool tensor `[len(ids) - start, 12]`.

    On a canonical engine output (prompt = `ids[:start]`, unpadded), row i is the set of tags the engine
    let the model sample at response token i: a path sees the same parser state whether it was decoded
    on its own branch or read after its sibling paths. Training applies it to the logits to score tokens
    under the engine's sampling distribution (GRPO's ratio).

    >>> # rows = tag_constraints(prompt + response, tag_ids, len(prompt), max_branches=8)
    """
    kinds = kinds_of_ids(ids, tag_ids).tolist()
    parser = StructureParser(partial=True)
    rows = torch.zeros(len(kinds) - start, len(TAGS), dtype=torch.bool)
    current = None
    for i, kind in enumerate(kinds):
        if i >= start:
            if current is None:  # the state changes only at tags
                current = allowed_tags(parser, max_branches)
            rows[i - start] = current
        parser.feed(kind, i)
        if kind != TEXT:
            current = None
    return rows


def parse_text(text: str, *, partial: bool = False, require_think: bool = False) -> Structure:
    """Parse text. Items are tags and the text between them; errors give character offsets.

    The returned tree indexes items; `split_tags(text)` gives them.
    """
    pieces = split_tags(text)
    offsets = []
    at = 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    kinds = [tag_kind(p) for p in pieces]
    try:
        return parse_kinds(
            kinds, partial=partial, require_think=require_think, text_of=lambda i, j: "".join(pieces[i:j]), unit="item"
        )
    except StructureError as err:
        index = err.index if err.index is not None else 0
        char = offsets[index] if index < len(offsets) else len(text)
        message = re.sub(
            r"\bitem (\d+)",
            lambda m: f"char {offsets[int(m.group(1))] if int(m.group(1)) < len(offsets) else len(text)}",
            str(err),
        )
        raise StructureError(message, char) from None


# ----------------------------------------------------------------------------------------------
# Per-token arrays (SPEC.md §4-5)


@dataclass
class TokenStructure:
    """O(S) arrays that define Multiverse Attention and positions for one sequence.

    - `position_ids[t]`: SPEC.md §5 position of token t.
    - `forbid_lo[d, t] <= k < forbid_hi[d, t]`: keys token t may not see. Row d is the nesting depth
      of a block: for a token in path unit i of that block, the interval covers the sibling units
      that precede unit i. Later siblings are invisible already by causality, and intervals of
      different depths never overlap, so `allowed(q, k) = k <= q and k is in no interval of q`.
      Row 0 is reserved for document isolation (padding, packing): [0, 0) by default.
    """

    position_ids: torch.Tensor  # [S] long
    forbid_lo: torch.Tensor  # [D+1, S] long
    forbid_hi: torch.Tensor  # [D+1, S] long

    @property
    def length(self) -> int:
        return self.position_ids.shape[0]

    @classmethod
    def causal(cls, length: int, depth: int = 0) -> TokenStructure:
        zeros = torch.zeros(depth + 1, length, dtype=torch.long)
        return cls(torch.arange(length), zeros, zeros.clone())

    @classmethod
    def from_structure(cls, structure: Structure) -> TokenStructure:
        n = structure.length
        out = cls.causal(n, structure.max_depth)
        # Positions are piecewise arithmetic: segment starts (index, value), filled in one pass.
        seg_index: list[int] = [0]
        seg_value: list[int] = [0]

        def walk(blocks: list[Block], start: int, pos: int, end: int) -> int:
            """Assign positions to items [start, end) beginning at `pos`; returns the positional extent."""
            t, p = start, pos
            for block in blocks:
                if not block.paths:
                    continue
                first = block.paths[0].start
                p0 = p + (first - t)
                longest = 0
                for i, unit in enumerate(block.paths):
                    unit_end = n if unit.end is None else unit.end
                    seg_index.append(unit.start)
                    seg_value.append(p0)
                    longest = max(longest, walk(unit.blocks, unit.start, p0, unit_end))
                    if i:
                        out.forbid_lo[block.depth + 1, unit.start : unit_end] = first
                        out.forbid_hi[block.depth + 1, unit.start : unit_end] = unit.start
                t = unit_end
                p = p0 + longest
                if t < end:
                    seg_index.append(t)
                    seg_value.append(p)
            return p + (end - t) - pos

        walk(structure.blocks, 0, 0, n)
        if n:
            index = torch.tensor(seg_index)
            offset = torch.tensor(seg_value) - index
            # the segment in force at each item: the latest one starting at or before it
            per_item = torch.zeros(n, dtype=torch.long)
            per_item.scatter_reduce_(0, index, torch.arange(len(seg_index)), reduce="amax")
            segment = torch.cummax(per_item, dim=0).values
            out.position_ids = torch.arange(n) + offset[segment]
        return out

    def critical_path_tokens(self) -> int:
        """Tokens on the critical path (SPEC.md §8): the positional extent of the sequence."""
        return int(self.position_ids.max()) + 1 if self.length else 0
