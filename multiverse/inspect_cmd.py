"""`multiverse inspect FILE`: check the structure of Multiverse responses stored in a JSONL file.

For each record: is the response well-formed (SPEC.md §3, strict), and if not, where and why; its blocks,
widest block, nesting depth, tokens, critical-path tokens and structural ideal (SPEC.md §8). With
`--json`, one JSON object per record and a closing `{"summary": {...}}` line; otherwise a table.

Example:
    $ multiverse inspect ../shared/traces/math500_multiverse_responses.jsonl --json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from runtime.arguments import OneLineParser


def read_responses(path: str | Path, field: str) -> Iterator[tuple[str, str]]:
    """(id, text) per record; `JsonlError` naming the file and line for bad JSON or a missing field."""
    from runtime.jsonl import JsonlError, iter_jsonl

    for number, record in iter_jsonl(path):
        if not isinstance(record.get(field), str):
            raise JsonlError(path, number, f"no text field {field!r} (found {sorted(record)}); pick one with --field")
        yield str(record.get("id", number)), record[field]


def inspect_response(text: str, tokenizer, tag_ids: dict[str, int]) -> dict:
    """The structure report of one response, tokenized with `tokenizer`."""
    from modeling_multiverse import StructureError, parse_ids

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    report = {"valid": True, "error": None, "tokens": len(ids)}
    try:
        structure = parse_ids(ids, tag_ids, decode=tokenizer.decode, require_think=True)
    except StructureError as err:
        return report | {
            "valid": False,
            "error": str(err),
            "blocks": None,
            "max_paths": None,
            "max_depth": None,
            "critical_path_tokens": None,
            "structural_ideal": None,
        }
    critical = structure.arrays().critical_path_tokens()
    return report | {
        "blocks": sum(1 for _ in structure.iter_blocks()),
        "max_paths": structure.max_paths,
        "max_depth": structure.max_depth,
        "critical_path_tokens": critical,
        "structural_ideal": round(len(ids) / critical, 4) if critical else 1.0,
    }


def summarize(reports: list[dict]) -> dict:
    valid = [r for r in reports if r["valid"]]
    tokens = sum(r["tokens"] for r in valid)
    critical = sum(r["critical_path_tokens"] for r in valid)
    return {
        "records": len(reports),
        "valid": len(valid),
        "invalid": len(reports) - len(valid),
        "valid_fraction": round(len(valid) / len(reports), 4) if reports else 0.0,
        "blocks": sum(r["blocks"] for r in valid),
        "tokens": tokens,
        "critical_path_tokens": critical,
        # the ratio of totals: the speedup an ideal engine would get over the whole set
        "structural_ideal": round(tokens / critical, 4) if critical else None,
        "mean_structural_ideal": round(sum(r["structural_ideal"] for r in valid) / len(valid), 4) if valid else None,
    }


def _load_tokenizer(folder: str | None):
    from modeling_multiverse import add_tag_tokens, tag_ids_from_tokenizer

    if folder is None:
        from .embedded import load_embedded_tokenizer

        tokenizer = load_embedded_tokenizer()
        return tokenizer, add_tag_tokens(tokenizer)
    from transformers import AutoTokenizer

    from runtime.paths import TOKENIZER_FILES, is_local

    if is_local(folder, "--tokenizer") and not any((Path(folder) / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"--tokenizer {folder}: the folder has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])})"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer, tag_ids_from_tokenizer(tokenizer)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="multiverse inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="JSONL file, one record per line")
    parser.add_argument("--field", default="response", help="the text field holding the response")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer folder with the tags (default: the embedded SmolLM2 + tags)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per record, then a summary line")
    args = parser.parse_args(argv)

    from runtime.jsonl import check_file

    check_file(args.file)  # before the tokenizer loads: a typo is reported at once
    tokenizer, tag_ids = _load_tokenizer(args.tokenizer)
    reports = []
    for record_id, text in read_responses(args.file, args.field):
        report = {"id": record_id} | inspect_response(text, tokenizer, tag_ids)
        reports.append(report)
        if args.json:
            print(json.dumps(report), flush=True)
    if not reports:
        raise ValueError(f"{args.file}: no records")
    summary = summarize(reports)
    if args.json:
        print(json.dumps({"summary": summary}))
        return 0
    header = (
        f"{'id':<28} {'valid':<5} {'blocks':>6} {'paths':>5} {'depth':>5} {'tokens':>7} {'critical':>8} {'ideal':>6}"
    )
    print(header)
    for r in reports:
        if r["valid"]:
            print(
                f"{r['id'][:28]:<28} {'yes':<5} {r['blocks']:>6} {r['max_paths']:>5} {r['max_depth']:>5} "
                f"{r['tokens']:>7} {r['critical_path_tokens']:>8} {r['structural_ideal']:>6.2f}"
            )
        else:
            print(f"{r['id'][:28]:<28} {'no':<5} {r['tokens']:>31}  {r['error']}")
    print(
        f"\n{summary['valid']}/{summary['records']} valid ({summary['valid_fraction']:.0%}); "
        f"{summary['blocks']} blocks; structural ideal {summary['structural_ideal']} over the valid ones",
        file=sys.stdout,
    )
    return 0
