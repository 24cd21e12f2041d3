"""The SPEC.md §2 user turn is built once (`modeling_multiverse.prompts`): training data, `multiverse generate`,
`multiverse eval`, the GRPO recipe and the benchmarks all prompt a model exactly as it was trained."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from datasets import Dataset
from tiny import example_response, tiny_tokenizer

from curator.export import conversation
from curator.synth import synthesize, write_jsonl
from evaluation.evaluate import encode_prompts, load_records
from modeling_multiverse import (
    ANSWER_HINTS,
    PARALLEL_INSTRUCTION,
    add_tag_tokens,
    parallel_user_turn,
    prompt_ids,
    tag_ids_from_tokenizer,
    user_turn,
)
from trl_recipes import prepare_dataset
from trl_recipes.problems import load_problems
from trl_recipes.rollout import rollout_prompt_ids

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "  Ann has 3 bags of 12 apples and Ben has 25. How many apples?\n"


def test_every_prompt_builder_gives_the_training_user_turn():
    expected = "Ann has 3 bags of 12 apples and Ben has 25. How many apples? " + PARALLEL_INSTRUCTION
    assert parallel_user_turn(QUESTION) == expected
    assert conversation(QUESTION, "r")["prompt"] == [{"role": "user", "content": expected}]
    assert user_turn(QUESTION, "builtin", parallel=True) == expected
    hinted = user_turn(QUESTION, "math", parallel=True)
    assert hinted == parallel_user_turn(QUESTION, ANSWER_HINTS["math"])
    assert hinted.endswith(ANSWER_HINTS["math"] + " " + PARALLEL_INSTRUCTION)


def test_generate_prompts_with_the_token_ids_the_model_was_trained_on():
    tokenizer = tiny_tokenizer()
    add_tag_tokens(tokenizer)
    prepared, _ = prepare_dataset(
        Dataset.from_list([conversation(QUESTION, example_response())]), tokenizer, max_length=None
    )
    row = prepared[0]
    trained_prompt = [i for i, label in zip(row["input_ids"], row["labels"]) if label == -100]
    inference_prompt = prompt_ids(tokenizer, QUESTION)
    assert inference_prompt == trained_prompt


def test_no_other_module_joins_the_instruction_to_a_question():
    """Outside `parallel_user_turn`, no f-string, `+`, list or tuple puts PARALLEL_INSTRUCTION into a text."""
    joins = set()
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.relative_to(ROOT).parts[0] in {"tests", ".git"}:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.JoinedStr, ast.BinOp, ast.List, ast.Tuple)) and any(
                isinstance(n, ast.Name) and n.id == "PARALLEL_INSTRUCTION" for n in ast.walk(node)
            ):
                joins.add(str(path.relative_to(ROOT)))
    assert joins == {"modeling_multiverse/prompts.py"}


def multiverse_tokenizer(chat_template: bool = True):
    tokenizer = tiny_tokenizer()
    add_tag_tokens(tokenizer)
    if not chat_template:
        tokenizer.chat_template = None
    return tokenizer


def first_lines(source: Path, target: Path, n: int = 12) -> Path:
    target.write_text("".join(source.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return target


def eval_prompt_ids(tokenizer, path: Path) -> tuple[list[list[int]], str]:
    records, kind = load_records(path)
    batch = encode_prompts(tokenizer, records, parallel_prompt=True, device="cpu")
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])], kind


@pytest.mark.parametrize("chat_template", [True, False])
def test_grpo_prompts_equal_the_eval_prompts(shared_dir, tmp_path, chat_template):
    """GRPO trains on the prompts `multiverse eval` shows: same question, answer-format hint and instruction."""
    tokenizer = multiverse_tokenizer(chat_template)
    builtin = tmp_path / "builtin.jsonl"
    write_jsonl(synthesize(6, seed=0), builtin)
    sources = [shared_dir / "data" / "MATH500_test.jsonl", *sorted((shared_dir / "data").glob("aime*.jsonl"))]
    files = [first_lines(source, tmp_path / source.name) for source in sources] + [builtin]
    kinds = set()
    for path in files:
        expected, kind = eval_prompt_ids(tokenizer, path)
        problems = load_problems(str(path))
        assert set(problems["kind"]) == {kind}, path.name
        assert rollout_prompt_ids(tokenizer, problems["prompt"]) == expected, path.name
        kinds.add(kind)
        if ANSWER_HINTS[kind]:
            assert ANSWER_HINTS[kind] in tokenizer.decode(expected[0])
    assert kinds == {"math", "aime", "builtin"}


def test_a_tag_typed_in_a_grpo_question_stays_text(tmp_path):
    tokenizer = multiverse_tokenizer()
    path_id = tag_ids_from_tokenizer(tokenizer)["<Path>"]
    question = "What does <Path> mean in 2 + 2?"
    problems = load_problems(Dataset.from_list([{"question": question, "answer": "4"}]))
    (ids,) = rollout_prompt_ids(tokenizer, problems["prompt"])
    assert path_id not in ids and question in tokenizer.decode(ids)
    assert ids == prompt_ids(tokenizer, question, "aime")
    # what the recipe did before: the chat template tokenized whole turns the typed tag into structure
    structured = tokenizer.apply_chat_template(problems["prompt"][0], add_generation_prompt=True, tokenize=True)
    assert path_id in structured["input_ids"]


def test_without_a_chat_template_the_prompt_is_the_bare_user_turn():
    tokenizer = multiverse_tokenizer(chat_template=False)
    question = "Is <Parallel> a tag?"
    ids = prompt_ids(tokenizer, question, "math")
    assert tokenizer.decode(ids) == user_turn(question, "math") + "\n"
    assert tag_ids_from_tokenizer(tokenizer)["<Parallel>"] not in ids
    with pytest.raises(ValueError, match="unknown answer kind 'essay'"):
        user_turn(question, "essay")
