"""The SPEC 2 user turn is built once: training data, `multiverse generate`, `multiverse eval` and the
engine benchmark all prompt a model exactly as it was trained."""

from __future__ import annotations

import ast
from pathlib import Path

from datasets import Dataset
from tiny import example_response, tiny_tokenizer

from curator.export import conversation
from modeling_multiverse import PARALLEL_INSTRUCTION, add_tag_tokens, parallel_user_turn
from evaluation.evaluate import ANSWER_HINTS, user_message
from multiverse.generate_cmd import prompt_ids
from trl_recipes import prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "  Ann has 3 bags of 12 apples and Ben has 25. How many apples?\n"


def test_every_prompt_builder_gives_the_training_user_turn():
    expected = "Ann has 3 bags of 12 apples and Ben has 25. How many apples? " + PARALLEL_INSTRUCTION
    assert parallel_user_turn(QUESTION) == expected
    assert conversation(QUESTION, "r")["prompt"] == [{"role": "user", "content": expected}]
    assert user_message({"question": QUESTION, "kind": "builtin", "answer": "61"}, parallel_prompt=True) == expected
    hinted = user_message({"question": QUESTION, "kind": "math", "answer": "61"}, parallel_prompt=True)
    assert hinted == parallel_user_turn(QUESTION, ANSWER_HINTS["math"])
    assert hinted.endswith(ANSWER_HINTS["math"] + " " + PARALLEL_INSTRUCTION)


def test_generate_prompts_with_the_token_ids_the_model_was_trained_on():
    tokenizer = tiny_tokenizer()
    add_tag_tokens(tokenizer)
    prepared, _ = prepare_dataset(Dataset.from_list([conversation(QUESTION, example_response())]), tokenizer, max_length=None)
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
    assert joins == {"modeling_multiverse/structure.py"}
