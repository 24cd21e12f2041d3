"""`multiverse curate`: sequential chains of thought (JSONL) -> Multiverse training data (JSONL, and a dataset).

Example:
    multiverse curate --input problems.jsonl --output curated.jsonl --backend rules
    multiverse curate --input p.jsonl --output c.jsonl --backend openai --base-url http://localhost:8000/v1 \\
        --model Qwen/Qwen2.5-7B-Instruct --workers 8 --cache-dir .cache/curate --export-dir data/multiverse
"""

from __future__ import annotations

import argparse
import json

from .pipeline import curate_file, format_summary
from .validate import DEFAULT_MIN_COVERAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multiverse curate", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="JSONL with {id, sequential} and usually question, answer")
    parser.add_argument("--output", required=True, help="JSONL {id, status, multiverse, reason, scores}; resumed if it exists")
    parser.add_argument("--backend", choices=("rules", "openai", "local"), default="rules")
    parser.add_argument("--base-url", help="openai: endpoint base URL (else MULTIVERSE_BASE_URL / OPENAI_BASE_URL)")
    parser.add_argument("--model", help="openai: model name (else MULTIVERSE_MODEL); local: model id or folder")
    parser.add_argument("--api-key", help="openai: API key (else MULTIVERSE_API_KEY / OPENAI_API_KEY / GEMINI_API_KEY)")
    parser.add_argument("--cache-dir", help="openai: on-disk response cache")
    parser.add_argument("--timeout", type=float, default=120.0, help="openai: seconds per request")
    parser.add_argument("--workers", type=int, default=1, help="records curated concurrently (openai)")
    parser.add_argument("--retries", type=int, default=2, help="LLM backends: retries of a record that fails a check")
    parser.add_argument("--max-depth", type=int, help="deepest nesting of parallel blocks")
    parser.add_argument("--min-coverage", type=float, default=DEFAULT_MIN_COVERAGE, help="share of original words kept")
    parser.add_argument("--keep-sequential", action="store_true", help="keep chains with no parallel block as converted")
    parser.add_argument("--export-dir", help="also write the prompt/completion dataset (multiverse + autoregressive) here")
    parser.add_argument("--ar-source", choices=("sequential", "flattened"), default="sequential")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="with --export-dir: push the dataset to the Hub")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options: dict = {"max_depth": args.max_depth}
    if args.backend == "openai":
        options.update(base_url=args.base_url, model=args.model, api_key=args.api_key, cache_dir=args.cache_dir, timeout=args.timeout)
    elif args.backend == "local":
        if not args.model:
            raise SystemExit("multiverse curate: --backend local needs --model")
        options["model"] = args.model
    summary = curate_file(
        args.input, args.output, backend=args.backend, workers=args.workers, retries=args.retries,
        min_coverage=args.min_coverage, keep_sequential=args.keep_sequential, progress=not args.no_progress, **options,
    )
    print(format_summary(summary))
    print(json.dumps(summary))
    if args.export_dir:
        from .export import export_file

        data = export_file(args.output, args.input, args.export_dir, ar_source=args.ar_source, push_to_hub=args.push_to_hub)
        print(f"exported {', '.join(f'{k}: {len(v)}' for k, v in data.items())} rows to {args.export_dir}")
    return 0
