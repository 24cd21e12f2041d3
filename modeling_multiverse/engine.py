"""The Multiverse Engine: fork/merge decoding of a batch of prompts (SPEC.md §6-8). Built and run by `generate()`.

One KV cache row per prompt. Every forward pass feeds, for each prompt, the pending tokens of every
live branch (usually one token per branch; a forced seed is fed as one chunk). Each token gets its
SPEC.md §5 position id and a mask row that opens exactly the cache columns of its own ancestors, as in
tree attention for speculative decoding. The mask comes from a visibility table on the model's
device (`decode_attention.VisibilityTable`, one row per branch) to which each step only writes its
own columns: a fork copies the parent's row; a merge ORs the children's rows into the parent's, so
the conclusion sees every path without recomputing anything. The KV cache grows in place. With the
option `merge="reprefill"` (`MERGE_MODES`) a merge instead re-feeds the paths to the parent as a stock
engine would: a causal chunk after the trunk, at sequential positions (counted as `reprefill_tokens`).

The loop (`MultiverseEngine.run`): pack the step's inputs from the engine state (`pack_step`; the
first step is the prefill of the prompts) -> the model -> settle what was fed (forks, ends of paths,
merges) -> schedule who samples -> choose tokens (one device-to-host copy) -> retire finished prompts.
Branch and sequence states and every transition between them: `engine_state.py`.

Guards and misbehaviour (never a crash, never lost text):
- Structure is constrained: a tag the grammar (`StructureParser.allowed_next`) does not allow in a
  branch's current state (a stray `<Path>`/`</Path>`, `</Goal>` before any outline, anything but
  `<Goal>` after `<Parallel>`, a second `<Think>`) gets -inf before sampling. If a logits processor
  left nothing else, the best legal token by the model's own logits is taken instead. So the output
  always parses.
- `max_branches` caps the outlines of a goal: once reached, `<Outline>` is masked and the model must
  close the goal ("hundreds of outlines" become `max_branches` paths).
- `max_depth` caps fork depth: a deeper block is still decoded with the SPEC.md §4/5 rules, but its paths
  run one after another (sequentially), not side by side.
- Outline labels are copied as written (duplicates and non-numeric labels included); an outline with
  no `LABEL:` gives its path the ordinal label ("3").
- eos inside a path ends that path: the branch closes whatever it has open with forced tags
  (`StructureParser.closing_items`), ending with `</Path>`. At top level inside an open block the block
  is closed the same way, then eos ends the sequence.
- A stopping criterion (a stop string, a user's criterion) ends the sequence. Fired while the root
  decides, the root closes what is open and the sequence ends there. Fired while a path decides, the
  paths are not cut: they run to their ends (an earlier sibling path comes first in the canonical text,
  so cutting it would change the text before the stop), and the root closes instead of sampling next.
- `max_branch_tokens` per branch: the branch is closed the same way when it reaches the cap.
- `max_new_tokens` counts every generated token of every branch, forced seeds included. When it runs
  out, all open branches are closed and merged without further forward passes: these closing tags
  (`closing_tokens` in the output) are the only tokens beyond the budget. Text is never dropped.
  Buffers grow with use: a huge budget allocates nothing up front.

Logits processors and stopping criteria see transformers' `[batch x num_return_sequences, length]` rows,
row i always sequence i, once per round of deciding branches (`criteria_view.py`); processors that read
only the scores (temperature, top-k/p, min-p) are applied to all deciding branches at once.

The first step prefills the prompts: causally with positions 0..P-1, or, for a prompt that already
holds closed blocks (a response being continued), under SPEC.md §4 and 5 exactly as one full forward reads
it, the mask in the form the attention implementation takes (flex_attention a `BlockMask`, the kernel
path the intervals themselves, sdpa and eager an additive mask). A prompt that ends inside a
`<Parallel>` block is refused with a clear error. In a batch every row of the cache grows by the widest
row's step, so rows with fewer live branches carry padding slots (a single prompt carries none: its KV is
exactly the canonical output's, minus the last unfed tokens). A prompt that has finished leaves the batch
(its cache row is dropped), so a long answer does not make every other row decode padding.

Continuous batching (`serving.ContinuousEngine`): `admit` adds a prompt to a running batch as a new cache row
whose earlier columns none of its branches sees; at the next step its prompt (positions 0..P-1) is prefilled
in a pass of its own and spliced into its row (`_prefill_joined`), so it decodes as it would alone. `step()` is
one turn of the loop; a cancelled prompt leaves before the next one. With `compact`, columns no running row
sees any more are dropped (`_compact`).

    >>> engine = MultiverseEngine(model, tok, config, processors, stopping, ENGINE_DEFAULTS)  # doctest: +SKIP
    >>> seqs = engine.run([prompt_ids], max_new_tokens=64)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .attention import MULTIVERSE_KERNEL_ATTENTION, mask_for, stack
from .criteria_view import CriteriaView, rounds
from .decode_attention import EngineCache, VisibilityTable
from .engine_state import (
    _FORCED,
    BRANCH_TRANSITIONS,
    RESUME,
    SEQUENCE_TRANSITIONS,
    BranchEvent,
    BranchState,
    SequenceEvent,
    SequenceState,
    _Branch,
    _Sequence,
    advance,
)
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
    path_seed,
    read_label,
    tag_ids_from_tokenizer,
)
from .transformers_generation import attention_implementation, special_token_ids

LIVE, CLOSING, ENDING = BranchState.LIVE, BranchState.CLOSING, BranchState.ENDING
FORKING, FINISHING = BranchState.FORKING, BranchState.FINISHING

MERGE_MODES = ("exact", "reprefill")
"""How a conclusion reads its block's paths (engine option `merge`, first = default). `exact`: from the cache, as
SPEC.md §4 and 5 say. `reprefill`: what a stock engine (vLLM, SGLang unchanged) must do: the paths re-fed causally
after the trunk, at sequential positions, so path k sees paths 1..k-1, which the model was never trained on."""

@dataclass
class StepInputs:
    """One forward pass, packed by `pack_step` from the engine state (which packing does not change).

    Query q of row b feeds `ids[0, b, q]` at SPEC.md §5 position `ids[1, b, q]` for branch slot
    `ids[2, b, q]` into cache column `start + q`; padding queries use slot 0. Logits are kept at the
    queries `keep` (the last token fed by each branch that samples next); `samplers` says which.
    The prefill of prompts that hold blocks also carries their SPEC.md §4 intervals `[B, D, W]` (see
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
            if branch.state is LIVE:
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
    """Decodes a batch of prompts with fork/merge decoding. Built and run by `generation.multiverse_generate`.

    `options` holds the engine options of `generation.ENGINE_DEFAULTS`; `generation_config` is prepared
    (`transformers_generation`): its eos and pad tokens, `do_sample` and `output_scores` are read.
    """

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
        self.merge = options.get("merge", MERGE_MODES[0])
        if self.merge not in MERGE_MODES:
            raise ValueError(f"merge must be one of {', '.join(MERGE_MODES)}, got {self.merge!r}")
        if self.max_branches < 1 or self.max_depth < 0:
            raise ValueError(
                f"max_branches must be >= 1 and max_depth >= 0, got {self.max_branches} and {self.max_depth}"
            )
        tag_ids = getattr(model.config, "tag_token_ids", None) or tag_ids_from_tokenizer(tokenizer)
        self.tag_ids = dict(tag_ids)
        self.tag_of_id = {self.tag_ids[t]: kind for kind, t in enumerate(TAGS)}
        self.tag_tensor = torch.tensor([self.tag_ids[t] for t in TAGS])
        self.eos_ids, self.pad_id = special_token_ids(generation_config)
        self.conclusion_seed = self._encode(CONCLUSION_SEED)
        self.seeds: dict[str, list[int]] = {}
        # processors that read token ids get the fixed per-sequence rows; score-only ones all branches at once
        self.processors_read_ids = any(not isinstance(p, _SCORE_ONLY) for p in processors or [])
        self.max_new_tokens = 0  # the budget of a sequence without its own (`_Sequence.budget`)
        self.seqs: list[_Sequence] = []  # every prompt, in batch order
        self.rows: list[_Sequence] = []  # the prompts still in the cache, one row each, in cache order
        self.view: CriteriaView | None = None  # what processors and stopping criteria see
        self.cache: EngineCache | None = None
        self.cache_length = 0
        self.peak_columns = 0  # the most cache columns the engine held at once
        self.compact = False  # drop columns no running row sees (`_compact`); the continuous engine sets it
        self.share_prefill = False  # rows joining with one prompt share its prefill; the continuous engine sets it
        self.visibility: VisibilityTable | None = None
        self.logits: torch.Tensor | None = None  # [N, V] next-token logits of the last step's samplers

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _kind(self, token: int) -> int:
        return self.tag_of_id.get(token, TEXT)

    def _budget(self, seq: _Sequence) -> int:
        return self.max_new_tokens if seq.budget is None else seq.budget

    def _stream(self, seq: _Sequence) -> GenerationStream:
        return self.stream if seq.stream is None else seq.stream

    # -- the loop ------------------------------------------------------------------------------
    def run(
        self, prompts: list[list[int]], max_new_tokens: int, prompt_ids: torch.Tensor | None = None
    ) -> list[_Sequence]:
        """Decode until every prompt is done (an engine runs once). The first step feeds the prompts (the prefill).

        `prompt_ids` are the prompts as given to `generate` (padding included), the start of the rows
        processors and criteria see; by default the prompts left-padded.
        """
        self._start(prompts, max_new_tokens, prompt_ids)
        while self.step():
            pass
        self.stream.end()  # streaming hook: the rest is final
        return self.seqs

    def step(self) -> bool:
        """One forward pass over every running row; False (and nothing run) when no row has a pending token."""
        self._drop_rows()  # cancelled prompts leave before the step
        self._prefill_joined()  # prompts that joined a running batch: prefilled alone, then spliced in
        step = pack_step(self.rows, self.cache_length, self.pad_id)
        if step is None:
            return False
        self._forward(step)  # the model, over every pending token of every row
        self._settle_fed(step)  # forks, ends of paths, merges
        todo = self._schedule()  # who samples; closing branches write their forced items
        if todo:
            self._choose(todo)  # processors, grammar, sampling, stopping criteria: one device-to-host copy
        self._retire()  # a spent budget closes what is open; finished prompts leave the batch
        return True

    def _start(self, prompts: list[list[int]], max_new_tokens: int, prompt_ids: torch.Tensor | None) -> None:
        for row, prompt in enumerate(prompts):
            self.seqs.append(self.sequence(prompt, row))
            self.stream.open(row, self.seqs[-1].root)  # streaming hook
        self.rows = list(self.seqs)
        self.max_new_tokens = max_new_tokens
        widest = max(len(p) for p in prompts)
        if prompt_ids is None:
            prompt_ids = torch.tensor([[self.pad_id] * (widest - len(p)) + p for p in prompts], dtype=torch.long)
        self.view = CriteriaView(prompt_ids, self.pad_id)
        # buffers fit the request when it is moderate, else grow with use: never sized by the budget alone
        self._new_buffers(len(self.seqs), widest + max_new_tokens + 64, widest + 512)

    def _new_buffers(self, rows: int, expected: int | None, reserve: int) -> None:
        """An empty cache and visibility table of `rows` rows; `expected` columns caps growth (a hint)."""
        reserve = min(expected, reserve) if expected is not None else reserve
        self.cache = EngineCache(self.model.config.get_text_config().num_hidden_layers, reserve, limit=expected)
        self.cache_length = 0
        self.visibility = VisibilityTable(rows, 4, reserve, self.model.device, limit=expected)

    def sequence(self, prompt: list[int], row: int, max_new_tokens: int | None = None) -> _Sequence:
        """A validated prompt as a sequence (not yet running): its grammar state, its root fed the prompt."""
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
        seq = _Sequence(row, prompt, parser)
        seq.budget = max_new_tokens
        return seq

    def admit(self, seq: _Sequence) -> None:
        """Add a sequence to the running batch: a new cache row, its prompt fed at the next step.

        The new row's cache columns so far are zeros that none of its branches sees, and its prompt gets
        positions 0..P-1, so it decodes exactly as it would alone. An idle engine starts from fresh buffers
        (what finished rows held is freed). A prompt that holds blocks is prefilled under SPEC.md §4 only as the
        first step of fresh buffers: admit it into an idle engine.
        """
        if not self.rows:
            self._new_buffers(0, None, seq.prompt_length + min(self._budget(seq), 512) + 64)
        elif seq.prompt_structure is not None:
            raise ValueError("a prompt that holds blocks is admitted only into an idle engine (its SPEC.md §4 prefill)")
        self.cache.add_rows(1)
        self.visibility.add_rows(1)
        self.rows.append(seq)
        self._stream(seq).open(seq.stream_row, seq.root)  # streaming hook

    def _prefill_joined(self) -> None:
        """Prefill a prompt that joined a running batch in a forward pass of its own, then write its keys and
        values into the first columns of its new cache row (`EngineCache.splice`): in the shared step every
        other row would compute as many padding queries, and appended columns would widen every row's
        attention. Its last token stays pending: it is fed with the others' next tokens, at the frontier.

        With `share_prefill`, rows that join at once with the same prompt (the `n` answers of one request)
        take one pass between them, also into an idle engine: the same keys and values, written into each row.
        """
        joining: dict[tuple[int, ...], list[int]] = {}
        for row, seq in enumerate(self.rows):
            root = seq.root
            if seq.steps or len(root.pending) < 2 or seq.prompt_structure is not None:
                continue
            joining.setdefault(tuple(root.pending[:-1]), []).append(row)
        for prompt, rows in joining.items():
            if not self.cache_length and not (self.share_prefill and len(rows) > 1):
                continue  # the first step of fresh buffers prefills these with the others
            n = len(prompt)
            device = self.model.device
            alone = EngineCache(len(self.cache.layers), n)
            table = VisibilityTable(1, 2, n, device)
            slots = torch.ones(1, n, dtype=torch.long, device=device)
            table.write(slots, 0)
            self.model(
                input_ids=torch.tensor([prompt], device=device),
                attention_mask=table.mask(slots, 0, self.model.dtype),
                position_ids=torch.arange(n, device=device)[None],
                cache=alone,
                use_cache=True,
                logits_to_keep=torch.tensor([n - 1], device=device),
            )
            self.cache.splice(rows, alone, len(self.rows), self.cache_length)
            self.cache_length = max(self.cache_length, n)
            self.visibility.ensure(max(len(self.rows[row].branches) for row in rows) + 1, self.cache_length)
            for row in rows:
                root = self.rows[row].root
                self.visibility.visible[row, root.slot, :n] = True
                root.position += n
                root.pending = root.pending[n:]

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
        else:  # prompts with blocks: SPEC.md §4 in the form the attention takes (flex: BlockMask, kernel: intervals)
            intervals = tuple(t.to(device, non_blocking=True) for t in step.prompt_intervals)
            implementation = attention_implementation(self.model)
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
        self.peak_columns = max(self.peak_columns, self.cache_length)
        rows = step.sample_rows.to(device, non_blocking=True)
        columns = step.sample_columns.to(device, non_blocking=True)
        self.logits = outputs.logits[rows, columns].float()
        for i, branch in enumerate(step.samplers):
            branch.logits_row = i

    def _settle_fed(self, step: StepInputs) -> None:
        for seq, branches in zip(self.rows, step.fed):
            for branch in branches:
                if branch.pending_positions:
                    branch.position = branch.pending_positions[-1] + 1
                else:
                    branch.position += len(branch.pending)
                branch.pending_positions = None
            if branches:
                seq.steps += 1
            for branch in branches:
                self._fed(seq, branch)

    def _schedule(self) -> list[tuple[_Sequence, _Branch]]:
        """The branches that sample this step, within each prompt's budget; closing ones write their items."""
        todo = []
        for seq in self.rows:
            if seq.finalizing:
                continue
            sampling = 0
            for branch in list(seq.branches):
                if branch.pending:
                    continue
                if branch.state in (CLOSING, ENDING):
                    self._close(seq, branch)
                elif branch.state is LIVE and branch.parent is None and seq.state is SequenceState.STOPPING:
                    self._stop(seq, branch)  # a stop fired in one of its paths: the root closes instead of sampling
                elif branch.state is LIVE:
                    if seq.generated + sampling < self._budget(seq):
                        todo.append((seq, branch))
                        sampling += 1
                    else:
                        self._sequence_transition(seq, SequenceEvent.OUT_OF_BUDGET)
        return todo

    def _retire(self) -> None:
        for seq in self.rows:
            if not seq.done and (seq.finalizing or seq.generated >= self._budget(seq)):
                self._finalize(seq)
        self._drop_rows()

    def _drop_rows(self) -> None:
        """Finished and cancelled prompts leave the batch (their cache rows are dropped); see `compact`."""
        if not any(seq.done or seq.cancelled for seq in self.rows):
            return
        keep = [row for row, seq in enumerate(self.rows) if not (seq.done or seq.cancelled)]
        if self.cache_length:
            index = torch.tensor(keep, dtype=torch.long, device=self.model.device)
            self.cache.batch_select_indices(index)
            self.visibility.select_rows(index)
        self.rows = [self.rows[row] for row in keep]
        if self.compact and self.rows:
            self._compact()
        elif self.compact:  # idle: free the buffers (the next `admit` starts fresh ones)
            self.cache, self.visibility, self.cache_length = None, None, 0

    def _compact(self) -> None:
        """Drop the cache columns no branch of any running row sees any more, once they are an eighth of it
        (at least 16): attention reads every column, seen or not, so dead ones cost every step.

        No branch can see them later either: a fork copies what its parent sees, a merge what a path saw,
        and new tokens go to new columns. Keys keep their rotary positions, so nothing is recomputed.
        """
        live = self.visibility.visible[:, 1:, : self.cache_length].any(1).any(0)  # slot 0 is padding's
        kept = int(live.sum())
        if self.cache_length < 64 or self.cache_length - kept < max(16, self.cache_length // 8):
            return
        index = live.nonzero().squeeze(1)
        self.cache.select_columns(index)
        self.visibility.select_columns(index)
        self.cache_length = kept

    def stats(self) -> dict:
        """Cache use: running rows, columns (tokens per row), peak columns, and live tokens (seen by a branch).

        >>> engine.stats()  # doctest: +SKIP
        {'rows': 3, 'cache_columns': 410, 'peak_cache_columns': 512, 'live_tokens': 655}
        """
        live = 0
        if self.rows and self.cache_length:
            live = int(self.visibility.visible[:, 1:, : self.cache_length].any(1).sum())
        self.peak_columns = max(self.peak_columns, self.cache_length)
        return {
            "rows": len(self.rows),
            "cache_columns": self.cache_length,
            "peak_cache_columns": self.peak_columns,
            "live_tokens": live,
        }

    # -- states: every change goes through the tables of `engine_state` -------------------------
    def _transition(self, seq: _Sequence, branch: _Branch, event: BranchEvent) -> None:
        new = advance(BRANCH_TRANSITIONS, branch.state, event)
        if new is FORKING:
            branch.resume = branch.state
        branch.state = branch.resume if new == RESUME else new

    def _sequence_transition(self, seq: _Sequence, event: SequenceEvent) -> None:
        seq.state = advance(SEQUENCE_TRANSITIONS, seq.state, event)

    def _after_writing(self, seq: _Sequence, branch: _Branch) -> None:
        """A closed goal makes the branch fork once fed; its own closed path finishes it."""
        if branch.parser.expects_fork:
            self._transition(seq, branch, BranchEvent.WROTE_GOAL_END)
        elif branch.parent is not None and len(branch.parser.stack) < branch.base:
            self._transition(seq, branch, BranchEvent.WROTE_PATH_END)

    def _fed(self, seq: _Sequence, branch: _Branch) -> None:
        """Its pending tokens are in the cache (or dropped while finalizing): a pending fork or finish happens."""
        branch.pending = []
        if branch.state is FORKING:
            self._fork(seq, branch)
        elif branch.state is FINISHING:
            self._transition(seq, branch, BranchEvent.FED)
            self._stream(seq).done(seq.stream_row, branch, seq.generated, seq.steps)  # streaming hook
            self._child_done(seq, branch.parent)

    def _stop(self, seq: _Sequence, branch: _Branch) -> None:
        self._transition(seq, branch, BranchEvent.STOP)
        self._close(seq, branch)

    def _append(self, seq: _Sequence, branch: _Branch, tokens: list[int], logprobs: list[float] | None = None) -> None:
        """Add tokens to a branch's view and parser; they are fed to the model in the next step.
        `logprobs` are those of sampled tokens; without them the tokens count as forced."""
        if not seq.finalizing and seq.generated + len(tokens) > self._budget(seq):
            self._sequence_transition(seq, SequenceEvent.OUT_OF_BUDGET)  # forced tokens that do not fit: close
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
        self._stream(seq).tokens(seq.stream_row, branch, tokens, seq.generated, seq.steps)  # streaming hook

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
        self._transition(seq, branch, BranchEvent.FED)
        block = branch.parser.current_block
        branch.labels = [self._label(branch.view, o, k) for k, o in enumerate(block.outlines)]
        branch.p0 = branch.position
        parallel = branch.depth + 1 <= self.max_depth and not seq.finalizing
        stream = self._stream(seq)  # streaming hook
        stream.fork(seq.stream_row, branch, branch.labels, parallel, seq.generated, seq.steps)
        for _ in range(len(branch.labels) if parallel else 1):
            self._start_child(seq, branch)

    def _start_child(self, seq: _Sequence, parent: _Branch) -> None:
        label = parent.labels[len(parent.children)]
        child = seq.new_branch(parent, list(parent.view), parent.parser.copy(), parent.p0, parent.depth + 1)
        child.logprobs = list(parent.logprobs)
        parent.children.append(child)
        self._stream(seq).open(seq.stream_row, child, parent, label)  # streaming hook
        self._append(seq, child, self._seed(label))
        child.base = len(child.parser.stack)
        child.written = 0  # the seed is not the path's own writing
        if parent.resume is not LIVE or seq.finalizing:  # its block is being closed: so is the path, at once
            self._transition(seq, child, BranchEvent.STOP)

    def _child_done(self, seq: _Sequence, parent: _Branch) -> None:
        if len(parent.children) < len(parent.labels):
            self._start_child(seq, parent)  # sequential block: the next path starts now
        elif all(c.state is BranchState.DONE for c in parent.children):
            self._merge(seq, parent)

    def _merge(self, seq: _Sequence, parent: _Branch) -> None:
        """Append every path to the parent's view in label order. `exact`: open all of them to it. `reprefill`:
        feed them to it once more as one causal chunk, at the positions that follow its trunk (still P0 here)."""
        paths_start = len(parent.view)
        for child in parent.children:
            for token in child.view[child.own_start :]:
                parent.parser.feed(self._kind(token), len(parent.view))
                parent.view.append(token)
            parent.logprobs.extend(child.logprobs[child.own_start :])
            if self.merge == "exact":
                seq.visibility_ops.append(("merge", parent.slot, child.slot))
        if self.merge == "exact":
            parent.position = max(c.position for c in parent.children)
        else:  # prefill, not generation: neither the budget nor the stream sees these tokens
            parent.pending = parent.view[paths_start:]
            if not seq.finalizing:  # (a finalizing sequence feeds nothing more)
                seq.reprefill_tokens += len(parent.pending)
        parent.children = []
        self._transition(seq, parent, BranchEvent.MERGED)
        if seq.finalizing and parent.state is LIVE:  # forked before the budget ran out
            self._transition(seq, parent, BranchEvent.OUT_OF_BUDGET)
        self._append(seq, parent, self.conclusion_seed)

    def _close(self, seq: _Sequence, branch: _Branch) -> None:
        """Write the forced items that close what the branch has open, up to a fork or its end."""
        while branch.state in (CLOSING, ENDING):
            items = branch.parser.closing_items()
            if not items:  # the root, back at top level
                if branch.state is ENDING:
                    self._append(seq, branch, [min(self.eos_ids)])
                self._transition(seq, branch, BranchEvent.CLOSED)
                return
            for item in items:
                self._append(seq, branch, self._encode(item) if isinstance(item, str) else [self.tag_ids[TAGS[item]]])
            self._after_writing(seq, branch)

    def _finalize(self, seq: _Sequence) -> None:
        """The budget ran out: close and merge every open branch without more forward passes."""
        self._sequence_transition(seq, SequenceEvent.OUT_OF_BUDGET)
        for branch in seq.branches:
            if branch.state is LIVE:
                self._transition(seq, branch, BranchEvent.OUT_OF_BUDGET)
        for _ in range(10 * len(seq.root.view) + 1000):
            if seq.done:
                return
            for branch in list(seq.branches):
                if branch.pending or branch.state in (FORKING, FINISHING):
                    self._fed(seq, branch)
            for branch in list(seq.branches):
                if branch.state in (CLOSING, ENDING) and not branch.pending:
                    self._close(seq, branch)
        raise RuntimeError("internal error: the Multiverse engine could not close the sequence")

    # -- choosing tokens --------------------------------------------------------------------------
    def _choose(self, todo: list[tuple[_Sequence, _Branch]]) -> None:
        """Sample (or take the argmax of) one token per branch, under the grammar, then accept it."""
        branches = [b for _, b in todo]
        raw = self.logits[torch.tensor([b.logits_row for b in branches], device=self.logits.device)]
        device = raw.device
        per_round = rounds([seq.row for seq, _ in todo]) if self.stopping or self.processors_read_ids else []
        scores = self._processed(todo, raw, per_round)
        for i, (seq, branch) in enumerate(todo):  # a request's own processors (its temperature, top_p, ...)
            if seq.processors:
                scores[i : i + 1] = seq.processors(torch.tensor([branch.view], device=device), scores[i : i + 1])
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
        for i, (seq, _) in enumerate(todo):  # a sampled request draws from its own generator: seeds are per request
            if seq.do_sample:
                tokens[i] = torch.multinomial(torch.softmax(scores[i].float(), -1), 1, generator=seq.generator)[0]
        logprobs = [None] * len(branches)
        if self.config.output_scores:  # token_logprobs: the sampled token under the distribution it came from
            chosen = torch.log_softmax(scores.float(), -1).gather(1, tokens[:, None]).squeeze(1)
            logprobs = [[value] for value in chosen.tolist()]
        tokens = tokens.tolist()  # the step's one device-to-host copy (two with output_scores)
        stops = self._stopped(todo, tokens, scores, per_round) if self.stopping else [False] * len(todo)
        for i, (seq, branch) in enumerate(todo):  # a request's own criteria (its stop strings) on its branch's row
            if seq.stopping and not stops[i]:
                row = torch.tensor([branch.view + [tokens[i]]], device=device)
                stops[i] = bool(seq.stopping(row, scores[i : i + 1]).any())
        for (seq, branch), token, logprob, stopped in zip(todo, tokens, logprobs, stops):
            self._accept(seq, branch, token, stopped, logprob)

    def _round_inputs(self, todo, group: list[int], extra: list[int] | None = None) -> tuple[torch.Tensor, ...]:
        """(the fixed rows of one round, for each batch row the index into `todo` of its decider, else 0)."""
        shown, take = {}, [0] * len(self.seqs)
        for i in group:
            seq, branch = todo[i]
            shown[seq.row] = branch.view[seq.prompt_length :] + ([extra[i]] if extra is not None else [])
            take[seq.row] = i
        return self.view.rows(shown), torch.tensor(take)

    def _processed(self, todo, raw: torch.Tensor, per_round: list[list[int]]) -> torch.Tensor:
        """The logits after the processors: score-only ones over all branches at once, others round by round."""
        if not self.processors:
            return raw.clone()
        if not self.processors_read_ids:  # no token histories to build: the rows' ids are never read
            return self.processors(torch.full((len(todo), 1), self.pad_id, device=raw.device), raw.clone())
        scores = torch.empty_like(raw)
        for group in per_round:
            ids, take = self._round_inputs(todo, group)
            out = self.processors(ids.to(raw.device), raw[take.to(raw.device)].clone())
            rows = torch.tensor([todo[i][0].row for i in group], device=raw.device)
            scores[torch.tensor(group, device=raw.device)] = out[rows]
        return scores

    def _stopped(self, todo, tokens: list[int], scores: torch.Tensor, per_round: list[list[int]]) -> list[bool]:
        """Whether the stopping criteria end each deciding branch's sequence, round by round (a bool or [B])."""
        stops = [False] * len(todo)
        for group in per_round:
            ids, take = self._round_inputs(todo, group, tokens)
            done = self.stopping(ids.to(scores.device), scores[take.to(scores.device)]).tolist()
            for i in group:
                stops[i] = bool(done[todo[i][0].row])
        return stops

    def _accept(
        self, seq: _Sequence, branch: _Branch, token: int, stopped: bool, logprob: list[float] | None = None
    ) -> None:
        if token in self.eos_ids:
            self._eos(seq, branch, token, logprob)
            return
        self._append(seq, branch, [token], logprob)
        self._after_writing(seq, branch)
        if stopped and (branch.parent is not None or branch.state is not LIVE):
            # in a path (or as the root opens paths): the paths run to their ends, then the root closes
            self._sequence_transition(seq, SequenceEvent.STOP)
            stopped = False
        if branch.state is LIVE and (stopped or (branch.parent is not None and self._capped(branch))):
            self._stop(seq, branch)

    def _capped(self, branch: _Branch) -> bool:
        return self.max_branch_tokens is not None and branch.written >= self.max_branch_tokens

    def _eos(self, seq: _Sequence, branch: _Branch, token: int, logprob: list[float] | None) -> None:
        """eos at top level ends the sequence; inside a block the root closes it first; a path closes itself."""
        if branch.parent is not None:
            self._transition(seq, branch, BranchEvent.EOS_IN_PATH)
            self._close(seq, branch)
        elif len(branch.parser.stack) == 1:
            self._transition(seq, branch, BranchEvent.EOS_AT_TOP_LEVEL)
            self._append(seq, branch, [token], logprob)
        else:
            self._transition(seq, branch, BranchEvent.EOS_IN_BLOCK)
            self._close(seq, branch)
