"""The Multiverse Engine's state: branches, sequences, their states and the one table of transitions (SPEC.md §6).

A branch is one path being written (or the trunk, the "root"). Its life:

    LIVE --</Goal> written--> FORKING --fed--> WAITING --merged--> (the state it forked from)
    LIVE --its </Path> written--> FINISHING --fed--> DONE
    LIVE --stop / eos in a path / out of budget--> CLOSING --</Path> or, for the root, nothing open--> ...
    LIVE --eos at top level--> DONE            LIVE --eos in a block (root)--> ENDING --closed--> DONE

CLOSING and ENDING branches write the forced items that close what they have open instead of sampling;
ENDING (the root after an eos inside a block) then writes eos. A sequence (one prompt of the batch) is
DECODING, STOPPING (a stopping criterion fired while one of its paths decided: the paths run to their
ends and the root closes instead of sampling next), or FINALIZING (its budget ran out: every open
branch is closed and merged without forward passes).

`BRANCH_TRANSITIONS` and `SEQUENCE_TRANSITIONS` hold every legal `(state, event) -> state`; `advance`
is the only way a state changes, and an event the table does not hold is an internal error.

    >>> advance(BRANCH_TRANSITIONS, BranchState.LIVE, BranchEvent.WROTE_GOAL_END)
    <BranchState.FORKING: 'forking'>
"""

from __future__ import annotations

import enum

import torch

from .structure import StructureParser, TokenStructure


class BranchState(enum.Enum):
    LIVE = "live"  # samples its next token
    CLOSING = "closing"  # writes the items that close what it has open (a stop, eos in a path, a cap, the budget)
    ENDING = "ending"  # CLOSING, then eos: the root after an eos inside a block
    FORKING = "forking"  # its `</Goal>` is pending: it forks once that is fed
    WAITING = "waiting"  # its paths are being written; then it resumes the state it forked from
    FINISHING = "finishing"  # its `</Path>` is pending: done once that is fed
    DONE = "done"


class BranchEvent(enum.Enum):
    WROTE_GOAL_END = "wrote </Goal>"  # the goal is closed: fork once it is fed
    WROTE_PATH_END = "wrote its </Path>"  # its own path is closed
    FED = "fed"  # its pending tokens went through the model (or were dropped while finalizing)
    MERGED = "merged"  # every path of its block is done and appended to its view
    STOP = "stop"  # a stopping criterion at the root, `max_branch_tokens` in a path, or a closing block
    EOS_AT_TOP_LEVEL = "eos at top level"  # the root wrote eos outside any block: the sequence is done
    EOS_IN_BLOCK = "eos in a block"  # the root wrote eos inside a block: close the block, then eos
    EOS_IN_PATH = "eos in a path"  # a path wrote eos: it closes what it has open, ending with `</Path>`
    CLOSED = "closed"  # the root has nothing open any more
    OUT_OF_BUDGET = "out of budget"  # `max_new_tokens` is spent


RESUME = "resume"
"""Target of MERGED: the state the branch had when it forked (`_Branch.resume`)."""

S, E = BranchState, BranchEvent
BRANCH_TRANSITIONS: dict[tuple[BranchState, BranchEvent], BranchState | str] = {
    (S.LIVE, E.WROTE_GOAL_END): S.FORKING,
    (S.CLOSING, E.WROTE_GOAL_END): S.FORKING,  # closing items can close a goal: its paths are closed at once
    (S.ENDING, E.WROTE_GOAL_END): S.FORKING,
    (S.LIVE, E.WROTE_PATH_END): S.FINISHING,
    (S.CLOSING, E.WROTE_PATH_END): S.FINISHING,
    (S.FORKING, E.FED): S.WAITING,
    (S.FINISHING, E.FED): S.DONE,
    (S.WAITING, E.MERGED): RESUME,
    (S.LIVE, E.STOP): S.CLOSING,
    (S.LIVE, E.EOS_AT_TOP_LEVEL): S.DONE,
    (S.LIVE, E.EOS_IN_BLOCK): S.ENDING,
    (S.LIVE, E.EOS_IN_PATH): S.CLOSING,
    (S.CLOSING, E.CLOSED): S.DONE,
    (S.ENDING, E.CLOSED): S.DONE,
    (S.LIVE, E.OUT_OF_BUDGET): S.CLOSING,
}
"""Every legal branch transition. Tokens fed to a LIVE, CLOSING or ENDING branch change nothing."""


class SequenceState(enum.Enum):
    DECODING = "decoding"
    STOPPING = "stopping"  # a stopping criterion fired in a path: the root closes at its next decision
    FINALIZING = "finalizing"  # the budget ran out: open branches are closed and merged without forward passes


class SequenceEvent(enum.Enum):
    STOP = "stop"  # a stopping criterion fired while a path decided (or as the root opened paths)
    OUT_OF_BUDGET = "out of budget"


Q, QE = SequenceState, SequenceEvent
SEQUENCE_TRANSITIONS: dict[tuple[SequenceState, SequenceEvent], SequenceState] = {
    (Q.DECODING, QE.STOP): Q.STOPPING,
    (Q.STOPPING, QE.STOP): Q.STOPPING,
    (Q.FINALIZING, QE.STOP): Q.FINALIZING,  # closing already
    (Q.DECODING, QE.OUT_OF_BUDGET): Q.FINALIZING,
    (Q.STOPPING, QE.OUT_OF_BUDGET): Q.FINALIZING,
    (Q.FINALIZING, QE.OUT_OF_BUDGET): Q.FINALIZING,
}
"""Every legal sequence transition."""
del S, E, Q, QE


def advance(table: dict, state: enum.Enum, event: enum.Enum):
    """The state `event` leads to from `state`; an event the table does not hold is an internal error."""
    try:
        return table[state, event]
    except KeyError:
        message = f"internal error: the Multiverse engine got {event.value!r} in state {state.value!r}"
        raise RuntimeError(message) from None


_FORCED = float("nan")  # `token_logprobs` of a token the engine wrote without sampling it


class _Branch:
    """One path being written (or the root). `view` is what it sees, in logical order, prompt first."""

    def __init__(
        self, slot: int, parent: _Branch | None, view: list[int], parser: StructureParser, position: int, depth: int
    ):
        self.slot = slot  # its row in the visibility table
        self.parent = parent
        self.view = view
        self.logprobs = [_FORCED] * len(view)  # per token of `view`: its sampled log-probability (token_logprobs)
        self.own_start = len(view)  # where its own tokens begin in `view`
        self.parser = parser
        self.base = len(parser.stack)  # stack height while inside its own path
        self.position = position  # SPEC.md §5 position id of the next token fed
        self.depth = depth  # forks above it
        self.pending: list[int] = []  # appended to `view`, not yet in the KV cache
        # positions of `pending` where they are not position, position + 1, ... (a prompt that holds blocks)
        self.pending_positions: list[int] | None = None
        self.state = BranchState.LIVE
        self.resume = BranchState.LIVE  # the state it returns to after a merge
        self.logits_row = -1  # its row in the engine's `logits` of the last step
        self.labels: list[str] = []  # of the block it forked
        self.children: list[_Branch] = []
        self.p0 = 0  # position of the first token of each of its paths
        self.written = 0  # tokens of its own path (for max_branch_tokens)


class _Sequence:
    """One prompt: its branches (slot 0 is padding's), its counters, and the visibility changes to apply."""

    def __init__(self, row: int, prompt: list[int], parser: StructureParser):
        self.row = row  # in the batch as given (streams and stopping criteria report it)
        self.prompt_length = len(prompt)
        # a prompt that holds blocks is prefilled under SPEC.md §4 and 5, as one full forward would read it
        self.prompt_structure: TokenStructure | None = parser.finish().arrays() if parser.blocks else None
        self.branches: list[_Branch] = []
        self.visibility_ops: list[tuple[str, int, int]] = []  # ("copy" | "merge", dst slot, src slot)
        self.root = self.new_branch(None, list(prompt), parser, 0, 0)
        self.root.base = 1
        self.root.pending = list(prompt)
        if self.prompt_structure is not None:
            self.root.pending_positions = self.prompt_structure.position_ids.tolist()
        self.state = SequenceState.DECODING
        self.generated = 0
        self.closing_tokens = 0
        self.reprefill_tokens = 0  # paths re-fed to their parent by `merge="reprefill"` (prefill, not generated)
        self.steps = 0
        self.budget: int | None = None  # its max_new_tokens; None: the engine's
        # per request (`serving.py`): processors and criteria of its own, sampling with its own generator
        self.processors = None  # LogitsProcessorList applied to its branches' rows, after the engine's
        self.stopping = None  # StoppingCriteriaList of its own (stop strings)
        self.do_sample = False  # sample its tokens with `generator` even when the engine decodes greedily
        self.generator: torch.Generator | None = None
        self.cancelled = False  # leaves the batch at the next step
        self.stream = None  # its own GenerationStream (None: the engine's) and the row it reports there
        self.stream_row = row

    def new_branch(
        self, parent: _Branch | None, view: list[int], parser: StructureParser, position: int, depth: int
    ) -> _Branch:
        branch = _Branch(len(self.branches) + 1, parent, view, parser, position, depth)
        if parent is not None:
            self.visibility_ops.append(("copy", branch.slot, parent.slot))
        self.branches.append(branch)
        return branch

    @property
    def finalizing(self) -> bool:
        return self.state is SequenceState.FINALIZING

    @property
    def done(self) -> bool:
        return self.root.state is BranchState.DONE
