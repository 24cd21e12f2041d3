"""Dataset preparation: chat template, completion-only labels, structure arrays, truncation, packing.

Everything per example is computed once here, so the collator only pads and stacks. Each prepared row has
`input_ids`, `labels` (-100 on prompt tokens), and the core's per-token arrays (`position_ids`,
`forbid_lo`, `forbid_hi`, see `modeling_multiverse.TokenStructure`), plus `length` for length grouping.

Example:
    >>> prepared, report = prepare_dataset(  # doctest: +SKIP
    ...     load_sft_dataset("train.jsonl"), tokenizer, recipe="multiverse", max_length=512
    ... )
    >>> report.skipped  # doctest: +SKIP
    []
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from datasets import Dataset

from modeling_multiverse import (
    StructureError,
    TokenStructure,
    encode_chat,
    pack,
    structure_of_ids,
    tag_ids_from_tokenizer,
)

from .data import ExampleError, autoregressive_rows, check_columns, flatten, split_conversation, validate_response

COLUMNS = ("input_ids", "labels", "position_ids", "forbid_lo", "forbid_hi", "length")


@dataclass
class PreparationReport:
    """What preparation kept and dropped: `skipped` holds (row, reason) for every example left out."""

    examples: int = 0
    autoregressive: int = 0
    truncated: int = 0
    rows: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)


def _tokenize(tokenizer, prompt: list[dict], completion: dict, index: int) -> tuple[list[int], int]:
    """Token ids of prompt + completion and the number of prompt tokens (the completion is tokenized on its own,
    so the prompt's tokens are exactly what generation sees; what the user wrote is text, `encode_chat`)."""
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template([*prompt, completion], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ExampleError(
            f"example {index}: the chat template renders the prompt differently once the completion is appended, "
            "so the completion tokens cannot be located",
            index,
        )
    prompt_ids = encode_chat(tokenizer, prompt, add_generation_prompt=True)
    completion_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    return prompt_ids + completion_ids, len(prompt_ids)


def _structure(ids: list[int], tag_ids: dict[str, int] | None, index: int) -> TokenStructure:
    if tag_ids is None:
        return TokenStructure.causal(len(ids))
    try:
        return structure_of_ids(ids, tag_ids, partial=True)
    except StructureError as err:
        raise ExampleError(
            f"example {index}: malformed structure at token {err.index} of the sequence: {err}", index, err.index
        ) from None


def _row(ids: list[int], labels: list[int], structure: TokenStructure) -> dict:
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": structure.position_ids.tolist(),
        "forbid_lo": structure.forbid_lo.tolist(),
        "forbid_hi": structure.forbid_hi.tolist(),
        "length": len(ids),
    }


def pack_rows(rows: Sequence[dict], max_length: int) -> list[dict]:
    """Best-fit-decreasing packing of prepared rows into rows of at most `max_length` tokens.

    Documents in one row never see each other and their positions restart (the core's `pack`).

    >>> [r["length"] for r in pack_rows([_row([1] * n, [1] * n, TokenStructure.causal(n)) for n in (3, 5, 2)], 8)]
    [8, 2]
    """
    bins: list[list[dict]] = []
    room: list[int] = []
    for row in sorted(rows, key=lambda r: -r["length"]):
        fits = [b for b, free in enumerate(room) if free >= row["length"]]
        if fits:
            best = min(fits, key=lambda b: room[b])
            bins[best].append(row)
            room[best] -= row["length"]
        else:
            bins.append([row])
            room.append(max_length - row["length"])
    packed = []
    for members in bins:
        structure = pack([_as_structure(r) for r in members])
        ids = [t for r in members for t in r["input_ids"]]
        labels = [t for r in members for t in r["labels"]]
        packed.append(_row(ids, labels, structure))
    return packed


def _as_structure(row: dict) -> TokenStructure:
    return TokenStructure(
        torch.tensor(row["position_ids"]), torch.tensor(row["forbid_lo"]), torch.tensor(row["forbid_hi"])
    )


def prepare_dataset(
    dataset: Dataset,
    tokenizer,
    *,
    recipe: str = "multiverse",
    max_length: int | None = 1024,
    ar_fraction: float = 0.0,
    skip_invalid: bool = False,
    packing: bool = False,
    seed: int = 0,
) -> tuple[Dataset, PreparationReport]:
    """Tokenize and label a prompt/completion or messages dataset for one recipe.

    - `recipe="multiverse"`: responses keep their tags; the structure gives Multiverse Attention and positions.
      With `ar_fraction`, that share of examples is flattened instead (the AR/Multiverse mixture). Flattened
      rows come first, so a sequential sampler trains AR-format before Multiverse-format (a curriculum).
    - `recipe="autoregressive"`: every response is flattened (tags removed): plain causal attention.
    Every response is validated in both recipes, so both train on the same examples. A malformed one raises
    `ExampleError` naming its row and char offset, or is skipped and reported with `skip_invalid`. Sequences
    longer than `max_length` are cut (open blocks are legal); examples left without completion tokens are skipped.
    """
    check_columns(dataset.column_names)
    report = PreparationReport(examples=len(dataset))
    flattened = autoregressive_rows(len(dataset), recipe, ar_fraction, seed)
    tag_ids = tag_ids_from_tokenizer(tokenizer) if recipe == "multiverse" else None
    phases: dict[bool, list[dict]] = {True: [], False: []}  # keyed by "is autoregressive"
    for index, example in enumerate(dataset):
        try:
            prompt, completion = split_conversation(example, index)
            validate_response(completion["content"], index)
            is_ar = index in flattened
            if is_ar:
                completion = flatten(completion)
            ids, prompt_length = _tokenize(tokenizer, prompt, completion, index)
            if max_length is not None and prompt_length >= max_length:
                report.skipped.append(
                    (index, f"example {index}: no completion token left within max_length={max_length}")
                )
                continue
            if max_length is not None and len(ids) > max_length:
                ids = ids[:max_length]
                report.truncated += 1
            labels = [-100] * prompt_length + ids[prompt_length:]
            structure = _structure(ids, None if is_ar else tag_ids, index)
        except ExampleError as err:
            if not skip_invalid:
                raise
            report.skipped.append((index, str(err)))
            continue
        report.autoregressive += is_ar
        phases[is_ar].append(_row(ids, labels, structure))
    if packing:
        if max_length is None:
            raise ValueError("packing needs max_length: it is the length of a packed row")
        phases = {is_ar: pack_rows(rows, max_length) for is_ar, rows in phases.items()}
    rows = phases[True] + phases[False]
    if not rows:
        raise ValueError(
            f"no example left to train on: {len(report.skipped)} of {report.examples} skipped "
            f"({report.skipped[:3]} ...)"
        )
    report.rows = len(rows)
    return Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS}), report

