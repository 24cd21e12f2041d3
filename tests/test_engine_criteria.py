"""Stopping criteria and logits processors see transformers' fixed rows at any batch size (issue 23).

Row i is always sequence i: its prompt as given, then the response as the deciding branch sees it,
right-aligned (`criteria_view.py`). A criterion that keeps per-row state works at batch 8 with forks,
merges and rows finishing at different steps; a stop fired in a path lets the block finish and closes
the sequence at the root's next decision; `stop_strings`, eos lists and `max_length` keep working.
"""

from __future__ import annotations

import pytest
import torch
from engine_skeleton import SkeletonProcessor, block, skeleton_template
from test_engine import SKELETONS, encode_prompts
from tiny import tiny_model
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from modeling_multiverse import TAGS, tag_ids_from_tokenizer
from modeling_multiverse.criteria_view import CriteriaView, rounds
from modeling_multiverse.structure import CONCLUSION, CONCLUSION_SEED, path_seed

QUESTIONS = [f"question {i}: {'why ' * i}" for i in range(8)]
BODIES = [
    SKELETONS["flat2_uneven"],
    [3],
    SKELETONS["nested"],
    [1, block(["1", "2", "3"], [[2], [9], [4]]), 1],
    SKELETONS["two_blocks"],
    [14],
    SKELETONS["flat8"],
    [2, block(["1", "2"], [[6], [2, block(["2.1", "2.2"], [[5], [2]])]]), 4],
]


class PromptSkeletons(LogitsProcessor):
    """A model that writes one skeleton per question: chosen by the row's prompt text, never by its index,
    so a question gets the same response in any batch, in any order, from any caller of `generate`."""

    def __init__(self, tokenizer, bodies: dict[str, list]):
        self.tokenizer = tokenizer
        self.assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
        self.skeletons = {q: SkeletonProcessor(skeleton_template(tokenizer, b), tokenizer) for q, b in bodies.items()}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores.clone()
        for row, ids in enumerate(input_ids.tolist()):
            prompt = self.tokenizer.decode(ids[: len(ids) - ids[::-1].index(self.assistant)])
            question = next(q for q in self.skeletons if q in prompt)
            out[row : row + 1] = self.skeletons[question](input_ids[row : row + 1], scores[row : row + 1])
        return out


class RowRecorder(StoppingCriteria):
    """Per-row state sized by the batch, as evaluation harnesses keep it: every call must bring exactly one
    row per sequence, row i starting with prompt i as given. Records the last response each row showed."""

    def __init__(self, prompts: torch.Tensor, pad_id: int):
        self.prompts, self.pad_id = prompts, pad_id
        self.last: list[list[int]] = [[] for _ in range(prompts.shape[0])]
        self.calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        width = self.prompts.shape[1]
        assert input_ids.shape[0] == len(self.last) == scores.shape[0]
        assert torch.equal(input_ids[:, :width], self.prompts)
        for i, row in enumerate(input_ids[:, width:].tolist()):
            first = next((j for j, t in enumerate(row) if t != self.pad_id), len(row))
            self.last[i] = row[first:]
        self.calls += 1
        return torch.zeros(len(self.last), dtype=torch.bool, device=input_ids.device)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", layers=2, seed=1)


def generate(model, tokenizer, enc, **kwargs):
    processor = PromptSkeletons(tokenizer, dict(zip(QUESTIONS, BODIES)))
    return model.generate(
        **enc,
        logits_processor=LogitsProcessorList([processor]),
        do_sample=False,
        return_dict_in_generate=True,
        tokenizer=tokenizer,
        **{"max_new_tokens": 400, **kwargs},
    )


def responses(out, width: int) -> list[list[int]]:
    return [
        out.sequences[row, width : width + n + c].tolist()
        for row, (n, c) in enumerate(zip(out.generated_tokens, out.closing_tokens))
    ]


def test_a_criterion_with_per_row_state_sees_one_fixed_row_per_sequence_at_batch_8(tiny):
    model, tokenizer = tiny
    enc = encode_prompts(tokenizer, QUESTIONS)
    width = enc["input_ids"].shape[1]
    plain = generate(model, tokenizer, enc)
    recorder = RowRecorder(enc["input_ids"], tokenizer.pad_token_id)
    watched = generate(model, tokenizer, enc, stopping_criteria=StoppingCriteriaList([recorder]))
    assert torch.equal(watched.sequences, plain.sequences), "a criterion that never fires changes nothing"
    finals = responses(plain, width)
    # forks and merges in most rows, and rows finishing at different steps
    assert sum(bool(blocks) for blocks in plain.blocks) >= 6 and len(set(plain.decode_steps)) >= 5
    assert recorder.calls > max(plain.decode_steps)  # several rounds in steps where paths decide together
    # each row's last look is its own sequence's whole response, its final eos included
    assert recorder.last == finals
    assert all(final[-1] == tokenizer.eos_token_id for final in finals)


@pytest.mark.parametrize("returns", ["tensor", "bool"])
def test_a_stop_in_a_path_finishes_the_block_then_the_root_closes(tiny, returns):
    model, tokenizer = tiny
    enc = encode_prompts(tokenizer, QUESTIONS[:1])  # flat2_uneven: path 2 writes 11 tokens
    width = enc["input_ids"].shape[1]
    seed = tokenizer(path_seed("2"), add_special_tokens=False)["input_ids"]

    class ThreeTokensIntoPathTwo(StoppingCriteria):
        """Fires once a row shows three tokens written after path 2's seed (a path is deciding)."""

        fired = 0

        def __call__(self, input_ids, scores, **kwargs):
            hit = []
            for row in input_ids[:, width:].tolist():
                at = [j for j in range(len(row)) if row[j : j + len(seed)] == seed]
                hit.append(bool(at) and len(row) - at[-1] - len(seed) == 3)
            self.fired += any(hit)
            return torch.tensor(hit) if returns == "tensor" else any(hit)

    criterion = ThreeTokensIntoPathTwo()
    unstopped = generate(model, tokenizer, enc)
    full = responses(unstopped, width)[0]
    out = generate(model, tokenizer, enc, stopping_criteria=StoppingCriteriaList([criterion]))
    stopped = responses(out, width)[0]
    assert criterion.fired == 1
    # every path ran to its end, unchanged: the text up to the conclusion is the unstopped run's
    conclusion = tokenizer(CONCLUSION_SEED, add_special_tokens=False)["input_ids"]
    tag = tag_ids_from_tokenizer(tokenizer)
    cut = full.index(tag[TAGS[CONCLUSION]]) + len(conclusion) - 1
    assert stopped[:cut] == full[:cut] and len(stopped) < len(full)
    # then the root wrote only the tags that close the block: no text, no eos
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert set(stopped[cut:]) <= set(tag.values()) | set(newline) and stopped[-1] == tag["</Parallel>"]
    assert out.blocks[0][0]["branch_lengths"] == unstopped.blocks[0][0]["branch_lengths"]


def test_stop_strings_eos_lists_and_max_length_keep_working(tiny):
    model, tokenizer = tiny
    enc = encode_prompts(tokenizer, QUESTIONS[5:6])  # a plain 14-token think
    width = enc["input_ids"].shape[1]
    full = responses(generate(model, tokenizer, enc), width)[0]
    # max_length counts the prompt's width, as in transformers
    by_length = generate(model, tokenizer, enc, max_new_tokens=None, max_length=width + 9)
    assert torch.equal(by_length.sequences, generate(model, tokenizer, enc, max_new_tokens=9).sequences)
    assert by_length.generated_tokens[0] == 9
    # an eos list: the second id ends the sequence where the model first writes it
    free = full[4:12]
    other = next(t for t in free if t != tokenizer.eos_token_id)
    ends = responses(generate(model, tokenizer, enc, eos_token_id=[tokenizer.eos_token_id, other]), width)[0]
    assert ends == full[: full.index(other) + 1]
    # a stop string written at top level ends the sequence right after it
    text = tokenizer.decode(full[6:8])
    stopped = responses(generate(model, tokenizer, enc, stop_strings=[text]), width)[0]
    assert tokenizer.decode(stopped).endswith(text) and len(stopped) <= 8


def test_the_view_pads_between_prompt_and_response_and_rounds_take_one_row_each():
    view = CriteriaView(torch.tensor([[0, 5, 6], [7, 8, 9], [1, 2, 3]]), pad_id=0)
    assert view.rows({0: [4, 4]}).tolist() == [[0, 5, 6, 4, 4], [7, 8, 9, 0, 0], [1, 2, 3, 0, 0]]
    # a row with nothing to decide shows what it showed last
    assert view.rows({1: [3]}).tolist() == [[0, 5, 6, 4, 4], [7, 8, 9, 0, 3], [1, 2, 3, 0, 0]]
    assert rounds([2, 0, 2, 2, 1]) == [[0, 1, 4], [2], [3]]
