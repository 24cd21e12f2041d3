"""Model misbehaviour never crashes the engine and never loses text (issue 3, item 5)."""

from __future__ import annotations

import pytest
from engine_skeleton import SkeletonProcessor, block, skeleton_template
from tiny import tiny_model
from transformers import LogitsProcessor, LogitsProcessorList

from modeling_multiverse import TAGS, parse_ids, remove_tags, tag_ids_from_tokenizer
from modeling_multiverse.structure import PATH, THINK

T = dict(
    zip(["think", "/think", "par", "/par", "goal", "/goal", "out", "/out", "path", "/path", "conc", "/conc"], TAGS)
)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", seed=2)


class ScriptProcessor(LogitsProcessor):
    """Forces `script[k]` as the k-th token of every row's response (counted from its `<Think>`)."""

    def __init__(self, tokenizer, text: str):
        self.script = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        self.think = tag_ids_from_tokenizer(tokenizer)[TAGS[THINK]]

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for row, ids in enumerate(input_ids.tolist()):
            k = len(ids) - ids.index(self.think) if self.think in ids else 0
            target = self.script[min(k, len(self.script) - 1)]
            scores[row] = -float("inf")
            scores[row, target] = 0.0
        return scores


def generate(model, tokenizer, processor, **kwargs):
    prompt = tokenizer("<|user|>\nq<|end|>\n<|assistant|>\n", return_tensors="pt")["input_ids"]
    out = model.generate(
        input_ids=prompt,
        logits_processor=LogitsProcessorList([processor]),
        tokenizer=tokenizer,
        return_dict_in_generate=True,
        **{"max_new_tokens": 200, **kwargs},
    )
    response = out.sequences[0, prompt.shape[1] :]
    response = response[: out.generated_tokens[0] + out.closing_tokens[0]].tolist()
    # always well-formed: every block closed (an unfinished <Think> may stay open)
    structure = parse_ids(response, tag_ids_from_tokenizer(tokenizer))
    return out, response, structure, tokenizer.decode(response)


def test_goal_without_outlines_gets_one(tiny):
    model, tok = tiny
    script = f"{T['think']}\nA{T['par']}\n{T['goal']}\n{T['/goal']}xyz"
    out, _, structure, text = generate(model, tok, ScriptProcessor(tok, script))
    assert "xyz" in remove_tags(text)
    assert len(structure.blocks) == 1 and len(structure.blocks[0].paths) == 1


def test_duplicate_and_non_numeric_labels_are_copied(tiny):
    model, tok = tiny
    outlines = "".join(f"\n{T['out']}{head}{T['/out']}" for head in ("1: a", "1: b", "x: c", "no colon"))
    script = f"{T['think']}\n{T['par']}\n{T['goal']}{outlines}\n{T['/goal']}"
    out, _, structure, text = generate(model, tok, ScriptProcessor(tok, script), max_new_tokens=80)
    assert out.blocks[0][0]["labels"] == ["1", "1", "x", "4"]
    assert [f"\n{TAGS[PATH]}\n{label}:" in text for label in ("1", "x", "4")] == [True, True, True]


def test_path_tags_out_of_place_are_refused_and_text_kept(tiny):
    model, tok = tiny
    script = f"{T['think']}\nab{T['path']}cd{T['/path']}ef{T['/conc']}gh{T['/think']}ij"
    _, response, structure, text = generate(model, tok, ScriptProcessor(tok, script), max_new_tokens=30)
    kept = remove_tags(text)
    assert all(piece in kept for piece in ("ab", "cd", "ef", "gh"))
    assert not structure.blocks


def test_parallel_without_goal_is_closed(tiny):
    model, tok = tiny
    script = f"{T['think']}\n{T['par']}hello{T['path']}"
    _, _, structure, text = generate(model, tok, ScriptProcessor(tok, script), max_new_tokens=20)
    assert "hello" in text and len(structure.blocks) == 1 and structure.blocks[0].close is not None


def test_hundreds_of_outlines_are_capped(tiny):
    model, tok = tiny
    outlines = "".join(f"\n{T['out']}{i}: s{T['/out']}" for i in range(1, 301))
    script = f"{T['think']}\n{T['par']}\n{T['goal']}{outlines}\n{T['/goal']}"
    out, _, structure, _ = generate(model, tok, ScriptProcessor(tok, script), max_new_tokens=400, max_branches=5)
    assert len(structure.blocks[0].outlines) == 5 and len(structure.blocks[0].paths) == 5
    assert out.generated_tokens[0] <= 400


def path_units(response, structure):
    return [response[u.start : u.end] for b in structure.iter_blocks() for u in b.paths]


def test_budget_running_out_mid_branch_closes_and_keeps_text(tiny):
    model, tok = tiny
    template = skeleton_template(
        tok, [2, block(["1", "2", "3"], [[30], [2, block(["2.1", "2.2"], [[20], [25]])], [40]])]
    )
    _, full, full_structure, _ = generate(model, tok, SkeletonProcessor(template, tok), max_new_tokens=400)
    full_paths = path_units(full, full_structure)
    # what closing may add: tags, newlines, and labels ("1:") of paths it had to write
    closing_vocab = set(tag_ids_from_tokenizer(tok).values()) | set(
        tok("\n0123456789.:", add_special_tokens=False)["input_ids"]
    )
    for budget in (25, 60, 90, 130):
        out, cut, structure, _ = generate(model, tok, SkeletonProcessor(template, tok), max_new_tokens=budget)
        assert out.generated_tokens[0] <= budget and out.closing_tokens[0] > 0
        assert structure.blocks and all(b.close is not None for b in structure.iter_blocks())
        # each path is what the full run wrote in that path, cut short, then closing tags only
        for path in path_units(cut, structure):
            common = max(
                next((i for i, (a, b) in enumerate(zip(path, f)) if a != b), min(len(path), len(f))) for f in full_paths
            )
            assert common > 3 and set(path[common:]) <= closing_vocab, tok.decode(path)


def test_eos_inside_a_branch_ends_that_path(tiny):
    model, tok = tiny
    template = skeleton_template(tok, [1, block(["1", "2"], [[12], [6]]), 2])
    base = SkeletonProcessor(template, tok)
    path_one = tok(f"\n{TAGS[PATH]}\n1:", add_special_tokens=False)["input_ids"]

    class EosInPathOne(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = base(input_ids, scores)
            for row, ids in enumerate(input_ids.tolist()):
                for at in range(len(ids) - len(path_one), -1, -1):
                    if ids[at : at + len(path_one)] == path_one:
                        if len(ids) - at - len(path_one) == 3:  # three tokens into path 1: eos
                            scores[row] = -float("inf")
                            scores[row, tok.eos_token_id] = 0.0
                        break
            return scores

    out, response, structure, _ = generate(model, tok, EosInPathOne(), max_new_tokens=200)
    lengths = out.blocks[0][0]["branch_lengths"]
    assert lengths[0] == len(path_one) + 3 + 1  # seed, three tokens, the forced </Path>
    assert structure.blocks[0].conclusion_close is not None and response[-1] == tok.eos_token_id


def test_eos_at_top_level_inside_a_goal_closes_then_ends(tiny):
    model, tok = tiny
    script = f"{T['think']}\n{T['par']}\n{T['goal']}\n{T['out']}1: a{T['/out']}\n{T['out']}2: b"
    _, response, structure, text = generate(model, tok, ScriptProcessor(tok, script), max_new_tokens=100)
    assert response[-1] == tok.eos_token_id and "2: b" in text
    assert len(structure.blocks[0].paths) == 2


def test_max_branch_tokens_caps_each_path(tiny):
    model, tok = tiny
    template = skeleton_template(tok, [1, block(["1", "2"], [[30], [4]]), 2])
    out, _, structure, _ = generate(model, tok, SkeletonProcessor(template, tok), max_branch_tokens=10)
    seed = len(tok(f"\n{TAGS[PATH]}\n1:", add_special_tokens=False)["input_ids"])
    assert out.blocks[0][0]["branch_lengths"][0] == seed + 10 + 1
