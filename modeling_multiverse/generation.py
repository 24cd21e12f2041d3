"""The Multiverse Engine: fork/merge decoding inside `generate()` (SPEC 6-8).

One KV cache row per prompt. Every forward pass feeds, for each prompt, the pending tokens of every
live branch (usually one token per branch; a forced seed is fed as one chunk). Each token gets its
SPEC 5 position id and a mask row that opens exactly the cache columns of its own ancestors, as in
tree attention for speculative decoding. The mask comes from a visibility table on the model's
device (`decode_attention.VisibilityTable`, one row per branch) to which each step only writes its
own columns: a fork copies the parent's row; a merge ORs the children's rows into the parent's, so
the conclusion sees every path without recomputing anything. The KV cache grows in place.

The loop (`MultiverseEngine.run`): pack the step's inputs from the engine state (`pack_step`; the
first step is the prefill of the prompts) -> the model -> settle what was fed (forks, ends of paths,
merges) -> schedule who samples -> choose tokens (one device-to-host copy) -> retire finished prompts.
Life of a branch (`_transition` owns every change): LIVE -> FORKING (its `</Goal>` is being fed) ->
WAITING (children run) -> LIVE again (conclusion) ... -> FINISHING (its `</Path>` is being fed) ->
DONE; CLOSING/ENDING branches write forced closing items instead of sampling.

Guards and misbehaviour (never a crash, never lost text):
- Structure is constrained: a tag the grammar (`StructureParser.allowed_next`) does not allow in a
  branch's current state (a stray `<Path>`/`</Path>`, `</Goal>` before any outline, anything but
  `<Goal>` after `<Parallel>`, a second `<Think>`) gets -inf before sampling. If a logits processor
  left nothing else, the best legal token by the model's own logits is taken instead. So the output
  always parses.
- `max_branches` caps the outlines of a goal: once reached, `<Outline>` is masked and the model must
  close the goal ("hundreds of outlines" become `max_branches` paths).
- `max_depth` caps fork depth: a deeper block is still decoded with the SPEC 4/5 rules, but its paths
  run one after another (sequentially), not side by side.
- Outline labels are copied as written (duplicates and non-numeric labels included); an outline with
  no `LABEL:` gives its path the ordinal label ("3").
- eos (or a stop string, or a user stopping criterion) inside a path ends that path: the branch closes
  whatever it has open with forced tags (`StructureParser.closing_items`), ending with `</Path>`. At
  top level inside an open block the block is closed the same way, then eos ends the sequence.
- `max_branch_tokens` per branch: the branch is closed the same way when it reaches the cap.
- `max_new_tokens` counts every generated token of every branch, forced seeds included. When it runs
  out, all open branches are closed and merged without further forward passes: these closing tags
  (`closing_tokens` in the output) are the only tokens beyond the budget. Text is never dropped.
  Buffers grow with use: a huge budget allocates nothing up front.
- Arguments that would silently decode something else are refused with a ValueError: a non-finite or
  negative temperature, top_p outside (0, 1], num_return_sequences > 1 without sampling, an empty
  prompt. Without `tokenizer=`, the tokenizer beside the weights is loaded without remote code.

The first step prefills the prompts: causally with positions 0..P-1, or, for a prompt that already
holds closed blocks (a response being continued), under SPEC 4 and 5 exactly as one full forward reads
it, the mask in the form the attention implementation takes (flex_attention a `BlockMask`, the kernel
path the intervals themselves, sdpa and eager an additive mask). A prompt that ends inside a
`<Parallel>` block is refused with a clear error. In a batch every row of the cache grows by the widest
row's step, so rows with fewer live branches carry padding slots (a single prompt carries none: its KV is
exactly the canonical output's, minus the last unfed tokens). A prompt that has finished leaves the batch
(its cache row is dropped), so a long answer does not make every other row decode padding.

Example:
    >>> out = model.generate(input_ids, tokenizer=tokenizer, max_new_tokens=256,
    ...                      return_dict_in_generate=True)  # doctest: +SKIP
    >>> out.parallelism[0], out.blocks[0]  # doctest: +SKIP
    (1.9, [{'labels': ['1', '2'], 'branch_lengths': [60, 41], 'depth': 0, 'start': 12}])

This file imports only torch, transformers, `.structure`, `.decode_attention` and `.streaming`, so it
ships with a checkpoint both as remote code and as `custom_generate/generate.py` (`write_custom_generate`).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    GenerationMixin,
    LogitsProcessorList,
    MinPLogitsWarper,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import StopStringCriteria
from transformers.utils import ModelOutput

from .attention import MULTIVERSE_KERNEL_ATTENTION, mask_for, stack
from .decode_attention import EngineCache, VisibilityTable, engine_attention
from .streaming import GenerationStream
from .structure import (
    CONCLUSION_SEED,
    LABEL_WINDOW,
    TAGS,
    TEXT,
    StructureError,
    StructureParser,
    TokenStructure,
    allowed_tags,
    parse_ids,
    path_seed,
    read_label,
    tag_ids_from_tokenizer,
)

ENGINE_DEFAULTS = {"max_depth": 2, "max_branches": 8, "max_branch_tokens": 2048}
"""Engine options, read from `generate(...)` kwargs, else from `generation_config` attributes, else here:
- `max_depth`: deepest block whose paths are decoded side by side (1 = top-level blocks only).
- `max_branches`: most outlines (hence paths) one goal may have.
- `max_branch_tokens`: most tokens one path may write itself (its nested paths count on their own).
"""

# Branch states (SPEC 6). `MultiverseEngine._transition` is the only code that changes them.
LIVE = "live"  # samples its next token
CLOSING = "closing"  # writes the items that close what it has open instead of sampling (eos, a stop, a cap, the budget)
ENDING = "ending"  # CLOSING, then eos: the root after an eos inside a block
FORKING = "forking"  # its `</Goal>` is pending: it forks once that is fed
WAITING = "waiting"  # its paths are being written; then it resumes as it was (LIVE, CLOSING or ENDING)
FINISHING = "finishing"  # its `</Path>` is pending: done once that is fed
DONE = "done"

_FORCED = float("nan")  # `token_logprobs` of a token the engine wrote without sampling it

# Prompt states
DECODING = "decoding"
FINALIZING = "finalizing"  # the budget ran out: open branches are closed and merged without forward passes


@dataclass
class MultiverseGenerateOutput(ModelOutput):
    """What `generate(..., return_dict_in_generate=True)` returns; lists have one entry per prompt.

    - `sequences`: prompts (as given) then canonical responses, right-padded with the pad token.
    - `generated_tokens`: tokens generated within `max_new_tokens` (all branches, forced seeds included).
    - `closing_tokens`: tags appended after the budget ran out to close open blocks.
    - `decode_steps`: forward passes that fed this prompt at least one token (SPEC 8).
    - `parallelism`: generated_tokens / decode_steps (SPEC 8).
    - `blocks`: every block of the response, in order: `labels`, `branch_lengths` (tokens of each path
      unit), `depth` (0 = top level), `start` (index of `<Parallel>` in the response).
    - `cache_tokens`: peak KV cache length (tokens per row, padding slots included).
    - `token_logprobs` (with `output_scores=True`): `[B, response width]` float32, aligned with the
      response part of `sequences` (canonical order): the log-probability of each sampled token under
      the distribution it was drawn from (logits after the processors, temperature included, and the
      grammar mask of `structure.allowed_tags`; greedy: the same log-softmax at the argmax). NaN where
      the engine forced the token (path and conclusion seeds, closing tags) and after the response.
      A sampled eos inside a path is not in the output (the path is closed instead), nor is its score.
    """

    sequences: torch.LongTensor | None = None
    generated_tokens: list | None = None
    closing_tokens: list | None = None
    decode_steps: list | None = None
    parallelism: list | None = None
    blocks: list | None = None
    cache_tokens: int | None = None
    token_logprobs: torch.FloatTensor | None = None


class _Branch:
    """One path being written (or the root). `view` is what it sees, in logical order, prompt first."""

    def __init__(self, slot: int, parent, view: list[int], parser: StructureParser, position: int, depth: int, state: str):
        self.slot = slot  # its row in the visibility table
        self.parent = parent
        self.view = view
        self.logprobs = [_FORCED] * len(view)  # per token of `view`: its sampled log-probability (token_logprobs)
        self.own_start = len(view)  # where its own tokens begin in `view`
        self.parser = parser
        self.base = len(parser.stack)  # stack height while inside its own path
        self.position = position  # SPEC 5 position id of the next token fed
        self.depth = depth  # forks above it
        self.pending: list[int] = []  # appended to `view`, not yet in the KV cache
        # positions of `pending` where they are not position, position + 1, ... (a prompt that holds blocks)
        self.pending_positions: list[int] | None = None
        self.state = state
        self.resume = LIVE  # the state it returns to after a merge
        self.logits_row = -1  # its row in the engine's `logits` of the last step
        self.labels: list[str] = []  # of the block it forked
        self.children: list[_Branch] = []
        self.p0 = 0  # position of the first token of each of its paths
        self.written = 0  # tokens of its own path (for max_branch_tokens)


class _Sequence:
    """One prompt: its branches (slot 0 is padding's), its counters, and the visibility changes to apply."""

    def __init__(self, row: int, prompt: list[int], parser: StructureParser):
        self.row = row  # in the batch as given (streams report it)
        self.prompt_length = len(prompt)
        # a prompt that holds blocks is prefilled under SPEC 4 and 5, as one full forward would read it
        self.prompt_structure = parser.finish().arrays() if parser.blocks else None
        self.branches: list[_Branch] = []
        self.visibility_ops: list[tuple[str, int, int]] = []  # ("copy" | "merge", dst slot, src slot)
        self.root = self.new_branch(None, list(prompt), parser, 0, 0, LIVE)
        self.root.base = 1
        self.root.pending = list(prompt)
        if self.prompt_structure is not None:
            self.root.pending_positions = self.prompt_structure.position_ids.tolist()
        self.state = DECODING
        self.generated = 0
        self.closing_tokens = 0
        self.steps = 0

    def new_branch(self, parent, view, parser, position, depth, state) -> _Branch:
        branch = _Branch(len(self.branches) + 1, parent, view, parser, position, depth, state)
        if parent is not None:
            self.visibility_ops.append(("copy", branch.slot, parent.slot))
        self.branches.append(branch)
        return branch

    @property
    def finalizing(self) -> bool:
        return self.state == FINALIZING

    @property
    def done(self) -> bool:
        return self.root.state == DONE


@dataclass
class StepInputs:
    """One forward pass, packed by `pack_step` from the engine state (which packing does not change).

    Query q of row b feeds `ids[0, b, q]` at SPEC 5 position `ids[1, b, q]` for branch slot
    `ids[2, b, q]` into cache column `start + q`; padding queries use slot 0. Logits are kept at the
    queries `keep` (the last token fed by each branch that samples next); `samplers` says which.
    The prefill of prompts that hold blocks also carries their SPEC 4 intervals `[B, D, W]` (see
    `attention.stack`): there the mask comes from the prompts' structure, not the visibility table.
    """

    ids: torch.Tensor  # [3, B, W] long: token ids, position ids, branch slots
    keep: torch.Tensor  # [K] long: query indices whose logits the model computes
    sample_rows: torch.Tensor  # [N] long: row of each sampling branch
    sample_columns: torch.Tensor  # [N] long: index into `keep` of its last query
    start: int
    fed: list[list[_Branch]]  # per row, the branches fed, in query order
    samplers: list[_Branch]  # in `sample_rows` order
    prompt_intervals: tuple[torch.Tensor, torch.Tensor] | None = None  # (forbid_lo, forbid_hi) of the prefill


def pack_step(rows: list[_Sequence], start: int, pad_id: int) -> StepInputs | None:
    """The inputs of the next forward pass: every pending token of every row; None when nothing is pending."""
    fed = [[b for b in seq.branches if b.pending] for seq in rows]
    width = max((sum(len(b.pending) for b in branches) for branches in fed), default=0)
    if width == 0:
        return None
    ids, positions, slots = [], [], []
    last_queries: list[tuple[_Branch, int, int]] = []  # (branch, row, query)
    for row, branches in enumerate(fed):
        row_ids, row_positions, row_slots = [], [], []
        for branch in branches:
            n = len(branch.pending)
            row_ids += branch.pending
            row_positions += branch.pending_positions or range(branch.position, branch.position + n)
            row_slots += [branch.slot] * n
            if branch.state == LIVE:
                last_queries.append((branch, row, len(row_ids) - 1))
        pad = width - len(row_ids)
        ids.append(row_ids + [pad_id] * pad)
        positions.append(row_positions + [0] * pad)
        slots.append(row_slots + [0] * pad)
    keep = sorted({q for _, _, q in last_queries}) or [width - 1]
    column = {q: i for i, q in enumerate(keep)}
    prompt_intervals = None
    if start == 0 and any(seq.prompt_structure is not None for seq in rows):  # the prefill (only roots are fed)
        structures = [seq.prompt_structure or TokenStructure.causal(seq.prompt_length) for seq in rows]
        _, forbid_lo, forbid_hi = stack(structures, [0] * len(rows), width)
        prompt_intervals = (forbid_lo, forbid_hi)
    return StepInputs(
        ids=torch.tensor([ids, positions, slots], dtype=torch.long),
        keep=torch.tensor(keep, dtype=torch.long),
        sample_rows=torch.tensor([row for _, row, _ in last_queries], dtype=torch.long),
        sample_columns=torch.tensor([column[q] for _, _, q in last_queries], dtype=torch.long),
        start=start,
        fed=fed,
        samplers=[branch for branch, _, _ in last_queries],
        prompt_intervals=prompt_intervals,
    )


# processors that read only the scores: the branches' token histories need not be built for them
_SCORE_ONLY = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper)


class MultiverseEngine:
    """Decodes a batch of prompts with fork/merge decoding. Built and run by `multiverse_generate`."""

    def __init__(self, model, tokenizer, generation_config, processors, stopping_criteria, options: dict, stream=None):
        self.model = model
        self.stream = stream or GenerationStream()  # streaming hook: see `streaming.py`
        self.tokenizer = tokenizer
        self.config = generation_config
        self.processors = processors
        self.stopping = stopping_criteria
        self.max_depth = int(options["max_depth"])
        self.max_branches = int(options["max_branches"])
        self.max_branch_tokens = options["max_branch_tokens"]
        if self.max_branches < 1 or self.max_depth < 0:
            raise ValueError(f"max_branches must be >= 1 and max_depth >= 0, got {self.max_branches} and {self.max_depth}")
        tag_ids = getattr(model.config, "tag_token_ids", None) or tag_ids_from_tokenizer(tokenizer)
        self.tag_ids = dict(tag_ids)
        self.tag_of_id = {self.tag_ids[t]: kind for kind, t in enumerate(TAGS)}
        self.tag_tensor = torch.tensor([self.tag_ids[t] for t in TAGS])
        eos = generation_config._eos_token_tensor
        self.eos_ids = set() if eos is None else set(torch.atleast_1d(eos).tolist())
        pad = generation_config._pad_token_tensor
        self.pad_id = int(pad) if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)
        self.conclusion_seed = self._encode(CONCLUSION_SEED)
        self.seeds: dict[str, list[int]] = {}
        self.needs_history = bool(stopping_criteria) or any(not isinstance(p, _SCORE_ONLY) for p in processors or [])
        self.max_new_tokens = 0
        self.cache = None
        self.cache_length = 0
        self.visibility: VisibilityTable | None = None
        self.logits: torch.Tensor | None = None  # [N, V] next-token logits of the last step's samplers

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _kind(self, token: int) -> int:
        return self.tag_of_id.get(token, TEXT)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, prompts: list[list[int]], max_new_tokens: int) -> list[_Sequence]:
        """Decode until every prompt is done. The first step feeds the prompts (the prefill)."""
        self.seqs = self._start(prompts, max_new_tokens)
        self.rows = list(self.seqs)  # the prompts still in the cache, one row each, in cache order
        while (step := pack_step(self.rows, self.cache_length, self.pad_id)) is not None:
            self._forward(step)  # the model, over every pending token of every row
            self._settle_fed(step)  # forks, ends of paths, merges
            todo = self._schedule()  # who samples; closing branches write their forced items
            if todo:
                self._choose(todo)  # processors, grammar, sampling: one device-to-host copy
            self._retire()  # a spent budget closes what is open; finished prompts leave the batch
        self.stream.end()  # streaming hook: the rest is final
        return self.seqs

    def _start(self, prompts: list[list[int]], max_new_tokens: int) -> list[_Sequence]:
        seqs = []
        for row, prompt in enumerate(prompts):
            parser = StructureParser(partial=True)
            try:
                for i, token in enumerate(prompt):
                    parser.feed(self._kind(token), i)
            except StructureError as err:  # the prompt's own tags break the grammar: say which prompt
                raise StructureError(f"prompt {row}: {err}", err.index) from None
            if parser.depth:
                raise ValueError(
                    f"prompt {row} ends inside a <Parallel> block ({' '.join(TAGS[f.kind] for f in parser.stack[1:])} "
                    "still open): the engine starts from a prompt outside any block"
                )
            seqs.append(_Sequence(row, prompt, parser))
            self.stream.open(row, seqs[-1].root)  # streaming hook
        self.max_new_tokens = max_new_tokens
        # buffers fit the request when it is moderate, else grow with use: never sized by the budget alone
        widest = max(len(p) for p in prompts)
        expected = widest + max_new_tokens + 64
        reserve = min(expected, widest + 512)
        device = self.model.device
        self.cache = EngineCache(self.model.config.get_text_config().num_hidden_layers, reserve, limit=expected)
        self.cache_length = 0
        self.visibility = VisibilityTable(len(seqs), 4, reserve, device, limit=expected)
        return seqs

    def _forward(self, step: StepInputs) -> None:
        """One forward pass. Host to device: the packed step only; the mask is built on the device."""
        device = self.model.device
        ids, positions, slots = step.ids.to(device, non_blocking=True)
        width = ids.shape[1]
        self.visibility.ensure(max(len(s.branches) for s in self.rows) + 1, step.start + width)
        for row, seq in enumerate(self.rows):  # forks and merges since the last step
            for op, dst, src in seq.visibility_ops:
                (self.visibility.copy if op == "copy" else self.visibility.merge)(row, dst, src)
            seq.visibility_ops.clear()
        self.visibility.write(slots, step.start)
        structured = {}
        if step.prompt_intervals is None:
            mask = self.visibility.mask(slots, step.start, self.model.dtype)
        else:  # prompts with blocks: SPEC 4 in the form the attention takes (flex: BlockMask, kernel: intervals)
            intervals = tuple(t.to(device, non_blocking=True) for t in step.prompt_intervals)
            implementation = self.model.get_decoder().config._attn_implementation
            if implementation == MULTIVERSE_KERNEL_ATTENTION:
                mask, structured["multiverse_intervals"] = None, intervals
            else:
                mask = mask_for(*intervals, implementation, self.model.dtype)
        outputs = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=step.keep.to(device, non_blocking=True),
            **structured,
        )
        self.cache_length = step.start + width
        rows, columns = step.sample_rows.to(device, non_blocking=True), step.sample_columns.to(device, non_blocking=True)
        self.logits = outputs.logits[rows, columns].float()
        for i, branch in enumerate(step.samplers):
            branch.logits_row = i

    def _settle_fed(self, step: StepInputs) -> None:
        for seq, branches in zip(self.rows, step.fed):
            for branch in branches:
                last = branch.pending_positions[-1] if branch.pending_positions else branch.position + len(branch.pending) - 1
                branch.position = last + 1
                branch.pending_positions = None
            if branches:
                seq.steps += 1
            for branch in branches:
                self._transition(seq, branch, "fed")

    def _schedule(self) -> list[tuple[_Sequence, _Branch]]:
        """The branches that sample this step, within each prompt's budget; closing ones write their items."""
        todo = []
        for seq in self.rows:
            if seq.state != DECODING:
                continue
            sampling = 0
            for branch in list(seq.branches):
                if branch.pending:
                    continue
                if branch.state in (CLOSING, ENDING):
                    self._close(seq, branch)
                elif branch.state == LIVE:
                    if seq.generated + sampling < self.max_new_tokens:
                        todo.append((seq, branch))
                        sampling += 1
                    else:
                        seq.state = FINALIZING
        return todo

    def _retire(self) -> None:
        for seq in self.rows:
            if not seq.done and (seq.finalizing or seq.generated >= self.max_new_tokens):
                self._finalize(seq)
        if any(seq.done for seq in self.rows) and self.cache_length:
            keep = [row for row, seq in enumerate(self.rows) if not seq.done]
            index = torch.tensor(keep, dtype=torch.long, device=self.model.device)
            self.cache.batch_select_indices(index)
            self.visibility.select_rows(index)
            self.rows = [self.rows[row] for row in keep]

    # -- branch states -------------------------------------------------------------------------
    def _transition(self, seq: _Sequence, branch: _Branch, event: str) -> None:
        """Every change of a branch's state. Events:
        - "wrote": tokens were appended: a closed goal makes it FORKING, its closed own path FINISHING;
        - "fed": its pending tokens went through the model (or were dropped at finalizing): FORKING forks,
          FINISHING is DONE (the last path of a block merges it);
        - "stop": a stop criterion or `max_branch_tokens`: LIVE -> CLOSING;
        - "eos": at top level the root is DONE; inside a block the root is ENDING, a path CLOSING;
        - "closed": nothing is open any more (the root): DONE, after eos if ENDING;
        - "out of budget": every branch closes: LIVE -> CLOSING, and WAITING ones resume CLOSING.
        """
        state = branch.state
        if event == "wrote":
            if branch.parser.expects_fork:
                branch.resume, branch.state = state, FORKING
            elif branch.parent is not None and len(branch.parser.stack) < branch.base:
                branch.state = FINISHING
        elif event == "fed":
            branch.pending = []
            if state == FORKING:
                self._fork(seq, branch)
            elif state == FINISHING:
                branch.state = DONE
                self.stream.done(seq.row, branch, seq.generated, seq.steps)  # streaming hook
                self._child_done(seq, branch.parent)
        elif event == "stop":
            branch.state = CLOSING
        elif event == "eos":
            if branch.parent is None and len(branch.parser.stack) == 1:
                branch.state = DONE
            else:
                branch.state = ENDING if branch.parent is None else CLOSING
        elif event == "closed":
            if state == ENDING:
                self._append(seq, branch, [min(self.eos_ids)])
            branch.state = DONE
        elif event == "out of budget":
            if state == LIVE:
                branch.state = CLOSING
            elif branch.resume == LIVE:
                branch.resume = CLOSING

    def _append(self, seq: _Sequence, branch: _Branch, tokens: list[int], logprobs: list[float] | None = None) -> None:
        """Add tokens to a branch's view and parser; they are fed to the model in the next step.
        `logprobs` are those of sampled tokens; without them the tokens count as forced."""
        if not seq.finalizing and seq.generated + len(tokens) > self.max_new_tokens:
            seq.state = FINALIZING  # forced tokens that do not fit: from here on only closing items
        for token in tokens:
            branch.parser.feed(self._kind(token), len(branch.view))
            branch.view.append(token)
        branch.logprobs.extend(logprobs or [_FORCED] * len(tokens))
        branch.pending.extend(tokens)
        branch.written += len(tokens)
        if seq.finalizing:
            seq.closing_tokens += len(tokens)
        else:
            seq.generated += len(tokens)
        self.stream.tokens(seq.row, branch, tokens, seq.generated, seq.steps)  # streaming hook

    def _label(self, view: list[int], outline, k: int) -> str:
        """The label written in an outline ("1", "2.1", or whatever short text precedes ':'), else the ordinal."""
        end = outline.close if outline.close is not None else len(view)
        text = self.tokenizer.decode(view[outline.open + 1 : min(end, outline.open + 1 + LABEL_WINDOW)])
        return read_label(text, strict=False) or str(k + 1)

    def _seed(self, label: str) -> list[int]:
        if label not in self.seeds:
            self.seeds[label] = self._encode(path_seed(label))
        return self.seeds[label]

    def _fork(self, seq: _Sequence, branch: _Branch) -> None:
        block = branch.parser.current_block
        branch.labels = [self._label(branch.view, o, k) for k, o in enumerate(block.outlines)]
        branch.state = WAITING
        branch.p0 = branch.position
        parallel = branch.depth + 1 <= self.max_depth and not seq.finalizing
        self.stream.fork(seq.row, branch, branch.labels, parallel, seq.generated, seq.steps)  # streaming hook
        for _ in range(len(branch.labels) if parallel else 1):
            self._start_child(seq, branch)

    def _start_child(self, seq: _Sequence, parent: _Branch) -> None:
        label = parent.labels[len(parent.children)]
        closing = parent.resume != LIVE or seq.finalizing
        child = seq.new_branch(
            parent, list(parent.view), parent.parser.copy(), parent.p0, parent.depth + 1, CLOSING if closing else LIVE
        )
        child.logprobs = list(parent.logprobs)
        parent.children.append(child)
        self.stream.open(seq.row, child, parent, label)  # streaming hook
        self._append(seq, child, self._seed(label))
        child.base = len(child.parser.stack)
        child.written = 0  # the seed is not the path's own writing

    def _child_done(self, seq: _Sequence, parent: _Branch) -> None:
        if len(parent.children) < len(parent.labels):
            self._start_child(seq, parent)  # sequential block: the next path starts now
        elif all(c.state == DONE for c in parent.children):
            self._merge(seq, parent)

    def _merge(self, seq: _Sequence, parent: _Branch) -> None:
        """Append every path to the parent's view in label order and open all of them to it."""
        for child in parent.children:
            for token in child.view[child.own_start :]:
                parent.parser.feed(self._kind(token), len(parent.view))
                parent.view.append(token)
            parent.logprobs.extend(child.logprobs[child.own_start :])
            seq.visibility_ops.append(("merge", parent.slot, child.slot))
        parent.position = max(c.position for c in parent.children)
        parent.children = []
        parent.state = parent.resume
        self._append(seq, parent, self.conclusion_seed)

    def _close(self, seq: _Sequence, branch: _Branch) -> None:
        """Write the forced items that close what the branch has open, up to a fork or its end."""
        while branch.state in (CLOSING, ENDING):
            items = branch.parser.closing_items()
            if not items:  # the root, back at top level
                self._transition(seq, branch, "closed")
                return
            for item in items:
                self._append(seq, branch, self._encode(item) if isinstance(item, str) else [self.tag_ids[TAGS[item]]])
            self._transition(seq, branch, "wrote")

    def _finalize(self, seq: _Sequence) -> None:
        """The budget ran out: close and merge every open branch without more forward passes."""
        seq.state = FINALIZING
        for branch in seq.branches:
            self._transition(seq, branch, "out of budget")
        for _ in range(10 * len(seq.root.view) + 1000):
            if seq.done:
                return
            for branch in list(seq.branches):
                if branch.pending or branch.state in (FORKING, FINISHING):
                    self._transition(seq, branch, "fed")
            for branch in list(seq.branches):
                if branch.state in (CLOSING, ENDING) and not branch.pending:
                    self._close(seq, branch)
        raise RuntimeError("internal error: the Multiverse engine could not close the sequence")

    # -- choosing tokens --------------------------------------------------------------------------
    def _histories(self, branches: list[_Branch]) -> torch.LongTensor:
        """Each branch's view as one left-padded row, the input standard logits processors expect."""
        if not self.needs_history:  # every processor reads only the scores
            return torch.full((len(branches), 1), self.pad_id, dtype=torch.long)
        width = max(len(b.view) for b in branches)
        return torch.tensor([[self.pad_id] * (width - len(b.view)) + b.view for b in branches], dtype=torch.long)

    def _choose(self, todo: list[tuple[_Sequence, _Branch]]) -> None:
        """Sample (or take the argmax of) one token per branch, under the grammar, then accept it."""
        branches = [b for _, b in todo]
        raw = self.logits[torch.tensor([b.logits_row for b in branches], device=self.logits.device)]
        device = raw.device
        histories = self._histories(branches)
        scores = self.processors(histories.to(device), raw.clone()) if self.processors else raw.clone()
        forbidden = torch.stack([~allowed_tags(b.parser, self.max_branches) for b in branches]).to(device)  # [N, 12]
        illegal = torch.zeros_like(scores, dtype=torch.bool)
        illegal[:, self.tag_tensor.to(device)] = forbidden
        scores.masked_fill_(illegal, -float("inf"))
        # a processor that left only illegal tokens (or NaN): the best legal token by the model's own logits
        dead = ~(scores.amax(-1, keepdim=True) > -float("inf"))
        scores = torch.where(dead, raw.masked_fill(illegal, -float("inf")), scores)
        if self.config.do_sample:
            tokens = torch.multinomial(torch.softmax(scores.float(), -1), 1).squeeze(1)
        else:
            tokens = scores.argmax(-1)
        logprobs = [None] * len(branches)
        if self.config.output_scores:  # token_logprobs: the sampled token under the distribution it came from
            chosen = torch.log_softmax(scores.float(), -1).gather(1, tokens[:, None]).squeeze(1)
            logprobs = [[value] for value in chosen.tolist()]
        tokens = tokens.tolist()  # the step's one device-to-host copy (two with output_scores)
        stop = [False] * len(branches)
        if self.stopping:
            extended = torch.cat([histories, torch.tensor(tokens)[:, None]], 1).to(device)
            stop = self.stopping(extended, scores).tolist()
        for (seq, branch), token, logprob, stopped in zip(todo, tokens, logprobs, stop):
            self._accept(seq, branch, token, stopped, logprob)

    def _accept(self, seq: _Sequence, branch: _Branch, token: int, stopped: bool, logprob: list[float] | None = None) -> None:
        if token in self.eos_ids:
            self._transition(seq, branch, "eos")
            if branch.state == DONE:
                self._append(seq, branch, [token], logprob)
            else:  # eos inside a block ends the path (or closes the block, then ends the sequence)
                self._close(seq, branch)
            return
        self._append(seq, branch, [token], logprob)
        self._transition(seq, branch, "wrote")
        if branch.state != LIVE:
            return
        capped = self.max_branch_tokens is not None and branch.written >= self.max_branch_tokens
        if stopped or (branch.parent is not None and capped):
            self._transition(seq, branch, "stop")
            self._close(seq, branch)


# ---------------------------------------------------------------------------------------------
# Entry points

_TOKENIZERS: dict[str, object] = {}


def _tokenizer_for(model, tokenizer):
    """The tokenizer given, else the one saved beside the weights, loaded without running remote code."""
    if tokenizer is not None:
        return tokenizer
    source = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    if not source:
        raise ValueError(
            "the Multiverse engine needs the tokenizer (to write path seeds and read outline labels): "
            "pass generate(..., tokenizer=tokenizer) or load the model from a folder that has one"
        )
    if source not in _TOKENIZERS:
        # never trust_remote_code here (a prompt would wait in a terminal, and code would run unasked);
        # config= keeps AutoTokenizer from reloading the config, which would ask to trust remote code
        try:
            _TOKENIZERS[source] = AutoTokenizer.from_pretrained(source, config=model.config, trust_remote_code=False)
        except Exception as err:  # noqa: BLE001 - any failure to load means: pass the tokenizer explicitly
            raise ValueError(
                f"the Multiverse engine could not load the tokenizer of {source!r} without remote code "
                f"({type(err).__name__}); pass generate(..., tokenizer=tokenizer)"
            ) from None
    return _TOKENIZERS[source]


def _check_sampling(config) -> None:
    """Refuse sampling settings that would silently decode something else."""
    temperature, top_p, top_k = config.temperature, config.top_p, config.top_k
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if config.do_sample and temperature == 0:
        raise ValueError("temperature=0 with do_sample=True is greedy decoding: pass do_sample=False instead")
    if top_p is not None and not (0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"top_k must be an integer >= 0, got {top_k}")


def _new_token_budget(config, prompt_length: int) -> int:
    if config.max_new_tokens is not None:
        budget = config.max_new_tokens
    else:
        budget = max(0, (config.max_length or prompt_length + 20) - prompt_length)
    if isinstance(budget, float) and budget.is_integer():
        budget = int(budget)
    if not isinstance(budget, int) or budget < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {budget!r}")
    return budget


def multiverse_generate(
    model,
    inputs: torch.Tensor | None = None,
    generation_config=None,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    tokenizer=None,
    **kwargs,
):
    """Fork/merge decoding (SPEC 6) with transformers' generation config, processors and warpers.

    Greedy or sampling (`do_sample`, `temperature`, `top_k`, `top_p`, `repetition_penalty`, ...),
    `num_return_sequences` (sampling), `eos_token_id`, `stop_strings`, `max_new_tokens`, plus the
    engine options of `ENGINE_DEFAULTS`. Returns `sequences` (prompt + canonical response), or a
    `MultiverseGenerateOutput`. `streamer` (put/end, one prompt) receives the canonical response as it
    becomes final; `branch_callback` receives a `BranchEvent` as each branch advances (`streaming.py`).

    >>> out = multiverse_generate(model, input_ids, tokenizer=tok, max_new_tokens=64)  # doctest: +SKIP
    """
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    if input_ids is None:
        raise ValueError("the Multiverse engine needs input_ids (the tokenized prompts)")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    attention_mask = kwargs.pop("attention_mask", None)
    options = {}
    for name, default in ENGINE_DEFAULTS.items():
        value = kwargs.pop(name, None)
        if value is None and generation_config is not None:
            value = getattr(generation_config, name, None)
        if value is None:
            value = getattr(model.generation_config, name, None)
        options[name] = default if value is None else value
    streamer = kwargs.pop("streamer", None)
    branch_callback = kwargs.pop("branch_callback", None)
    for unsupported in ("assistant_model", "prefix_allowed_tokens_fn", "negative_prompt_ids"):
        if kwargs.pop(unsupported, None) is not None:
            raise ValueError(f"{unsupported} is not supported by the Multiverse engine; pass multiverse=False")
    for ignored in ("synced_gpus", "negative_prompt_attention_mask", "use_cache"):
        kwargs.pop(ignored, None)
    generation_config, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    model_kwargs = {k: v for k, v in model_kwargs.items() if v is not None}
    if model_kwargs:
        raise ValueError(f"unexpected arguments to the Multiverse engine: {', '.join(sorted(model_kwargs))}")
    if (generation_config.num_beams or 1) > 1:
        raise ValueError("the Multiverse engine decodes greedily or by sampling; for beam search pass multiverse=False")
    _check_sampling(generation_config)
    returns = generation_config.num_return_sequences or 1
    if returns > 1 and not generation_config.do_sample:
        raise ValueError(f"num_return_sequences={returns} needs do_sample=True: greedy decoding returns one sequence per prompt")
    if streamer is not None and input_ids.shape[0] * returns != 1:
        raise ValueError(f"a streamer takes one prompt, got a batch of {input_ids.shape[0] * returns}; use branch_callback for batches")
    prompt_length = input_ids.shape[1]
    max_new_tokens = _new_token_budget(generation_config, prompt_length)
    if attention_mask is not None:
        empty = [row for row in range(input_ids.shape[0]) if not bool(attention_mask[row].any())]
        if empty:
            raise ValueError(f"prompt {empty[0]} is empty: its attention_mask is all zeros")
    if prompt_length == 0:
        raise ValueError("the prompts are empty: the engine needs at least one prompt token to start from")
    tokenizer = _tokenizer_for(model, tokenizer)
    device = model.device
    model._prepare_special_tokens(generation_config, attention_mask is not None, device=device)
    processors = model._get_logits_processor(
        generation_config=generation_config,
        input_ids_seq_length=prompt_length,
        encoder_input_ids=input_ids,
        logits_processor=logits_processor,
        device=device,
        model_kwargs={},
    )
    stopping = StoppingCriteriaList(stopping_criteria or [])
    if generation_config.stop_strings is not None:
        stopping.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=generation_config.stop_strings))

    if returns > 1:  # each prompt `returns` times, one after another, as transformers orders them
        input_ids = input_ids.repeat_interleave(returns, 0)
        attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(returns, 0)
    ids = input_ids.detach().cpu()
    prompts = []
    for row in range(ids.shape[0]):
        if attention_mask is None:
            prompts.append(ids[row].tolist())
        else:
            keep = attention_mask[row].detach().cpu().bool()
            prompts.append(ids[row][keep].tolist())
    stream = GenerationStream(streamer, branch_callback)
    stream.prompt(input_ids)
    engine = MultiverseEngine(model, tokenizer, generation_config, processors, stopping, options, stream)
    with torch.no_grad(), engine_attention(model):
        seqs = engine.run(prompts, max_new_tokens)

    responses = [s.root.view[s.prompt_length :] for s in seqs]
    width = max(len(r) for r in responses)
    token_logprobs = None
    if generation_config.output_scores:
        token_logprobs = torch.full((len(seqs), width), _FORCED)
        for row, seq in enumerate(seqs):
            scored = seq.root.logprobs[seq.prompt_length :]
            token_logprobs[row, : len(scored)] = torch.tensor(scored, dtype=torch.float32)
        token_logprobs = token_logprobs.to(input_ids.device)
    generated = torch.full((len(seqs), width), engine.pad_id, dtype=torch.long)
    for row, response in enumerate(responses):
        generated[row, : len(response)] = torch.tensor(response, dtype=torch.long)
    sequences = torch.cat([input_ids, generated.to(input_ids.device)], 1)
    if not generation_config.return_dict_in_generate:
        return sequences
    return MultiverseGenerateOutput(
        sequences=sequences,
        generated_tokens=[s.generated for s in seqs],
        closing_tokens=[s.closing_tokens for s in seqs],
        decode_steps=[s.steps for s in seqs],
        parallelism=[s.generated / max(s.steps, 1) for s in seqs],
        blocks=[_block_stats(engine, s) for s in seqs],
        cache_tokens=engine.cache_length,
        token_logprobs=token_logprobs,
    )


def _block_stats(engine: MultiverseEngine, seq: _Sequence) -> list[dict]:
    """The response's blocks; parsed with the prompt, which may have opened `<Think>` or written blocks of its own."""
    view, start = seq.root.view, seq.prompt_length
    structure = parse_ids(view, engine.tag_ids, partial=True)
    return [
        {
            "labels": [engine._label(view, o, k) for k, o in enumerate(block.outlines)],
            "branch_lengths": [(u.end or len(view)) - u.start for u in block.paths],
            "depth": block.depth,
            "start": block.open - start,
        }
        for block in structure.iter_blocks()
        if block.open >= start
    ]


def generate(*args, model, multiverse: bool = True, **kwargs):
    """Entry point of `custom_generate/generate.py`: `model.generate(..., custom_generate=DIR, trust_remote_code=True)`.

    `multiverse=False` falls back to transformers' own decoding.
    """
    kwargs.pop("custom_generate", None)
    if not multiverse:
        return GenerationMixin.generate(model, *args, **kwargs)
    return multiverse_generate(model, *args, **kwargs)


SHIPPED_MODULES = ("structure.py", "attention.py", "decode_attention.py", "streaming.py")
"""The modules `generate.py` imports relatively; they ship beside it."""


def write_custom_generate(save_directory: str | Path) -> Path:
    """Write this engine as `custom_generate/generate.py` (+ the modules it imports) next to a saved model.

    >>> write_custom_generate("out/smollm2-multiverse")  # doctest: +SKIP
    PosixPath('out/smollm2-multiverse/custom_generate')
    """
    here = Path(__file__).resolve()
    target = Path(save_directory) / "custom_generate"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(here, target / "generate.py")
    for name in SHIPPED_MODULES:
        shutil.copyfile(here.with_name(name), target / name)
    (target / "requirements.txt").write_text("torch\ntransformers\n")
    return target


__all__ = ["ENGINE_DEFAULTS", "MultiverseEngine", "MultiverseGenerateOutput", "StepInputs", "generate", "multiverse_generate", "pack_step", "write_custom_generate"]
