"""The engine's state machine (issue 21): one table per kind of state, every change through it, every entry used.

Each entry of `BRANCH_TRANSITIONS` and `SEQUENCE_TRANSITIONS` gives its stated state when applied through
the engine; an event outside the tables is an internal error; and driving the engine's real state code
with random scripts (the fuzz driver: no model) reaches every entry of both tables.
"""

from __future__ import annotations

import random

import pytest
from test_fuzz_structure import EOS, Driver, random_script

import modeling_multiverse.engine as engine_module
from modeling_multiverse.engine_state import (
    BRANCH_TRANSITIONS,
    RESUME,
    SEQUENCE_TRANSITIONS,
    BranchEvent,
    BranchState,
    SequenceEvent,
    SequenceState,
    _Sequence,
    advance,
)
from modeling_multiverse.structure import (
    GOAL,
    GOAL_END,
    OUTLINE,
    OUTLINE_END,
    PARALLEL,
    TEXT,
    THINK,
    StructureParser,
    allowed_tags,
)


@pytest.fixture(scope="module")
def driver():
    return Driver()


def fresh_sequence() -> _Sequence:
    seq = _Sequence(0, [], StructureParser(partial=True))
    seq.root.pending = []
    return seq


def test_every_branch_entry_gives_its_stated_state(driver):
    for (state, event), target in BRANCH_TRANSITIONS.items():
        seq = fresh_sequence()
        branch = seq.root
        branch.state, branch.resume = state, BranchState.CLOSING
        driver.engine._transition(seq, branch, event)
        assert branch.state is (BranchState.CLOSING if target == RESUME else target), (state, event)
        if target is BranchState.FORKING:
            assert branch.resume is state, "a fork remembers the state to resume after the merge"


def test_every_sequence_entry_gives_its_stated_state(driver):
    for (state, event), target in SEQUENCE_TRANSITIONS.items():
        seq = fresh_sequence()
        seq.state = state
        driver.engine._sequence_transition(seq, event)
        assert seq.state is target


def test_an_event_outside_the_tables_is_an_internal_error(driver):
    illegal = [(s, e) for s in BranchState for e in BranchEvent if (s, e) not in BRANCH_TRANSITIONS]
    assert (BranchState.DONE, BranchEvent.FED) in illegal and (BranchState.WAITING, BranchEvent.STOP) in illegal
    for state, event in illegal:
        seq = fresh_sequence()
        seq.root.state = state
        with pytest.raises(RuntimeError, match=f"internal error: .*{event.value!r} in state {state.value!r}"):
            driver.engine._transition(seq, seq.root, event)
        assert seq.root.state is state, "a refused event changes nothing"
    for state in SequenceState:
        for event in SequenceEvent:
            if (state, event) not in SEQUENCE_TRANSITIONS:
                with pytest.raises(RuntimeError, match="internal error"):
                    advance(SEQUENCE_TRANSITIONS, state, event)


def drive(driver: Driver, script: list[int], rng: random.Random, budget: int) -> _Sequence:
    """One script through the engine's state code, a step per item, as `_schedule` and `_choose` order it:
    every live branch within the budget decides (one writes the item, the others text), stops fire at
    random, the root closes instead of sampling once a stop fired in a path, a spent budget finalizes."""
    engine = driver.engine
    engine.max_new_tokens = budget
    seq = fresh_sequence()
    for kind in script:
        driver.settle(seq)
        root = seq.root
        if seq.done or seq.finalizing:
            break
        if seq.state is SequenceState.STOPPING and root.state is BranchState.LIVE:
            engine._stop(seq, root)
            continue
        live = [b for b in seq.branches if b.state is BranchState.LIVE][: budget - seq.generated]
        if not live:
            break
        chosen = rng.choice(live)
        if kind >= 0 and not bool(allowed_tags(chosen.parser, engine.max_branches)[kind]):
            kind = TEXT  # the engine masks the tag: the model writes something else
        for branch in live:
            token = driver.token(kind if branch is chosen else TEXT)
            engine._accept(seq, branch, token, stopped=rng.random() < 0.04)
    driver.settle(seq)
    if not seq.done:
        engine._finalize(seq)
    assert seq.done
    return seq


def overrun_then_stop(driver: Driver) -> None:
    """Two paths decide in one step: the first writes eos and its closing `</Path>` overruns the budget,
    then a stopping criterion fires for the second, in a sequence already finalizing."""
    engine = driver.engine
    engine.max_new_tokens = 10**9
    seq = fresh_sequence()
    for kind in [THINK, PARALLEL, GOAL, OUTLINE, TEXT, OUTLINE_END, OUTLINE, TEXT, OUTLINE_END, GOAL_END]:
        engine._accept(seq, seq.root, driver.token(kind), stopped=False)
        driver.settle(seq)
    first, second = seq.root.children
    engine.max_new_tokens = seq.generated
    engine._accept(seq, first, driver.eos, stopped=False)
    assert seq.state is SequenceState.FINALIZING
    engine._accept(seq, second, driver.token(TEXT), stopped=True)
    assert seq.state is SequenceState.FINALIZING
    driver.settle(seq)
    engine._finalize(seq)
    assert seq.done


def test_decoding_reaches_every_entry_of_both_tables(driver, monkeypatch):
    seen = set()

    def recording(table, state, event):
        seen.add((state, event))
        return advance(table, state, event)

    monkeypatch.setattr(engine_module, "advance", recording)
    overrun_then_stop(driver)
    rng = random.Random(21)
    # eos inside a path is rare in random scripts: one block of one path, eos three tokens into it
    in_path = [THINK, TEXT, PARALLEL, GOAL, OUTLINE, TEXT, OUTLINE_END, GOAL_END, TEXT, TEXT, EOS, TEXT]
    for script in [in_path] + [random_script(rng) for _ in range(3000)]:
        drive(driver, script, rng, budget=rng.choice([8, 30, 10**9]) if script is not in_path else 10**9)
        if set(BRANCH_TRANSITIONS) | set(SEQUENCE_TRANSITIONS) <= seen:
            break
    assert set(BRANCH_TRANSITIONS) - seen == set()
    assert set(SEQUENCE_TRANSITIONS) - seen == set()
