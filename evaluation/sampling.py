"""`multiverse eval --num-samples k`: k seeded samples per problem, pass@k and maj@k.

Each problem is decoded as one batch of its k samples (`num_return_sequences=k`) after
`torch.manual_seed(problem_seed(seed, id))`, a seed that depends on the run's `--seed` and the problem's id
only. So a problem's samples do not depend on which other problems run, in which order, or on which process:
a data-parallel run (`evaluation/distributed.py`) writes the samples a single process writes.

Per problem: every sample (graded like a greedy response), `pass_at_k` (some sample is correct), `maj_at_k`
(the most frequent extracted answer, ties to the earliest, is correct), and the means over samples in the
fields a greedy result has (`correct` is then the mean accuracy of one sample, pass@1). The report adds
`pass_at_k`, `maj_at_k` and `num_samples`.

Example:
    $ multiverse eval --model out/m --data test.jsonl --num-samples 8 --temperature 0.7 --seed 0

    >>> majority(["3", None, "4", "3"], "aime")
    (0, '3')
"""

from __future__ import annotations

import argparse
import time
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from evaluation.evaluate import (
    encode_prompts,
    generation_stats,
    grade_record,
    stop_token_ids,
    summarize,
    trim_response,
)
from evaluation.grading import normalize_math


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """`--num-samples`, `--temperature`, `--top-p`, `--seed`: sampled evaluation (pass@k, maj@k)."""
    parser.add_argument("--num-samples", type=int, default=1, help="samples per problem; > 1 reports pass@k and maj@k")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 0.7 with k > 1)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold, in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (each problem's: from it and its id)")


def check_sampling_arguments(args: argparse.Namespace) -> None:
    """One clear line for sampling flags that contradict each other; fills in the default temperature.

    >>> args = argparse.Namespace(num_samples=4, temperature=None, top_p=None, seed=0)
    >>> check_sampling_arguments(args); args.temperature
    0.7
    """
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.num_samples == 1:
        if args.temperature is not None or args.top_p is not None:
            raise ValueError("--temperature and --top-p need --num-samples > 1: one sample per problem is greedy")
        return
    if args.temperature is None:
        args.temperature = 0.7
    if not args.temperature > 0 or args.temperature == float("inf"):
        raise ValueError(f"--num-samples {args.num_samples} needs a finite --temperature > 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")


def problem_seed(seed: int, problem_id: Any) -> int:
    """The seed of one problem's samples: from the run's seed and the problem's id, nothing else.

    >>> problem_seed(0, "synth-0-00001") == problem_seed(0, "synth-0-00001") != problem_seed(1, "synth-0-00001")
    True
    """
    return (seed * 1_000_003 + zlib.crc32(str(problem_id).encode())) % 2**31


def majority(predicted: Sequence[str | None], kind: str) -> tuple[int | None, str | None]:
    """(index of the first sample with the most frequent answer, that answer); (None, None) if no sample has one.

    Math answers are compared after `normalize_math`, so `\\frac12` and `1/2` vote together.
    """
    keys = [None if p is None else (normalize_math(p) if kind == "math" else str(p).strip()) for p in predicted]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, None
    best = max(counts.values())
    index = next(i for i, k in enumerate(keys) if k is not None and counts[k] == best)
    return index, predicted[index]


def problem_result(record: Mapping[str, Any], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One problem's result from its graded samples (`grade_record` dicts)."""
    n = len(samples)
    index, answer = majority([s["predicted"] for s in samples], record["kind"])
    means = {
        field: sum(float(s[field]) for s in samples) / n
        for field in ("correct", "well_formed", "finished", "generated_tokens", "decode_steps", "parallelism")
    }
    return {
        "id": record["id"],
        "answer": record["answer"],
        **means,
        "pass_at_k": any(s["correct"] for s in samples),
        "maj_at_k": index is not None and bool(samples[index]["correct"]),
        "majority_answer": answer,
        "batch_time_s": samples[0]["batch_time_s"],
        "samples": samples,
    }


def summarize_samples(results: Sequence[Mapping[str, Any]], kind: str, wall_time_s: float) -> dict[str, Any]:
    """`evaluate.summarize` over the per-problem means, plus pass@k, maj@k and k."""
    report = summarize(results, kind, wall_time_s)
    n = len(results)
    report["pass_at_k"] = sum(r["pass_at_k"] for r in results) / n if n else 0.0
    report["maj_at_k"] = sum(r["maj_at_k"] for r in results) / n if n else 0.0
    report["num_samples"] = len(results[0]["samples"]) if n else 0
    report["total_tokens"] = sum(s["generated_tokens"] for r in results for s in r["samples"])
    report["tokens_per_s"] = report["total_tokens"] / wall_time_s if wall_time_s > 0 else 0.0
    return report


@torch.inference_mode()
def evaluate_samples(
    model,
    tokenizer,
    records: Sequence[Mapping[str, Any]],
    kind: str,
    num_samples: int,
    max_new_tokens: int,
    parallel_prompt: bool,
    temperature: float,
    top_p: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """k seeded samples per problem (one `generate` call each), graded; the `summarize_samples` report.

    >>> report = evaluate_samples(model, tok, records, "aime", 8, 1024, True, temperature=0.7)  # doctest: +SKIP
    >>> report["pass_at_k"], report["maj_at_k"]  # doctest: +SKIP
    """
    records = [dict(r, kind=r.get("kind", kind)) for r in records]
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop_ids), 0)
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": temperature, "num_return_sequences": num_samples}
    if top_p is not None:
        sampling["top_p"] = top_p
    results = []
    start = time.perf_counter()
    for record in records:
        encoded = encode_prompts(tokenizer, [record], parallel_prompt, device)
        torch.manual_seed(problem_seed(seed, record["id"]))
        begin = time.perf_counter()
        output = model.generate(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], max_new_tokens=max_new_tokens,
            pad_token_id=pad_id, return_dict_in_generate=True, tokenizer=tokenizer, **sampling,
        )
        seconds = time.perf_counter() - begin
        samples = []
        for row, ids in enumerate(output.sequences[:, encoded["input_ids"].shape[1] :].tolist()):
            response_ids, finished = trim_response(ids, stop_ids)
            tokens, steps = generation_stats(output, row, len(response_ids) + finished)
            response = tokenizer.decode(response_ids, skip_special_tokens=False)
            samples.append(grade_record(record, response, tokens, steps, finished, seconds))
        results.append(problem_result(record, samples))
    return summarize_samples(results, kind, time.perf_counter() - start)


def samples_line(report: Mapping[str, Any]) -> str:
    """The headline of a sampled evaluation, printed under `format_summary`.

    >>> samples_line({"num_samples": 4, "pass_at_k": 0.5, "maj_at_k": 0.25})
    'pass@4         50.0%\\nmaj@4          25.0%'
    """
    k = report["num_samples"]
    return f"{f'pass@{k}':<15}{report['pass_at_k']:.1%}\n{f'maj@{k}':<15}{report['maj_at_k']:.1%}"


__all__ = [
    "add_sampling_arguments",
    "check_sampling_arguments",
    "evaluate_samples",
    "majority",
    "problem_seed",
    "samples_line",
    "summarize_samples",
]
