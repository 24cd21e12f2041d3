"""Streaming fork/merge generation: final text in canonical order, and branch events for UIs.

`generate(..., streamer=...)` takes any object with transformers' `put`/`end` protocol (`TextStreamer`,
`TextIteratorStreamer`, the server's streamer). It first receives the prompt (so `skip_prompt` works),
then the canonical response, token ids in order, each as soon as its place in that order is final:

- the trunk, live;
- inside a block, path 1 live while it runs; path k as soon as paths 1..k-1 are all done (what it
  wrote meanwhile arrives at once, then it is live);
- the conclusion after the last path, live.

So the streamed text, concatenated, is `tokenizer.decode` of the canonical response (`sequences`),
paths in label order: the streamer never sees two paths interleaved.

`generate(..., branch_callback=fn)` is the richer stream for UIs: `fn(event)` receives a
`BranchEvent` each time a branch advances (every branch, live, in decoding order), forks or finishes.

Example:
    >>> from transformers import TextStreamer
    >>> model.generate(**inputs, tokenizer=tok, streamer=TextStreamer(tok, skip_prompt=True))  # doctest: +SKIP
    >>> model.generate(**inputs, tokenizer=tok, branch_callback=lambda e: print(e.path, e.token_ids))  # doctest: +SKIP

The engine reports five things to a `GenerationStream` (`open`, `fork`, `tokens`, `done`, `end`),
keyed by its own branch objects; nothing here knows how the engine decodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BranchEvent:
    """One step of one branch, as `generate(..., branch_callback=fn)` reports it.

    - `kind`: "tokens" (the branch wrote `token_ids`), "fork" (it opened a block whose paths have
      `labels`; `parallel` is False when the depth limit makes them run one after another) or
      "done" (a path wrote its `</Path>`).
    - `row`: which prompt of the batch.
    - `path`: outline labels from the trunk down: `()` is the trunk, `("2",)` path 2, `("2", "2.1")`
      a path nested in it. `index` names the branch uniquely (labels may repeat, and a branch may open
      several blocks): one 0-based `(block, path)` pair per level, e.g. `((1, 0),)` is path 1 of the
      trunk's second block.
    - `generated_tokens`, `decode_steps`: the prompt's counters (SPEC.md §8) when the event happened.
    """

    kind: str
    row: int
    path: tuple[str, ...]
    index: tuple[tuple[int, int], ...]
    token_ids: tuple[int, ...] = ()
    labels: tuple[str, ...] = ()
    parallel: bool = True
    generated_tokens: int = 0
    decode_steps: int = 0


class _Node:
    """A branch in canonical order: its own tokens, with a `_Block` where it forked."""

    __slots__ = ("items", "cursor", "done", "path", "index", "blocks")

    def __init__(self, path: tuple[str, ...], index: tuple[tuple[int, int], ...]):
        self.items: list = []
        self.blocks = 0  # blocks it opened so far
        self.cursor = 0  # items already streamed
        self.done = False
        self.path = path
        self.index = index


class _Block:
    __slots__ = ("children", "expected", "cursor")

    def __init__(self, expected: int):
        self.children: list[_Node] = []
        self.expected = expected  # paths the block will have (sequential blocks start them one by one)
        self.cursor = 0  # children fully streamed


def _drain(node: _Node, out: list[int]) -> bool:
    """Append to `out` what became final under `node`; True once `node` is fully streamed and done."""
    while node.cursor < len(node.items):
        item = node.items[node.cursor]
        if isinstance(item, _Block):
            while item.cursor < len(item.children) and _drain(item.children[item.cursor], out):
                item.cursor += 1
            if item.cursor < item.expected:
                return False  # a path still runs (or is not started yet): later paths wait
        else:
            out.append(item)
        node.cursor += 1
    return node.done


class GenerationStream:
    """What the engine tells a `streamer` (one prompt) and a `branch_callback` (any batch).

    >>> stream = GenerationStream(streamer=TextStreamer(tok))  # doctest: +SKIP
    """

    def __init__(self, streamer=None, branch_callback: Callable[[BranchEvent], None] | None = None):
        self.streamer = streamer
        self.callback = branch_callback
        self.active = streamer is not None or branch_callback is not None
        self.nodes: dict[int, _Node] = {}  # id(engine branch) -> node
        self.roots: dict[int, _Node] = {}  # row -> root node

    def prompt(self, input_ids: torch.Tensor) -> None:
        """The prompt goes first, as in transformers' `generate`, so `skip_prompt=True` skips it."""
        if self.streamer is not None:
            self.streamer.put(input_ids.detach().cpu())

    def open(self, row: int, branch, parent=None, label: str | None = None) -> None:
        """A new branch: the root of a prompt (no parent), or the next path of the parent's block."""
        if not self.active:
            return
        if parent is None:
            node = self.roots[row] = _Node((), ())
        else:
            up = self.nodes[id(parent)]
            block = up.items[-1]
            node = _Node(up.path + (label,), up.index + ((up.blocks - 1, len(block.children)),))
            block.children.append(node)
        self.nodes[id(branch)] = node

    def fork(self, row: int, branch, labels: list[str], parallel: bool, generated: int, steps: int) -> None:
        if not self.active:
            return
        node = self.nodes[id(branch)]
        node.items.append(_Block(len(labels)))
        node.blocks += 1
        self._report("fork", row, node, labels=tuple(labels), parallel=parallel, generated=generated, steps=steps)

    def tokens(self, row: int, branch, token_ids: list[int], generated: int, steps: int) -> None:
        if not self.active:
            return
        node = self.nodes[id(branch)]
        node.items.extend(token_ids)
        self._flush(row)
        self._report("tokens", row, node, token_ids=tuple(token_ids), generated=generated, steps=steps)

    def done(self, row: int, branch, generated: int, steps: int) -> None:
        if not self.active:
            return
        node = self.nodes.pop(id(branch))
        node.done = True
        self._flush(row)
        self._report("done", row, node, generated=generated, steps=steps)

    def end(self) -> None:
        """Generation is over: whatever is left is final; then `streamer.end()`."""
        for row, root in self.roots.items():
            root.done = True
            self._flush(row)
        if self.streamer is not None:
            self.streamer.end()

    def _flush(self, row: int) -> None:
        if self.streamer is None or row != 0:
            return
        out: list[int] = []
        _drain(self.roots[row], out)
        if out:
            self.streamer.put(torch.tensor(out, dtype=torch.long))

    def _report(self, kind, row, node, token_ids=(), labels=(), parallel=True, generated=0, steps=0) -> None:
        if self.callback is not None:
            self.callback(
                BranchEvent(kind, row, node.path, node.index, token_ids, labels, parallel, generated, steps)
            )


__all__ = ["BranchEvent", "GenerationStream"]
