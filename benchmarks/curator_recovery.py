"""How much of real Multiverse structure the `rules` backend recovers from the flattened text.

Takes real Multiverse responses (`../shared/traces/math500_multiverse_responses.jsonl`), removes the
tags (and the `1:`/`2.1:` labels they leave at line starts), runs the rules structurer on the lines of
the Think body, and compares the blocks it proposes with the blocks the response really had:

- block recall / precision: an original block is *found* when a recovered block covers an overlapping
  range of lines with intersection-over-union >= 0.5 (and vice versa for precision);
- branch agreement: among matched blocks, the share with the same number of paths, and the mean IoU of
  their paths' line ranges (paths paired in order);
- traces with at least one block: originally, and as recovered.

Usage:
    python benchmarks/curator_recovery.py [--traces FILE] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from curator.plan import iter_blocks
from curator.rules import RulesStructurer
from modeling_multiverse.structure import TEXT, StructureError, parse_text, split_tags, tag_kind

DEFAULT_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces" / "math500_multiverse_responses.jsonl"
LINE_LABEL = re.compile(r"^\s*\d+(?:\.\d+)*:\s?")


def flatten_with_lines(response: str):
    """(lines, line_of_item_start): the Think body's non-empty lines with tags and labels removed, and for
    every item the index of the first line at or after its start (to map blocks onto lines)."""
    structure = parse_text(response, require_think=True)
    items = split_tags(response)
    lines: list[str] = []
    line_at_item: list[int] = []
    pending = ""
    for index, item in enumerate(items):
        if tag_kind(item) != TEXT:
            # a tag ends the current line (tags stand on their own lines in practice)
            if LINE_LABEL.sub("", pending).strip():
                lines.append(LINE_LABEL.sub("", pending).strip())
            pending = ""
            line_at_item.append(len(lines))
        else:
            line_at_item.append(len(lines))
            if structure.think_open < index < structure.think_close:
                pending += item
                *complete, pending = pending.split("\n")
                lines += [LINE_LABEL.sub("", line).strip() for line in complete if LINE_LABEL.sub("", line).strip()]
    line_at_item.append(len(lines))
    return structure, items, lines, line_at_item


def original_blocks(structure, line_at_item) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """Every original block as (line span, path line spans); spans are [first, last] inclusive."""
    result = []
    for block in structure.iter_blocks():
        paths = [(line_at_item[u.open], line_at_item[u.close] - 1) for u in block.paths]
        span = (line_at_item[block.goal_open], line_at_item[block.close] - 1)
        result.append((span, paths))
    return result


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)
    union = (a[1] - a[0] + 1) + (b[1] - b[0] + 1) - inter
    return inter / union if union > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", default=str(DEFAULT_TRACES))
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.traces).read_text().splitlines() if line.strip()]
    structurer = RulesStructurer()
    totals = dict(traces=len(rows), unparsable=0, original_blocks=0, recovered_blocks=0, found=0, precise=0,
                  same_branch_count=0, path_iou_sum=0.0, traces_with_blocks=0, traces_with_recovered=0,
                  original_branches=0, recovered_branches=0, lines=0)
    for row in rows:
        try:
            structure, items, lines, line_at_item = flatten_with_lines(row["response"])
        except StructureError:
            totals["unparsable"] += 1
            continue
        original = [(s, p) for s, p in original_blocks(structure, line_at_item) if s[1] >= s[0]]
        plan = structurer.plan(lines, row.get("problem", ""))
        recovered = [(b.span, b.path_spans) for b, _ in iter_blocks(plan)]
        totals["lines"] += len(lines)
        totals["original_blocks"] += len(original)
        totals["recovered_blocks"] += len(recovered)
        totals["original_branches"] += sum(len(p) for _, p in original)
        totals["recovered_branches"] += sum(len(p) for _, p in recovered)
        totals["traces_with_blocks"] += bool(original)
        totals["traces_with_recovered"] += bool(recovered)
        for span, paths in original:
            best = max(recovered, key=lambda r: iou(span, r[0]), default=None)
            if best is None or iou(span, best[0]) < 0.5:
                continue
            totals["found"] += 1
            totals["same_branch_count"] += len(best[1]) == len(paths)
            totals["path_iou_sum"] += sum(iou(a, b) for a, b in zip(paths, best[1])) / len(paths)
        totals["precise"] += sum(1 for r in recovered if any(iou(r[0], s) >= 0.5 for s, _ in original))
    parsed = totals["traces"] - totals["unparsable"]
    report = {
        "traces": totals["traces"],
        "parsed": parsed,
        "lines_per_trace": round(totals["lines"] / max(parsed, 1), 1),
        "original_blocks": totals["original_blocks"],
        "recovered_blocks": totals["recovered_blocks"],
        "block_recall": round(totals["found"] / max(totals["original_blocks"], 1), 4),
        "block_precision": round(totals["precise"] / max(totals["recovered_blocks"], 1), 4),
        "branch_count_agreement": round(totals["same_branch_count"] / max(totals["found"], 1), 4),
        "matched_path_iou": round(totals["path_iou_sum"] / max(totals["found"], 1), 4),
        "branches_per_trace_original": round(totals["original_branches"] / max(parsed, 1), 3),
        "branches_per_trace_recovered": round(totals["recovered_branches"] / max(parsed, 1), 3),
        "traces_with_blocks_original": totals["traces_with_blocks"],
        "traces_with_blocks_recovered": totals["traces_with_recovered"],
    }
    for key, value in report.items():
        print(f"{key:32s} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
