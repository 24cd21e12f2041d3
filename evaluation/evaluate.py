"""Evaluation of a model on a JSONL task: accuracy, well-formedness, parallelism, tokens and time.

The library behind `multiverse eval` (its command line is `evaluation/cli.py`).

Data kinds are detected from the fields of the first record (or forced with `--kind`):
- `builtin`: `{id, question, sequential, answer}` as written by `multiverse data synth`;
- `choice`: `question` + `choices` (list, or {letter: text}) or `options`, and an answer letter;
- `aime`: `problem` or `question` + an integer answer (AIME 2024/2025 files);
- `math`: `problem` + `answer` (MATH500).

Prompts come from the one prompt builder (`modeling_multiverse.prompt_ids`): the question and its kind's
answer-format hint, through the tokenizer's chat template; for Multiverse models (the tokenizer has the tags)
the user turn ends with PARALLEL_INSTRUCTION. Generation is greedy and batched with left padding.

Example:
    $ multiverse eval --model out/smollm2-multiverse --data ../shared/data/MATH500_test.jsonl --limit 20

    >>> report = evaluate(model, tokenizer, load_records("aime.jsonl"), "aime", 512, 8, True)  # doctest: +SKIP
    >>> report["accuracy"], report["parallelism"]  # doctest: +SKIP
"""

from __future__ import annotations

import string
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from evaluation.continuous import generate_continuous, is_multiverse_model
from evaluation.grading import KINDS, extract_answer, grade, integer_reference
from evaluation.intervals import wilson_interval
from evaluation.steps import check_steps, step_summary
from modeling_multiverse import MissingTagsError, StructureError, parse_text, prompt_ids, tag_ids_from_tokenizer
from runtime.jsonl import iter_jsonl

# ----------------------------------------------------------------------------------------------
# Data


def detect_kind(records: Sequence[Mapping[str, Any]], where: str = "data") -> str:
    """The data kind of a task file from its records' fields (see module doc).

    Problem + answer files are AIME when every answer is an integer and MATH otherwise (MATH500,
    recognised by its `unique_id`, stays MATH even where its answers are integers).

    >>> detect_kind([{"question": "2+2?", "answer": "4"}])
    'aime'
    """
    fields = set(records[0])
    if {"id", "question", "sequential", "answer"} <= fields:
        return "builtin"
    if ("question" in fields or "problem" in fields) and ("choices" in fields or "options" in fields):
        return "choice"
    if ("problem" in fields or "question" in fields) and "answer" in fields:
        integers = all(integer_reference(r.get("answer", "")) is not None for r in records)
        return "aime" if integers and "unique_id" not in fields else "math"
    raise ValueError(
        f"{where}: cannot tell the data kind from fields {sorted(fields)}; expected MATH500 (problem, answer), "
        "AIME (problem|question, integer answer), built-in (id, question, sequential, answer) or multiple choice "
        "(question, choices|options, answer letter). Pass --kind to force one."
    )


def _choices_of(record: Mapping[str, Any], where: str) -> list[tuple[str, str]]:
    """(letter, text) pairs of a multiple-choice record."""
    choices = record.get("choices", record.get("options"))
    if isinstance(choices, Mapping):
        pairs = [(str(k).strip().upper(), str(v)) for k, v in choices.items()]
    elif isinstance(choices, Sequence) and not isinstance(choices, str) and choices:
        pairs = list(zip(string.ascii_uppercase, map(str, choices)))
    else:
        raise ValueError(f"{where}: 'choices'/'options' must be a non-empty list or a {{letter: text}} object")
    return pairs


def normalize_record(record: Mapping[str, Any], kind: str, index: int, where: str = "record") -> dict[str, Any]:
    """`{id, question, answer, kind}` from a raw record: the prompt text and the reference answer for grading."""
    question = record.get("question", record.get("problem"))
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: no 'question' or 'problem' text")
    if "answer" not in record:
        raise ValueError(f"{where}: no 'answer' field")
    answer = str(record["answer"]).strip()
    if kind == "choice":
        pairs = _choices_of(record, where)
        letters = [letter for letter, _ in pairs]
        if answer.strip("() .").upper() not in letters:
            raise ValueError(f"{where}: answer {answer!r} is not one of the choice letters {letters}")
        question = question.rstrip() + "\n\n" + "\n".join(f"{letter}. {text}" for letter, text in pairs)
    elif kind in ("aime", "builtin") and integer_reference(answer) is None:
        raise ValueError(f"{where}: {kind} answer {answer!r} is not an integer (or \\boxed{{N}})")
    record_id = record.get("id", record.get("unique_id", index))
    normalized = {"id": record_id, "question": question, "answer": answer, "kind": kind}
    if kind == "builtin" and isinstance(record.get("sequential"), str):
        normalized["sequential"] = record["sequential"]  # the worked solution the steps are checked against
    return normalized


def load_records(path: str | Path, kind: str | None = None, limit: int | None = None) -> tuple[list[dict], str]:
    """Read a JSONL task file; returns (normalised records, kind). The kind is detected unless given.

    >>> records, kind = load_records("../shared/data/aime2025-I.jsonl", limit=2)  # doctest: +SKIP
    """
    path = Path(path)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown --kind {kind!r}; expected one of {', '.join(KINDS)}")
    raw: list[tuple[int, dict]] = []
    for line_number, record in iter_jsonl(path):
        if limit is not None and len(raw) >= limit:
            break
        raw.append((line_number, record))
    if not raw:
        raise ValueError(f"{path}: no records")
    kind = kind or detect_kind([r for _, r in raw], str(path))
    records = [normalize_record(r, kind, i, f"{path}:{n}") for i, (n, r) in enumerate(raw)]
    return records, kind


def is_multiverse_tokenizer(tokenizer) -> bool:
    """Whether the tokenizer has the twelve tags: the model writes the Multiverse format."""
    try:
        tag_ids_from_tokenizer(tokenizer)
    except MissingTagsError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Generation


def stop_token_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def generation_stats(output: Any, row: int, generated_tokens: int) -> tuple[int, int]:
    """(generated tokens, decode steps) of one prompt of a `generate` output.

    The fork/merge engine (`modeling_multiverse.generation`) reports both per prompt as the lists
    `output.generated_tokens` and `output.decode_steps`; a plain causal model does not, and then
    every generated token (`generated_tokens`, counted from the sequences) took its own decode step.

    >>> generation_stats(MultiverseGenerateOutput(generated_tokens=[30], decode_steps=[20]), 0, 31)  # doctest: +SKIP
    (30, 20)
    """
    tokens, steps = getattr(output, "generated_tokens", None), getattr(output, "decode_steps", None)
    if tokens is None or steps is None:
        return generated_tokens, generated_tokens
    return int(tokens[row]), int(steps[row])


def _well_formed(text: str) -> bool:
    try:
        parse_text(text, require_think=True)
    except StructureError:
        return False
    return True


def encode_prompts(tokenizer, records: Sequence[Mapping[str, Any]], parallel_prompt: bool, device) -> Any:
    """The chat-formatted prompts of `records` as one left-padded batch on `device`.

    Left padding, asked for in the call so that the tokenizer's own `padding_side` stays as it is:
    generation continues every row from its last real token.
    """
    ids = [prompt_ids(tokenizer, r["question"], r["kind"], parallel=parallel_prompt) for r in records]
    return tokenizer.pad({"input_ids": ids}, padding=True, padding_side="left", return_tensors="pt").to(device)


def generate_batch(model, tokenizer, encoded, max_new_tokens: int, pad_id: int) -> tuple[list[list[int]], Any, float]:
    """Greedy decoding of one encoded batch: (new token ids per row, the `generate` output, seconds)."""
    start = time.perf_counter()
    output = model.generate(
        input_ids=encoded["input_ids"],
        attention_mask=encoded["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
        return_dict_in_generate=True,
        tokenizer=tokenizer,  # the engine reads labels and tags with it
    )
    seconds = time.perf_counter() - start
    return output.sequences[:, encoded["input_ids"].shape[1] :].tolist(), output, seconds


def trim_response(ids: Sequence[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """(the response's ids up to its first stop token, whether it had one); what follows is padding.

    >>> trim_response([5, 6, 2, 0, 0], {2})
    ([5, 6], True)
    """
    end = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    return list(ids[:end]), end < len(ids)


def grade_record(
    record: Mapping[str, Any], response: str, tokens: int, steps: int, finished: bool, batch_time_s: float
) -> dict[str, Any]:
    """One problem's result: the graded response, its step counts (built-in task) and its decoding statistics."""
    steps_checked = check_steps(response, record["sequential"]) if record.get("sequential") else {}
    return {
        "id": record["id"],
        "answer": record["answer"],
        "predicted": extract_answer(response, record["kind"]),
        "correct": grade(response, record["answer"], record["kind"]),
        "well_formed": _well_formed(response),
        **steps_checked,
        "finished": finished,
        "generated_tokens": tokens,
        "decode_steps": steps,
        "parallelism": tokens / steps if steps else 1.0,
        "batch_time_s": batch_time_s,
        "response": response,
    }


@torch.inference_mode()
def evaluate(
    model,
    tokenizer,
    records: Sequence[Mapping[str, Any]],
    kind: str,
    max_new_tokens: int = 1024,
    batch_size: int = 8,
    parallel_prompt: bool = True,
    continuous: bool = False,
) -> dict[str, Any]:
    """Generate greedily for every record, grade, and summarise.

    `continuous=True` (the CLI's `--batching auto` on an accelerator) keeps `batch_size` problems decoding,
    refilling as they finish (`evaluation/continuous.py`; Multiverse models only): the same responses,
    `batch_time_s` per problem.

    `records` are `load_records` output (`{id, question, answer, kind}`). Returns a report with
    `accuracy`, `well_formed` (fraction of responses that parse with a `<Think>` block),
    `parallelism` (mean of generated tokens / decode steps), `mean_tokens`, `wall_time_s`,
    `tokens_per_s` and per-problem `records`; `accuracy_interval` (Wilson, 95%); on built-in records that
    carry their worked solution, `step_accuracy` and its counts (`evaluation.steps`). The tokenizer is left
    as it was given.

    Example:
        >>> report = evaluate(model, tokenizer, records, "math", max_new_tokens=256)  # doctest: +SKIP
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
    records = [dict(r, kind=r.get("kind", kind)) for r in records]
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop_ids), 0)
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    if continuous and is_multiverse_model(model):
        generated = generate_continuous(model, tokenizer, records, max_new_tokens, batch_size, parallel_prompt, pad_id)
        for record, (ids, stats, seconds) in zip(records, generated):
            response_ids, finished = trim_response(ids, stop_ids)
            response = tokenizer.decode(response_ids, skip_special_tokens=False)
            tokens, steps = stats["generated_tokens"], stats["decode_steps"]
            results.append(grade_record(record, response, tokens, steps, finished, seconds))
        return summarize(results, kind, time.perf_counter() - start)
    for first in tqdm(range(0, len(records), batch_size), desc="eval", unit="batch"):
        batch = records[first : first + batch_size]
        encoded = encode_prompts(tokenizer, batch, parallel_prompt, device)
        new_tokens, output, seconds = generate_batch(model, tokenizer, encoded, max_new_tokens, pad_id)
        for row, (record, ids) in enumerate(zip(batch, new_tokens)):
            response_ids, finished = trim_response(ids, stop_ids)
            tokens, steps = generation_stats(output, row, len(response_ids) + finished)
            response = tokenizer.decode(response_ids, skip_special_tokens=False)
            results.append(grade_record(record, response, tokens, steps, finished, seconds))
    return summarize(results, kind, time.perf_counter() - start)


def summarize(results: Sequence[Mapping[str, Any]], kind: str, wall_time_s: float) -> dict[str, Any]:
    """The report of `evaluate` from per-problem results."""
    n = len(results)

    def mean(field: str) -> float:
        return sum(float(r[field]) for r in results) / n if n else 0.0

    total_tokens = sum(r["generated_tokens"] for r in results)
    steps = step_summary(results) or {}
    return {
        "kind": kind,
        "n": n,
        "accuracy": mean("correct"),
        "accuracy_interval": list(wilson_interval(sum(bool(r["correct"]) for r in results), n)),
        **steps,
        "well_formed": mean("well_formed"),
        "finished": mean("finished"),
        "parallelism": mean("parallelism"),
        "mean_tokens": mean("generated_tokens"),
        "mean_decode_steps": mean("decode_steps"),
        "wall_time_s": wall_time_s,
        "tokens_per_s": total_tokens / wall_time_s if wall_time_s > 0 else 0.0,
        "records": list(results),
    }


def _interval_text(interval: Sequence[float] | None) -> str:
    return f" (95% CI {interval[0]:.1%} to {interval[1]:.1%})" if interval else ""


def format_summary(report: Mapping[str, Any]) -> str:
    """A small table of the report's headline numbers."""
    rows = [
        ("kind", report["kind"]),
        ("problems", report["n"]),
        ("accuracy", f"{report['accuracy']:.1%}" + _interval_text(report.get("accuracy_interval"))),
        *([("step accuracy", f"{report['step_accuracy']:.1%} ({report['step_counts']['step_units_right']} of "
                             f"{report['step_counts']['step_units']} sums and totals)")]
          if "step_accuracy" in report else []),
        ("well-formed", f"{report['well_formed']:.1%}"),
        ("finished", f"{report['finished']:.1%}"),
        ("parallelism", f"{report['parallelism']:.3f}"),
        ("mean tokens", f"{report['mean_tokens']:.1f}"),
        ("wall time (s)", f"{report['wall_time_s']:.1f}"),
        ("tokens / s", f"{report['tokens_per_s']:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
