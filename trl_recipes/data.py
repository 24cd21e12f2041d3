"""Loading SFT data and turning each example into the conversation a recipe trains on.

Accepted formats (TRL's conversational formats):
- prompt/completion: `prompt` is the user turn(s), `completion` the assistant message whose content is a
  Multiverse-format response. Plain strings are accepted too and read as one user / one assistant turn.
- messages: a list of turns ending with the assistant's response.

Sources: a local `.jsonl`/`.json`/`.parquet` file, a `save_to_disk` folder, or a Hub dataset id.

Example:
    >>> ds = load_sft_dataset("examples.jsonl")  # doctest: +SKIP
    >>> prompt, completion = split_conversation(ds[0], index=0)  # doctest: +SKIP
"""

from __future__ import annotations

import random
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict
from datasets.exceptions import DatasetGenerationError

from modeling_multiverse import StructureError, parse_text, remove_tags
from runtime.jsonl import iter_jsonl

RECIPES = ("multiverse", "autoregressive")
Message = dict[str, str]


class ExampleError(ValueError):
    """An example a recipe cannot train on. `index` is its row in the dataset, `position` a char offset."""

    def __init__(self, message: str, index: int, position: int | None = None):
        super().__init__(message)
        self.index = index
        self.position = position


def load_sft_dataset(
    source: str | Dataset, *, config: str | None = None, split: str = "train", fallback_split: str | None = None
) -> Dataset:
    """One split of a dataset from a local file, a `save_to_disk` folder, a Hub id, or an in-memory `Dataset`.

    A `multiverse curate --export-dir` folder works too (its `dataset/` subfolder is read); where the dataset
    has no split `split`, `fallback_split` (the recipe's name: the export's `multiverse` / `autoregressive`) is used.

    >>> load_sft_dataset("data/train.jsonl").column_names  # doctest: +SKIP
    ['prompt', 'completion']
    """
    if isinstance(source, Dataset):
        dataset = source
    else:
        path = check_source(source)
        if path.is_dir() and _is_saved_dataset(path / "dataset") and not _is_saved_dataset(path):
            path = path / "dataset"  # a curate export folder: dataset/, parquet files and a card
        if path.is_file():
            builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
            try:
                dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
            except DatasetGenerationError as err:
                cause = " ".join(str(err.__cause__ or err).split())
                raise ValueError(f"dataset file {source}: cannot be read as {builder} ({cause})") from None
        elif _is_saved_dataset(path):
            dataset = datasets.load_from_disk(str(path))
        elif path.exists():
            raise ValueError(
                f"dataset folder {source} is not a `save_to_disk` folder (no dataset_info.json or dataset_dict.json) "
                "nor a `multiverse curate --export-dir` folder"
            )
        else:
            dataset = datasets.load_dataset(str(source), name=config, split=split)
    if isinstance(dataset, DatasetDict):
        if split not in dataset and fallback_split in dataset:
            split = fallback_split
        if split not in dataset:
            raise ValueError(f"dataset {source} has no split {split!r}; splits found: {sorted(dataset)}")
        dataset = dataset[split]
    check_columns(dataset.column_names, source)
    return dataset


def check_source(source: str) -> Path:
    """Check a dataset path before anything loads: a missing local path, an unknown file type, a bad JSONL line
    (named file:line) or JSONL records without the recipe columns. A Hub id passes through."""
    path = Path(source)
    if not path.exists():
        if str(source).startswith((".", "/", "~")) or str(source).endswith("/") or str(source).count("/") > 1:
            raise FileNotFoundError(f"--dataset {source}: no such file or folder")
        return path
    if path.is_file():
        if path.suffix not in (".jsonl", ".json", ".parquet"):
            raise ValueError(
                f"dataset file {source}: unsupported extension {path.suffix!r}, expected .jsonl, .json or .parquet"
            )
        if path.suffix == ".jsonl":
            columns = None
            for _, record in iter_jsonl(path):
                columns = columns or list(record)
            if columns is None:
                raise ValueError(f"dataset file {source}: no records")
            check_columns(columns, source)
    return path


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def check_columns(columns: list[str], source: object = "dataset") -> str:
    """The format of a dataset from its columns: "prompt_completion" or "messages"; raises listing what it found."""
    if "prompt" in columns and "completion" in columns:
        return "prompt_completion"
    if "messages" in columns:
        return "messages"
    raise ValueError(
        f"{source}: expected columns 'prompt' and 'completion' (prompt/completion format) or 'messages' "
        f"(conversational format); found columns {sorted(columns)}"
        + (
            "; this is curate output: train on its --export-dir folder"
            if "status" in columns and "multiverse" in columns
            else ""
        )
    )


def _as_messages(value, role: str, index: int, column: str) -> list[Message]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ExampleError(
        f"example {index}: column {column!r} must be a string or a list of {{role, content}} messages", index
    )


def split_conversation(example: dict, index: int) -> tuple[list[Message], Message]:
    """(prompt messages, the assistant message to train on) of one example in either format."""
    if "prompt" in example and "completion" in example:
        prompt = _as_messages(example["prompt"], "user", index, "prompt")
        completion = _as_messages(example["completion"], "assistant", index, "completion")
        if len(completion) != 1 or completion[0]["role"] != "assistant":
            raise ExampleError(f"example {index}: 'completion' must be exactly one assistant message", index)
        return prompt, completion[0]
    messages = _as_messages(example["messages"], "user", index, "messages")
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ExampleError(f"example {index}: 'messages' must end with an assistant message after the prompt", index)
    return messages[:-1], messages[-1]


def validate_response(text: str, index: int) -> None:
    """Raise `ExampleError` naming the example and the char offset where `text` breaks the grammar (SPEC.md §3)."""
    try:
        parse_text(text)
    except StructureError as err:
        raise ExampleError(
            f"example {index}: malformed Multiverse response at char {err.index} of the completion: {err}",
            index,
            err.index,
        ) from None


def flatten(message: Message) -> Message:
    """The autoregressive form of a response: tags removed, paths in order (the paper's AR baseline)."""
    return {"role": message["role"], "content": remove_tags(message["content"])}


def autoregressive_rows(count: int, recipe: str, ar_fraction: float, seed: int) -> set[int]:
    """Rows whose completion is flattened: all of them for the AR recipe, a seeded `ar_fraction` for a mixture.

    >>> sorted(autoregressive_rows(4, "autoregressive", 0.0, 0))
    [0, 1, 2, 3]
    >>> len(autoregressive_rows(10, "multiverse", 0.3, 0))
    3
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}, expected one of {', '.join(RECIPES)}")
    if not 0.0 <= ar_fraction <= 1.0:
        raise ValueError(f"ar_fraction must be in [0, 1], got {ar_fraction}")
    if recipe == "autoregressive":
        return set(range(count))
    return set(random.Random(seed).sample(range(count), round(ar_fraction * count)))
