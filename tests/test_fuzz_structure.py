"""Fuzz: random and mutated tag sequences through the parser, the masks and the engine's structure tracking.

Each of 10,000 sequences (valid random responses, their mutations, and pure noise) must
1. parse or raise `StructureError` (nothing else);
2. when it parses, give masks and positions with the SPEC.md §4/5 properties;
3. driven token by token through the engine's state machine (random branch per token, tags the
   engine refuses are skipped, as masking them would), then closed by the engine's finalizer, end as a
   complete, well-formed sequence in which every text token of the script survives.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch
from tiny import tiny_tokenizer

from modeling_multiverse import TAGS, StructureError, StructureParser, add_multiverse_tokens, dense_mask, parse_kinds
from modeling_multiverse.engine import MultiverseEngine
from modeling_multiverse.engine_state import BranchState, _Sequence
from modeling_multiverse.structure import (
    CONCLUSION,
    CONCLUSION_END,
    GOAL,
    GOAL_END,
    OUTLINE,
    OUTLINE_END,
    PARALLEL,
    PARALLEL_END,
    PATH,
    PATH_END,
    TEXT,
    THINK,
    THINK_END,
    allowed_tags,
    kinds_of_ids,
)

EOS = -2  # in scripts: the eos token


def random_body(rng: random.Random, depth: int) -> list[int]:
    out: list[int] = []
    for _ in range(rng.randint(0, 3)):
        if depth < 3 and rng.random() < 0.35:
            out += random_block(rng, depth)
        else:
            out += [TEXT] * rng.randint(1, 3)
    return out


def random_block(rng: random.Random, depth: int) -> list[int]:
    n = rng.randint(1, 4)
    out = [PARALLEL, TEXT, GOAL]
    for _ in range(n):
        out += [TEXT, OUTLINE, TEXT, OUTLINE_END]
    out += [TEXT, GOAL_END]
    for _ in range(n):
        out += [TEXT, PATH, TEXT] + random_body(rng, depth + 1) + [PATH_END]
    return out + [TEXT, CONCLUSION, TEXT, CONCLUSION_END, TEXT, PARALLEL_END]


def random_script(rng: random.Random) -> list[int]:
    valid = [THINK, TEXT] + random_body(rng, 0) + [THINK_END, TEXT]
    roll = rng.random()
    if roll < 0.3:
        return valid
    if roll < 0.45:
        return [rng.choice([TEXT, EOS, *range(len(TAGS))]) for _ in range(rng.randint(1, 40))]
    script = list(valid)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(script) + 1)
        action = rng.random()
        if action < 0.3 and script:
            del script[min(i, len(script) - 1)]
        elif action < 0.6:
            script.insert(i, rng.choice([EOS, *range(len(TAGS))]))
        elif action < 0.8 and len(script) > 1:
            j = min(i, len(script) - 2)
            script[j], script[j + 1] = script[j + 1], script[j]
        else:
            script = script[:i]
    return script


def check_masks(kinds: list[int]) -> None:
    structure = parse_kinds(kinds, partial=True)
    arrays = structure.arrays()
    allowed = dense_mask(arrays.forbid_lo[None], arrays.forbid_hi[None])[0, 0] == 0
    n = len(kinds)
    assert bool(allowed.diagonal().all()) and not bool(allowed.triu(1).any())
    pos = arrays.position_ids
    for block in structure.iter_blocks():
        units = [(u.start, u.end or n) for u in block.paths]
        for i, (s, e) in enumerate(units):
            assert int(pos[s]) == int(pos[units[0][0]])  # every path unit starts at P0 (SPEC.md §5)
            for j, (s2, e2) in enumerate(units):
                if i != j:
                    assert not bool(allowed[s:e, s2:e2].any())  # siblings never see each other (SPEC.md §4)
            if block.depth == 0:  # paths see everything before a top-level block
                assert bool(allowed[s:e, : block.open + 1].all())
        if block.conclusion_start is not None:
            c = block.conclusion_start
            assert bool(allowed[c, units[0][0] : units[-1][1]].all())  # the merge sees every path
            # P0 + the longest positional extent (a nested block makes a unit shorter than its tokens)
            assert int(pos[c]) == max(int(pos[e - 1]) + 1 for _, e in units)


class Driver:
    """The engine's state machine with the model replaced by a script: no forward passes."""

    def __init__(self):
        tokenizer = tiny_tokenizer()
        stub = SimpleNamespace(get_input_embeddings=lambda: SimpleNamespace(weight=torch.zeros(len(tokenizer), 1)))
        stub.config = SimpleNamespace(tag_token_ids=None)
        stub.get_output_embeddings = lambda: None
        tag_ids = add_multiverse_tokens(stub, tokenizer)
        eos = torch.tensor(tokenizer.eos_token_id)
        config = SimpleNamespace(_eos_token_tensor=eos, _pad_token_tensor=eos, do_sample=False)
        self.engine = MultiverseEngine(
            stub, tokenizer, config, None, None, {"max_depth": 2, "max_branches": 3, "max_branch_tokens": 12}
        )
        self.engine.max_new_tokens = 10**9
        self.tag_ids = tag_ids
        self.text_id = tokenizer.convert_tokens_to_ids("a")
        self.eos = tokenizer.eos_token_id

    def token(self, kind: int) -> int:
        return self.eos if kind == EOS else self.text_id if kind == TEXT else self.tag_ids[TAGS[kind]]

    def settle(self, seq: _Sequence) -> None:
        changed = True
        while changed and not seq.done:
            changed = False
            for branch in list(seq.branches):
                if branch.pending or branch.state in (BranchState.FORKING, BranchState.FINISHING):
                    self.engine._fed(seq, branch)
                    changed = True
                if branch.state in (BranchState.CLOSING, BranchState.ENDING) and not branch.pending:
                    self.engine._close(seq, branch)
                    changed = True

    def run(self, script: list[int], rng: random.Random) -> tuple[list[int], int]:
        """Returns the final view and how many text tokens were written."""
        written = 0
        seq = _Sequence(0, [], StructureParser(partial=True))
        seq.root.pending = []
        engine = self.engine
        for kind in script:
            live = [b for b in seq.branches if b.state is BranchState.LIVE]
            if seq.done or not live:
                break
            branch = rng.choice(live)
            if kind >= 0 and not bool(allowed_tags(branch.parser, engine.max_branches)[kind]):
                continue  # the engine masks it: the model writes something else
            engine._accept(seq, branch, self.token(kind), stopped=False)
            written += kind == TEXT
            self.settle(seq)
        if not seq.done:
            engine._finalize(seq)
        assert seq.done
        return seq.root.view, written


def test_fuzz_parser_masks_and_engine_tracking():
    rng = random.Random(1234)
    driver = Driver()
    parsed = closed = 0
    for _ in range(10_000):
        script = random_script(rng)
        kinds = [TEXT if k == EOS else k for k in script]
        try:
            parse_kinds(kinds, partial=True)
        except StructureError:
            pass
        else:
            parsed += 1
            if parsed % 4 == 0:
                check_masks(kinds)
        view, written = driver.run(script, rng)
        out_kinds = kinds_of_ids(view, driver.tag_ids).tolist()
        parse_kinds(out_kinds, partial=False)  # complete: every block closed (an open <Think> is legal)
        closed += 1
        # no text lost: every text token written is in the output (closing adds only tags, "1:" and labels)
        assert view.count(driver.text_id) == written
    assert parsed > 2_000 and closed == 10_000
