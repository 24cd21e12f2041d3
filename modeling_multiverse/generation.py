"""The Multiverse Engine: fork/merge decoding inside `generate()` (SPEC 6-8).

One KV cache row per prompt. Every forward pass feeds, for each prompt, the pending tokens of every
live branch (usually one token per branch; a forced seed is fed as one chunk). Each token gets its
SPEC 5 position id and an additive mask row that opens exactly the cache slots of its own ancestors,
as in tree attention for speculative decoding. The mask is built from one boolean *visibility row*
per branch, to which each step only appends columns. A fork copies the parent's row; a merge ORs the
children's rows into the parent's, so the conclusion sees every path without recomputing anything.

Life of a branch: LIVE (decoding) -> FORKING (its `</Goal>` is being fed) -> WAITING (children run)
-> LIVE again (conclusion) ... -> FINISHING (its `</Path>` is being fed) -> DONE.

Guards and misbehaviour (never a crash, never lost text):
- Structure is constrained: a tag the grammar does not allow in a branch's current state (a stray
  `<Path>`/`</Path>`, `</Goal>` before any outline, anything but `<Goal>` after `<Parallel>`, a second
  `<Think>`) gets -inf before sampling. If a logits processor left nothing else, the best legal token
  by the model's own logits is taken instead. So the output always parses.
- `max_branches` caps the outlines of a goal: once reached, `<Outline>` is masked and the model must
  close the goal ("hundreds of outlines" become `max_branches` paths).
- `max_depth` caps fork depth: a deeper block is still decoded with the SPEC 4/5 rules, but its paths
  run one after another (sequentially), not side by side.
- Outline labels are copied as written (duplicates and non-numeric labels included); an outline with
  no `LABEL:` gives its path the ordinal label ("3").
- eos (or a stop string, or a user stopping criterion) inside a path ends that path: the branch closes
  whatever it has open with forced tags, ending with `</Path>`. At top level inside an open block the
  block is closed the same way, then eos ends the sequence.
- `max_branch_tokens` per branch: the branch is closed the same way when it reaches the cap.
- `max_new_tokens` counts every generated token of every branch, forced seeds included. When it runs
  out, all open branches are closed and merged without further forward passes: these closing tags
  (`closing_tokens` in the output) are the only tokens beyond the budget. Text is never dropped.

Prompts are attended causally with positions 0..P-1; a prompt that ends inside a `<Parallel>` block
is refused with a clear error. In a batch every row of the cache grows by the widest row's step, so
rows with fewer live branches carry padding slots (a single prompt carries none: its KV is exactly
the canonical output's, minus the last unfed tokens). A prompt that has finished leaves the batch
(its cache row is dropped), so a long answer does not make every other row decode padding.

Example:
    >>> out = model.generate(input_ids, tokenizer=tokenizer, max_new_tokens=256,
    ...                      return_dict_in_generate=True)  # doctest: +SKIP
    >>> out.parallelism[0], out.blocks[0]  # doctest: +SKIP
    (1.9, [{'labels': ['1', '2'], 'branch_lengths': [60, 41], 'depth': 0, 'start': 12}])

This file imports only torch, transformers, `.structure` and `.streaming`, so it ships with a checkpoint both as
remote code and as `custom_generate/generate.py` (see `write_custom_generate`).
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AttentionInterface,
    AutoTokenizer,
    DynamicCache,
    GenerationMixin,
    LogitsProcessorList,
    StoppingCriteriaList,
)
from transformers.generation.stopping_criteria import StopStringCriteria
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import ModelOutput

from .structure import (
    CONCLUSION,
    CONCLUSION_END,
    CONCLUSION_SEED,
    GOAL,
    GOAL_END,
    OUTLINE,
    OUTLINE_END,
    PARALLEL,
    PARALLEL_END,
    PATH,
    PATH_END,
    TAGS,
    TEXT,
    THINK,
    THINK_END,
    StructureParser,
    allowed_tags,
    parse_ids,
    path_seed,
    tag_ids_from_tokenizer,
)
from .streaming import GenerationStream

ENGINE_DEFAULTS = {"max_depth": 2, "max_branches": 8, "max_branch_tokens": 2048}
"""Engine options, read from `generate(...)` kwargs, else from `generation_config` attributes, else here:
- `max_depth`: deepest block whose paths are decoded side by side (1 = top-level blocks only).
- `max_branches`: most outlines (hence paths) one goal may have.
- `max_branch_tokens`: most tokens one path may write itself (its nested paths count on their own).
"""

LIVE, FORKING, WAITING, FINISHING, DONE = range(5)
_FORCED = float("nan")  # `token_logprobs` of a token the engine wrote without sampling it
_LABEL_CHARS = 16  # longer "labels" are prose, not labels: the path gets its ordinal instead


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

    def __init__(self, slot: int, parent, view: list[int], parser: StructureParser, position: int, depth: int):
        self.slot = slot  # its row in the sequence's visibility table
        self.parent = parent
        self.view = view
        self.logprobs = [_FORCED] * len(view)  # per token of `view`: its sampled log-probability (token_logprobs)
        self.own_start = len(view)  # where its own tokens begin in `view`
        self.parser = parser
        self.base = len(parser.stack)  # stack height while inside its own path
        self.position = position  # SPEC 5 position id of the next token fed
        self.depth = depth  # forks above it
        self.pending: list[int] = []  # appended to `view`, not yet in the KV cache
        self.state = LIVE
        self.closing = False  # writes forced closing tags instead of sampling
        self.eos_at_end = False
        self.logits: torch.Tensor | None = None  # next-token logits after its last fed token
        self.labels: list[str] = []  # of the block it forked
        self.children: list[_Branch] = []
        self.p0 = 0  # position of the first token of each of its paths
        self.written = 0  # tokens of its own path (for max_branch_tokens)


class _Sequence:
    """One prompt: its branches, their visibility rows over the cache, and its counters."""

    def __init__(self, row: int, prompt: list[int], parser: StructureParser, capacity: int):
        self.row = row  # in the batch as given (streams report it)
        self.prompt_length = len(prompt)
        self.visible = torch.zeros(4, capacity, dtype=torch.bool)
        self.branches: list[_Branch] = []
        self.root = self.new_branch(None, list(prompt), parser, 0, 0)
        self.root.base = 1
        self.root.pending = list(prompt)
        self.generated = 0
        self.closing_tokens = 0
        self.steps = 0
        self.finalizing = False

    def new_branch(self, parent, view, parser, position, depth) -> _Branch:
        slot = len(self.branches)
        if slot == self.visible.shape[0]:
            self.visible = torch.cat([self.visible, torch.zeros_like(self.visible)])
        if parent is not None:
            self.visible[slot] = self.visible[parent.slot]
        branch = _Branch(slot, parent, view, parser, position, depth)
        self.branches.append(branch)
        return branch

    def ensure_width(self, width: int) -> None:
        if width > self.visible.shape[1]:
            grow = max(width, 2 * self.visible.shape[1]) - self.visible.shape[1]
            self.visible = torch.cat([self.visible, self.visible.new_zeros(self.visible.shape[0], grow)], 1)

    @property
    def done(self) -> bool:
        return self.root.state == DONE


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
        self.parallel_end = self._encode(f"\n{TAGS[PARALLEL_END]}")
        self.seeds: dict[str, list[int]] = {}
        self.cache = None
        self.cache_length = 0

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _kind(self, token: int) -> int:
        return self.tag_of_id.get(token, TEXT)

    # -- appending tokens to a branch ----------------------------------------------------------
    def _append(self, seq: _Sequence, branch: _Branch, tokens: list[int], logprobs: list[float] | None = None) -> None:
        """Add tokens to a branch's view and parser; they are fed to the model in the next step.
        `logprobs` are those of sampled tokens; without them the tokens count as forced."""
        if not seq.finalizing and seq.generated + len(tokens) > self.max_new_tokens:
            seq.finalizing = True  # forced tokens that do not fit: from here on only closing tags
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

    def _after_token(self, branch: _Branch) -> None:
        """Move to FORKING / FINISHING when the last token closed a goal or the branch's own path."""
        if branch.parser.expects_fork:
            branch.state = FORKING
        elif branch.parent is not None and len(branch.parser.stack) < branch.base:
            branch.state = FINISHING

    def _label(self, view: list[int], outline, k: int) -> str:
        """The label written in an outline ("1", "2.1", or whatever precedes ':'), else the ordinal."""
        end = outline.close if outline.close is not None else len(view)
        text = self.tokenizer.decode(view[outline.open + 1 : end][:_LABEL_CHARS * 2])
        head, colon, _ = text.partition(":")
        label = head.strip()
        if not colon or not label or len(label) > _LABEL_CHARS or "\n" in label:
            return str(k + 1)
        return label

    def _seed(self, label: str) -> list[int]:
        if label not in self.seeds:
            self.seeds[label] = self._encode(path_seed(label))
        return self.seeds[label]

    # -- fork, merge, close ----------------------------------------------------------------------
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
        child = seq.new_branch(parent, list(parent.view), parent.parser.copy(), parent.p0, parent.depth + 1)
        child.logprobs = list(parent.logprobs)
        child.closing = parent.closing or seq.finalizing
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
            seq.visible[parent.slot] |= seq.visible[child.slot]
        parent.position = max(c.position for c in parent.children)
        parent.children = []
        parent.state = LIVE
        self._append(seq, parent, self.conclusion_seed)

    def _close_step(self, seq: _Sequence, branch: _Branch) -> None:
        """Write the forced tags that close what the branch has open, up to a fork or its end."""
        while branch.state == LIVE:
            top = branch.parser.stack[-1]
            if top.kind == OUTLINE:
                self._append(seq, branch, [self.tag_ids[TAGS[OUTLINE_END]]])
            elif top.kind == GOAL:
                if not top.node.outlines:
                    self._append(seq, branch, [self.tag_ids[TAGS[OUTLINE]], *self._encode("1:"), self.tag_ids[TAGS[OUTLINE_END]]])
                self._append(seq, branch, [self.tag_ids[TAGS[GOAL_END]]])
            elif top.kind == PARALLEL and top.phase == "goal":
                self._append(seq, branch, [self.tag_ids[TAGS[GOAL]]])
            elif top.kind == PARALLEL:  # phase "end": the conclusion is closed
                self._append(seq, branch, self.parallel_end)
            elif top.kind == CONCLUSION:
                self._append(seq, branch, [self.tag_ids[TAGS[CONCLUSION_END]]])
            elif top.kind == PATH:
                self._append(seq, branch, [self.tag_ids[TAGS[PATH_END]]])
            else:  # the root, back at top level
                if branch.eos_at_end:
                    self._append(seq, branch, [min(self.eos_ids)])
                branch.state = DONE
                return
            self._after_token(branch)

    def _settle(self, seq: _Sequence, branch: _Branch) -> None:
        """State change of a branch whose pending tokens were just fed (or, finalizing, dropped)."""
        branch.pending = []
        if branch.state == FORKING:
            self._fork(seq, branch)
        elif branch.state == FINISHING:
            branch.state = DONE
            self.stream.done(seq.row, branch, seq.generated, seq.steps)  # streaming hook
            self._child_done(seq, branch.parent)

    def _finalize(self, seq: _Sequence) -> None:
        """The budget ran out: close and merge every open branch without more forward passes."""
        seq.finalizing = True
        for branch in seq.branches:
            branch.closing = True
        for _ in range(10 * len(seq.root.view) + 1000):
            if seq.done:
                return
            for branch in list(seq.branches):
                if branch.pending or branch.state in (FORKING, FINISHING):
                    self._settle(seq, branch)
            for branch in list(seq.branches):
                if branch.state == LIVE and not branch.pending:
                    self._close_step(seq, branch)
        raise RuntimeError("internal error: the Multiverse engine could not close the sequence")

    # -- choosing tokens --------------------------------------------------------------------------
    def _views(self, branches: list[_Branch]) -> torch.LongTensor:
        """Each branch's view as one left-padded row, the input standard logits processors expect."""
        width = max(len(b.view) for b in branches)
        rows = torch.full((len(branches), width), self.pad_id, dtype=torch.long)
        for i, b in enumerate(branches):
            rows[i, width - len(b.view) :] = torch.tensor(b.view, dtype=torch.long)
        return rows

    def _sample(self, todo: list[tuple[_Sequence, _Branch]]) -> None:
        branches = [b for _, b in todo]
        raw = torch.stack([b.logits for b in branches])
        views = self._views(branches)
        scores = self.processors(views.to(raw.device), raw.clone())
        forbidden = torch.stack([~allowed_tags(b.parser, self.max_branches) for b in branches])  # [N, 12]
        rows, cols = torch.nonzero(forbidden, as_tuple=True)
        tag_columns = self.tag_tensor.to(raw.device)[cols]
        scores[rows.to(raw.device), tag_columns] = -float("inf")
        dead = ~(scores.amax(-1) > -float("inf"))  # all -inf, or NaN: one reduction over the vocabulary
        if bool(dead.any()):  # a processor left only illegal tokens: best legal token by the model
            fallback = raw.clone()
            fallback[rows.to(raw.device), tag_columns] = -float("inf")
            scores[dead] = fallback[dead]
        if self.config.do_sample:
            tokens = torch.multinomial(torch.softmax(scores.float(), -1), 1).squeeze(1)
        else:
            tokens = scores.argmax(-1)
        logprobs = [None] * len(branches)
        if self.config.output_scores:  # token_logprobs: the sampled token under the distribution it came from
            chosen = torch.log_softmax(scores.float(), -1).gather(1, tokens[:, None]).squeeze(1)
            logprobs = [[value] for value in chosen.tolist()]
        tokens = tokens.tolist()
        stop = [False] * len(branches)
        if self.stopping:
            extended = torch.cat([views, torch.tensor(tokens)[:, None]], 1).to(raw.device)
            stop = self.stopping(extended, scores).tolist()
        for (seq, branch), token, logprob, stopped in zip(todo, tokens, logprobs, stop):
            self._accept(seq, branch, token, stopped, logprob)

    def _accept(self, seq: _Sequence, branch: _Branch, token: int, stopped: bool, logprob: list[float] | None = None) -> None:
        if token in self.eos_ids:
            if branch.parent is None and len(branch.parser.stack) == 1:
                self._append(seq, branch, [token], logprob)
                branch.state = DONE
            else:  # eos inside a block ends the path (or closes the block, then ends the sequence)
                branch.closing = True
                branch.eos_at_end = branch.parent is None
                self._close_step(seq, branch)
            return
        self._append(seq, branch, [token], logprob)
        self._after_token(branch)
        if branch.state != LIVE:
            return
        capped = self.max_branch_tokens is not None and branch.written >= self.max_branch_tokens
        if stopped or (branch.parent is not None and capped):
            branch.closing = True
            self._close_step(seq, branch)

    # -- the forward pass --------------------------------------------------------------------------
    def _forward(self, seqs: list[_Sequence]) -> bool:
        """Feed every pending token of every sequence in one forward pass; False if nothing was pending."""
        device = self.model.device
        fed = [[b for b in s.branches if b.pending and not s.done] for s in seqs]
        widths = [sum(len(b.pending) for b in f) for f in fed]
        width = max(widths)
        if width == 0:
            return False
        start = self.cache_length
        total = start + width
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros(len(seqs), width, dtype=torch.long)
        allowed = torch.zeros(len(seqs), width, total, dtype=torch.bool)
        last_query: dict[int, tuple[int, int]] = {}  # id(branch) -> (row, query index)
        for row, (seq, branches) in enumerate(zip(seqs, fed)):
            seq.ensure_width(total)
            q = 0
            for branch in branches:
                n = len(branch.pending)
                input_ids[row, q : q + n] = torch.tensor(branch.pending)
                position_ids[row, q : q + n] = torch.arange(branch.position, branch.position + n)
                seq.visible[branch.slot, start + q : start + q + n] = True
                branch.position += n
                q += n
                if branch.state == LIVE and not branch.closing:
                    last_query[id(branch)] = (row, q - 1)
            q = 0
            for branch in branches:  # after all columns are set: rows see their own new tokens
                n = len(branch.pending)
                allowed[row, q : q + n] = seq.visible[branch.slot, :total]
                q += n
            if q:
                seq.steps += 1
            pad = torch.arange(q, width)
            allowed[row, pad, start + pad] = True  # padding queries see themselves only (no empty rows)
        causal = torch.arange(total)[None, :] <= (start + torch.arange(width))[:, None]
        allowed &= causal
        dtype = self.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        # logits are needed only at the last token of a chunk of a branch that samples next
        wanted = sorted({q for _, q in last_query.values()}) or [width - 1]
        keep = torch.tensor(wanted, dtype=torch.long)
        outputs = self.model(
            input_ids=input_ids.to(device),
            attention_mask=mask[:, None].to(device),
            position_ids=position_ids.to(device),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=keep.to(device),
        )
        self.cache = outputs.cache if getattr(outputs, "cache", None) is not None else outputs.past_key_values
        self.cache_length = total
        column = {q: i for i, q in enumerate(wanted)}
        logits = outputs.logits.float()
        for seq, branches in zip(seqs, fed):
            for branch in branches:
                if id(branch) in last_query:
                    row, q = last_query[id(branch)]
                    branch.logits = logits[row, column[q]]
                self._settle(seq, branch)
        return True

    def run(self, prompts: list[list[int]], max_new_tokens: int) -> list[_Sequence]:
        seqs = []
        for row, prompt in enumerate(prompts):
            parser = StructureParser(partial=True)
            for i, token in enumerate(prompt):
                parser.feed(self._kind(token), i)
            if parser.depth:
                raise ValueError(
                    f"prompt {row} ends inside a <Parallel> block ({' '.join(TAGS[f.kind] for f in parser.stack[1:])} "
                    "still open): the engine starts from a prompt outside any block"
                )
            seqs.append(_Sequence(row, prompt, parser, len(prompt) + max_new_tokens + 64))
            self.stream.open(row, seqs[-1].root)  # streaming hook
        self.max_new_tokens = max_new_tokens
        self.cache = DynamicCache(config=self.model.config)
        self.cache_length = 0
        rows = list(seqs)  # the prompts in the cache, one row each, in cache order
        while True:
            todo = []
            for seq in seqs:
                if seq.done or seq.finalizing:
                    continue
                waiting = len(todo)
                for branch in list(seq.branches):
                    if branch.state != LIVE or branch.pending:
                        continue
                    if branch.closing:
                        self._close_step(seq, branch)
                    elif seq.generated + len(todo) - waiting < max_new_tokens:
                        todo.append((seq, branch))
                    else:
                        seq.finalizing = True
            if todo:  # one batched call to the processors for every branch of every prompt
                self._sample(todo)
            for seq in seqs:
                if not seq.done and (seq.finalizing or seq.generated >= max_new_tokens):
                    self._finalize(seq)
            if any(seq.done for seq in rows) and self.cache_length:
                # a finished prompt leaves the batch: later steps compute only the rows still decoding
                keep = [row for row, seq in enumerate(rows) if not seq.done]
                self.cache.batch_select_indices(torch.tensor(keep, dtype=torch.long, device=self.model.device))
                rows = [rows[row] for row in keep]
            if not rows or not self._forward(rows):
                break
        self.stream.end()  # streaming hook: the rest is final
        return seqs


# ---------------------------------------------------------------------------------------------
# Attention for decoding steps

ENGINE_SDPA = "multiverse_engine_sdpa"
"""The attention implementation the engine switches an `sdpa` model to while it decodes."""


def grouped_query_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """sdpa for an engine step: several queries per row under one mask shared by all heads.

    transformers' sdpa copies K and V once per query head (`repeat_kv`) whenever a step has more
    than one query and a mask, which on CPU costs as much as the attention itself. Here the queries
    of the heads that share a key/value head are stacked along the query axis instead, so attention
    runs on the cached K and V as they are; the mask rows repeat once per stacked head (q x k, small).
    """
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, q_len, head_dim = query.shape
    if groups == 1 or q_len == 1 or attention_mask is None or attention_mask.shape[1] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    stacked = query.reshape(batch, heads // groups, groups * q_len, head_dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        stacked, key, value, attn_mask=attention_mask.repeat(1, 1, groups, 1), scale=scaling
    )
    return out.reshape(batch, heads, q_len, head_dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(ENGINE_SDPA, grouped_query_sdpa)
AttentionMaskInterface.register(ENGINE_SDPA, sdpa_mask)


@contextmanager
def _engine_attention(model):
    """Decode with `grouped_query_sdpa` when the model runs sdpa; anything else is left as it is."""
    config = model.get_decoder().config
    if config._attn_implementation != "sdpa":
        yield
        return
    config._attn_implementation = ENGINE_SDPA
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


# ---------------------------------------------------------------------------------------------
# Entry points

_TOKENIZERS: dict[str, object] = {}


def _tokenizer_for(model, tokenizer):
    if tokenizer is not None:
        return tokenizer
    source = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    if not source:
        raise ValueError(
            "the Multiverse engine needs the tokenizer (to write path seeds and read outline labels): "
            "pass generate(..., tokenizer=tokenizer) or load the model from a folder that has one"
        )
    if source not in _TOKENIZERS:
        _TOKENIZERS[source] = AutoTokenizer.from_pretrained(source)
    return _TOKENIZERS[source]


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
    `eos_token_id`, `stop_strings`, `max_new_tokens`, plus the engine options of `ENGINE_DEFAULTS`.
    Returns `sequences` (prompt + canonical response), or a `MultiverseGenerateOutput`.
    `streamer` (put/end, one prompt) receives the canonical response as it becomes final;
    `branch_callback` receives a `BranchEvent` as each branch advances (see `streaming.py`).

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
    if streamer is not None and input_ids.shape[0] != 1:
        raise ValueError(f"a streamer takes one prompt, got a batch of {input_ids.shape[0]}; use branch_callback for batches")
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
    tokenizer = _tokenizer_for(model, tokenizer)
    device = model.device
    model._prepare_special_tokens(generation_config, attention_mask is not None, device=device)
    prompt_length = input_ids.shape[1]
    if generation_config.max_new_tokens is not None:
        max_new_tokens = generation_config.max_new_tokens
    else:
        max_new_tokens = max(0, (generation_config.max_length or prompt_length + 20) - prompt_length)
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
    with torch.no_grad(), _engine_attention(model):
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
        blocks=[_block_stats(engine, r) for r in responses],
        cache_tokens=engine.cache_length,
        token_logprobs=token_logprobs,
    )


def _block_stats(engine: MultiverseEngine, response: list[int]) -> list[dict]:
    structure = parse_ids(response, engine.tag_ids, partial=True)
    stats = []
    for block in structure.iter_blocks():
        stats.append(
            {
                "labels": [engine._label(response, o, k) for k, o in enumerate(block.outlines)],
                "branch_lengths": [(u.end or len(response)) - u.start for u in block.paths],
                "depth": block.depth,
                "start": block.open,
            }
        )
    return stats


def generate(*args, model, multiverse: bool = True, **kwargs):
    """Entry point of `custom_generate/generate.py`: `model.generate(..., custom_generate=DIR, trust_remote_code=True)`.

    `multiverse=False` falls back to transformers' own decoding.
    """
    kwargs.pop("custom_generate", None)
    if not multiverse:
        return GenerationMixin.generate(model, *args, **kwargs)
    return multiverse_generate(model, *args, **kwargs)


def write_custom_generate(save_directory: str | Path) -> Path:
    """Write this engine as `custom_generate/generate.py` (+ `structure.py`, `streaming.py`) next to a saved model.

    >>> write_custom_generate("out/smollm2-multiverse")  # doctest: +SKIP
    PosixPath('out/smollm2-multiverse/custom_generate')
    """
    here = Path(__file__).resolve()
    target = Path(save_directory) / "custom_generate"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(here, target / "generate.py")
    shutil.copyfile(here.with_name("structure.py"), target / "structure.py")
    shutil.copyfile(here.with_name("streaming.py"), target / "streaming.py")
    (target / "requirements.txt").write_text("torch\ntransformers\n")
    return target


__all__ = ["ENGINE_DEFAULTS", "MultiverseEngine", "MultiverseGenerateOutput", "generate", "multiverse_generate", "write_custom_generate"]
