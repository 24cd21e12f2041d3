"""`multiverse curate`: sequential chains of thought (JSONL) -> Multiverse training data (JSONL, and a dataset).

Example:
    multiverse curate --input problems.jsonl --output curated.jsonl --backend rules
    multiverse curate --input p.jsonl --output c.jsonl --backend openai --base-url http://localhost:8000/v1 \\
        --model Qwen/Qwen2.5-7B-Instruct --workers 8 --cache-dir .cache/curate --export-dir data/multiverse
"""

from __future__ import annotations

import argparse
import json
import math

from runtime.arguments import OneLineParser

from .pipeline import curate_file, format_summary
from .validate import DEFAULT_MIN_COVERAGE

MAX_WORKERS = 256  # threads, each holding a request: more only exhausts the machine or the server


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="multiverse curate", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="JSONL with {id, sequential} and usually question, answer")
    parser.add_argument(
        "--output", required=True, help="JSONL {id, status, multiverse, reason, scores}; resumed if it exists"
    )
    parser.add_argument("--backend", choices=("rules", "openai", "local"), default="rules")
    parser.add_argument("--base-url", help="openai: endpoint base URL (else MULTIVERSE_BASE_URL / OPENAI_BASE_URL)")
    parser.add_argument("--model", help="openai: model name (else MULTIVERSE_MODEL); local: model id or folder")
    parser.add_argument("--api-key", help="openai: API key (else MULTIVERSE_API_KEY / OPENAI_API_KEY / GEMINI_API_KEY)")
    parser.add_argument("--cache-dir", help="openai: on-disk response cache")
    parser.add_argument("--timeout", type=float, help="openai: seconds per request (default 120)")
    parser.add_argument("--workers", type=int, default=1, help="records curated concurrently (openai)")
    parser.add_argument("--retries", type=int, default=2, help="LLM backends: retries of a record that fails a check")
    parser.add_argument("--max-depth", type=int, help="deepest nesting of parallel blocks")
    parser.add_argument("--min-coverage", type=float, default=DEFAULT_MIN_COVERAGE, help="share of original words kept")
    parser.add_argument(
        "--keep-sequential", action="store_true", help="keep chains with no parallel block as converted"
    )
    parser.add_argument(
        "--export-dir", help="also write the prompt/completion dataset (multiverse + autoregressive) here"
    )
    parser.add_argument("--ar-source", choices=("sequential", "flattened"), default="sequential")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="with --export-dir: push the dataset to the Hub")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuse values out of range and options the chosen backend would ignore (ValueError, one line)."""
    if args.workers < 1 or args.workers > MAX_WORKERS:
        raise ValueError(f"--workers must be in 1..{MAX_WORKERS}, got {args.workers}")
    if args.retries < 0:
        raise ValueError(f"--retries must be >= 0, got {args.retries}")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ValueError(f"--timeout must be a number of seconds > 0, got {args.timeout}")
    if not (math.isfinite(args.min_coverage) and 0.0 <= args.min_coverage <= 1.0):
        raise ValueError(f"--min-coverage must be in [0, 1], got {args.min_coverage}")
    if args.max_depth is not None and args.max_depth < 1:
        raise ValueError(f"--max-depth must be >= 1, got {args.max_depth}")
    openai_only = {
        "--base-url": args.base_url,
        "--api-key": args.api_key,
        "--cache-dir": args.cache_dir,
        "--timeout": args.timeout,
    }
    ignored = [flag for flag, value in openai_only.items() if value is not None and args.backend != "openai"]
    if args.model and args.backend == "rules":
        ignored.append("--model")
    if ignored:
        raise ValueError(
            f"{', '.join(ignored)}: {'does' if len(ignored) == 1 else 'do'} nothing with --backend {args.backend}"
        )
    if args.backend == "local" and not args.model:
        raise ValueError("--backend local needs --model (a model id or folder)")
    if args.backend == "local":
        from runtime.paths import model_config

        model_config(args.model, "--model")
    if args.push_to_hub and not args.export_dir:
        raise ValueError("--push-to-hub needs --export-dir (the dataset it pushes)")
    if args.export_dir:
        from .export import check_export_dir

        check_export_dir(args.export_dir, args.input, args.output)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    options: dict = {"max_depth": args.max_depth}
    if args.backend == "openai":
        timeout = 120.0 if args.timeout is None else args.timeout
        options.update(
            base_url=args.base_url, model=args.model, api_key=args.api_key, cache_dir=args.cache_dir, timeout=timeout
        )
    elif args.backend == "local":
        options["model"] = args.model
    summary = curate_file(
        args.input, args.output, backend=args.backend, workers=args.workers, retries=args.retries,
        min_coverage=args.min_coverage, keep_sequential=args.keep_sequential, progress=not args.no_progress, **options,
    )
    print(format_summary(summary))
    print(json.dumps(summary))
    if args.export_dir:
        from .export import export_file

        data = export_file(
            args.output, args.input, args.export_dir, ar_source=args.ar_source, push_to_hub=args.push_to_hub
        )
        print(f"exported {', '.join(f'{k}: {len(v)}' for k, v in data.items())} rows to {args.export_dir}")
    return 0
