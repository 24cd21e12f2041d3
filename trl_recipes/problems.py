"""The GRPO recipe's problems: a dataset with `prompt` (a user turn), `answer` and `kind` (how it is graded).

Rows with a question (`question` or `problem`) are read as `multiverse eval` reads a task file
(`evaluation.evaluate.normalize_record`, the kind detected from the fields unless given) and prompted by the
one prompt builder (`modeling_multiverse.user_turn`), so that GRPO trains on the prompts eval shows the model:
same question text, same answer-format hint, same parallel instruction. Rows with a `prompt` are used as
they are.

Example:
    >>> problems = load_problems("../shared/data/aime2025-I.jsonl")  # doctest: +SKIP
    >>> problems[0]["kind"], problems[0]["prompt"][0]["content"][-60:]  # doctest: +SKIP
    ('aime', '... within \\\\boxed{}. Think step by step and in parallel before answering.')
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from evaluation.evaluate import detect_kind, normalize_record
from modeling_multiverse import user_turn

PROMPTLESS_KIND = "builtin"
"""How `prompt` rows without a `kind` column are graded when no kind is given (their text is not read)."""


def _read(source: str, split: str, config: str | None) -> Dataset:
    path = Path(source)
    if path.is_dir():
        data = load_from_disk(str(path))
    elif path.suffix in (".jsonl", ".json", ".parquet"):
        if not path.is_file():
            raise FileNotFoundError(f"dataset {path} does not exist")
        data = load_dataset("parquet" if path.suffix == ".parquet" else "json", data_files=str(path), split="train")
    else:
        data = load_dataset(source, config, split=split)
    if isinstance(data, DatasetDict):
        if split not in data:
            raise ValueError(f"dataset {source} has no split {split!r} (it has {', '.join(data)})")
        data = data[split]
    return data


def load_problems(
    source: str | Dataset,
    *,
    split: str = "train",
    config: str | None = None,
    kind: str | None = None,
    parallel_prompt: bool = True,
) -> Dataset:
    """Problems from a file, folder, Hub id or `Dataset`, with `prompt`, `answer` (a string) and `kind` columns.

    `kind` forces the answer kind where the data has no `kind` column (as `multiverse eval --kind`); left out,
    it is detected from the fields of question rows, and `prompt` rows are graded as built-in problems.

    >>> load_problems(Dataset.from_list([{"question": "2 + 2?", "answer": "4"}]))[0]["kind"]  # doctest: +SKIP
    'aime'
    """
    data = source if isinstance(source, Dataset) else _read(str(source), split, config)
    name = "the given dataset" if isinstance(source, Dataset) else f"dataset {source}"
    columns = set(data.column_names)
    if "answer" not in columns or not ({"prompt", "question", "problem"} & columns):
        raise ValueError(
            f"{name}: needs `answer` and `prompt` (or `question` or `problem`) columns, has {sorted(columns)}"
        )
    if "prompt" in columns:
        default_kind = kind or PROMPTLESS_KIND
        return data.map(lambda row: {"answer": str(row["answer"]), "kind": row.get("kind") or default_kind})
    if "kind" not in columns and kind is None:
        kind = detect_kind(data.to_list(), name)

    def as_problem(row: dict, index: int) -> dict:
        record = normalize_record(row, row.get("kind") or kind, index, f"{name}: row {index}")
        content = user_turn(record["question"], record["kind"], parallel=parallel_prompt)
        return {"prompt": [{"role": "user", "content": content}], "answer": record["answer"], "kind": record["kind"]}

    return data.map(as_problem, with_indices=True)
