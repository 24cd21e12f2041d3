"""`multiverse eval`: accuracy, well-formedness, parallelism, tokens and time of a model on a JSONL task.

The command line over `evaluation.evaluate` (the library), `evaluation.sampling` (`--num-samples k`),
`evaluation.distributed` (torchrun / accelerate launch) and `evaluation.baseline` (a plain baseline decoded
through the same engine). Kept apart from the library so that those modules can use it without a cycle.

Example:
    $ multiverse eval --model out/smollm2-multiverse --data ../shared/data/MATH500_test.jsonl --limit 20
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from evaluation.baseline import engine_model, require_baseline_tokenizer
from evaluation.continuous import use_continuous
from evaluation.distributed import add_parallel_argument, load_model, run_evaluation
from evaluation.evaluate import (
    evaluate,
    format_summary,
    is_multiverse_tokenizer,
    load_records,
    summarize,
)
from evaluation.grading import KINDS
from evaluation.sampling import (
    add_sampling_arguments,
    check_sampling_arguments,
    evaluate_samples,
    samples_line,
    summarize_samples,
)
from modeling_multiverse.engine import MERGE_MODES
from runtime.arguments import OneLineParser
from runtime.distributed import Launch
from runtime.precision import PRECISIONS, choose_precision


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="multiverse eval", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--data", required=True, help="JSONL task file")
    parser.add_argument("--kind", choices=KINDS, help="answer kind; detected from the fields when left out")
    parser.add_argument("--limit", type=int, help="evaluate only the first N records")
    parser.add_argument("--max-new-tokens", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=8, help="problems decoding at once")
    parser.add_argument(
        "--batching",
        choices=("auto", "continuous", "static"),
        default="auto",
        help="continuous: finished problems are replaced at once; static: batches wait on their longest; "
        "auto (default): continuous on an accelerator, static on a CPU, where refilling does not pay",
    )
    parser.add_argument(
        "--parallel-prompt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="append PARALLEL_INSTRUCTION to the prompt (default: when the tokenizer has the Multiverse tags)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="decoding precision; auto: bf16 where the device runs it natively, else fp32 (default)",
    )
    parser.add_argument("--output", help="write the full report (with per-problem records) to this JSON file")
    parser.add_argument("--merge", choices=MERGE_MODES, default=MERGE_MODES[0],
                        help="exact: conclusions read the paths' cache; reprefill: as a stock vLLM/SGLang must serve")
    add_parallel_argument(parser)  # torchrun / accelerate launch: evaluation/distributed.py
    add_sampling_arguments(parser)  # --num-samples k: pass@k, maj@k (evaluation/sampling.py)
    args = parser.parse_args(argv)
    check_sampling_arguments(args)
    bounded = (("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size))
    for flag, value in bounded:
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"--device {args.device}: not usable here ({' '.join(str(err).split())[:120]})") from None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # (importing modeling_multiverse registered ours)

    from runtime.paths import context_length, model_config, multiverse_config, same_path, write_text_atomic

    records, kind = load_records(args.data, args.kind, args.limit)
    config = model_config(args.model, "--model")
    if config["model_type"] == "multiverse":
        config = multiverse_config(args.model, "--model")  # its tag ids checked before anything loads
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if config["model_type"] != "multiverse":
        # a plain model is evaluated only as a trained baseline: its tokenizer has the tags (SPEC.md §2)
        require_baseline_tokenizer(config["model_type"], tokenizer, args.model, "--model")
    context = context_length(config)
    if context is not None and args.max_new_tokens > context:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} exceeds the model's context of {context} tokens")
    if args.output and (same_path(args.output, args.data) or Path(args.output).is_dir()):
        raise ValueError(f"--output {args.output} is the data file or a folder; the report needs a file of its own")
    precision = choose_precision(args.precision, args.device)
    launch = Launch.from_env()  # several processes (torchrun, accelerate launch): data or tensor parallel
    text_config = config.get("text_config") or config
    model = load_model(
        AutoModelForCausalLM, args.model, precision.dtype, args.device, launch, args.parallel, text_config
    )
    model = engine_model(model, tokenizer)  # a plain baseline decodes through the same engine (evaluation/baseline.py)
    parallel_prompt = is_multiverse_tokenizer(tokenizer) if args.parallel_prompt is None else args.parallel_prompt
    model.generation_config.merge = args.merge  # an engine option: generate() reads it from here

    def evaluate_part(part: list[dict]) -> dict[str, Any]:
        if args.num_samples > 1:
            return evaluate_samples(model, tokenizer, part, kind, args.num_samples, args.max_new_tokens,
                                    parallel_prompt, args.temperature, args.top_p, args.seed)
        return evaluate(model, tokenizer, part, kind, args.max_new_tokens, args.batch_size, parallel_prompt,
                        continuous=use_continuous(args.batching, model.device))

    summary = summarize_samples if args.num_samples > 1 else summarize
    report = run_evaluation(evaluate_part, records, args.batch_size, kind, launch, summary, args.parallel)
    if report is None:  # not rank 0: rank 0 reports for every process
        return 0
    report.update(model=args.model, data=str(args.data), parallel_prompt=parallel_prompt, precision=precision.as_dict())
    report.update(merge=args.merge)
    if args.num_samples > 1:
        report.update(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    print(format_summary(report))
    if args.num_samples > 1:
        print(samples_line(report))
    if args.output:
        write_text_atomic(args.output, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"report written to {args.output}")
    return 0
