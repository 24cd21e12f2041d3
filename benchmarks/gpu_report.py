"""One JSON and one Markdown table from the steps of `benchmarks/gpu_check.sh`.

Reads, in the output folder: `steps.tsv` (one line per step: name, exit status, seconds, command) and what the
steps wrote: `engine_gpu.json` (`benchmarks/engine_gpu.py`), `exactness.json` (`benchmarks/gpu_exactness.py`),
`tp.json` (`benchmarks/tp_check.py`) and `serve_load.json` (`benchmarks/serve_load.py`, where present). Writes
`gpu_check.json` (everything, by step) and `gpu_check.md` (the steps, then one table per measure).

    $ python benchmarks/gpu_report.py out/gpu_check
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STEP_FILES = {
    "engine": "engine_gpu.json", "exactness": "exactness.json", "tp": "tp.json", "serve_load": "serve_load.json",
}
"""The JSON each step of gpu_check.sh writes into the output folder."""


def read_steps(folder: Path) -> list[dict[str, Any]]:
    """The lines of `steps.tsv`: `{step, status, seconds, command}`; a malformed line is one clear error."""
    steps = []
    path = folder / "steps.tsv"
    for number, line in enumerate(path.read_text().splitlines() if path.is_file() else [], 1):
        fields = line.split("\t")
        if len(fields) != 4:
            raise ValueError(f"{path}:{number}: expected 4 tab-separated fields (step, status, seconds, command)")
        name, status, seconds, command = fields
        steps.append({"step": name, "status": status, "seconds": float(seconds), "command": command})
    return steps


def engine_rows(report: dict) -> list[str]:
    rows = ["| model / workload / batch | (a) generate tok/s | (c) engine tok/s | speedup | of ideal | peak GiB |",
            "|---|---|---|---|---|---|"]
    for name, r in report.get("results", {}).items():
        peak = r["c_engine"].get("peak_memory_gib")
        rows.append(f"| {name.replace('|', ' / ')} | {r['a_hf_generate']['tok_s']} | {r['c_engine']['tok_s']} | "
                    f"{r['speedup_vs_a']:.2f}x | {r['fraction_of_ideal']:.2f} | {peak} |")
    return rows


def exactness_rows(report: dict) -> list[str]:
    tol = report.get("tolerances", {})
    verdict = {True: "PASS", False: "FAIL"}
    rows = [(f"fp32 invariant: **{verdict[bool(report.get('fp32_invariant'))]}** (0 argmax mismatches, "
             f"|dlogp| <= {tol.get('fp32_logprob')}); bf16 vs fp32: **{verdict[bool(report.get('bf16_vs_fp32'))]}**"
             f" (regret <= {tol.get('bf16_regret_nats')} nats)"), "",
            "| skeleton | fp32 mismatches | fp32 max dlogp | bf16 max regret | bf16 greedy equal | bf16 top-1 agree |",
            "|---|---|---|---|---|---|"]
    for name, r in report.get("results", {}).items():
        rows.append(f"| {name} | {r['fp32_argmax_mismatches']} | {r['fp32_max_logprob_diff']:.1e} | "
                    f"{r['bf16_max_regret_nats']:.3f} | {r['bf16_first_greedy_tokens_equal']}/{r['free_slots']} | "
                    f"{r['bf16_teacher_forced_top1_agreement']:.3f} |")
    return rows


def tp_rows(report: dict) -> list[str]:
    return ["| N | via | backend | device | same tokens | forks | tokens / steps | s split | s single |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {report['tp_size']} | {report['via']} | {report['backend']} | {report['device']} | "
            f"{report['same_tokens'] and report['same_stats']} | {len(report['forks'])} | "
            f"{report['generated_tokens']} / {report['decode_steps']} | {report['seconds_split']} | "
            f"{report['seconds_single']} |"]


def generic_rows(report: Any) -> list[str]:
    """A step whose JSON this script does not know (serve_load): its top-level numbers and strings."""
    items = report.items() if isinstance(report, dict) else []
    rows = ["| field | value |", "|---|---|"]
    rows += [f"| {k} | {v} |" for k, v in items if isinstance(v, (int, float, str, bool))]
    return rows


TABLES = {"engine": engine_rows, "exactness": exactness_rows, "tp": tp_rows, "serve_load": generic_rows}


def build(folder: Path) -> tuple[dict[str, Any], str]:
    """(the JSON report, the Markdown) of a gpu_check.sh output folder."""
    steps = read_steps(folder)
    report: dict[str, Any] = {"steps": steps, "passed": all(s["status"] in ("0", "skipped") for s in steps)}
    lines = ["# gpu_check", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']:.0f} |" for s in steps]
    for step, filename in STEP_FILES.items():
        path = folder / filename
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        report[step] = data
        lines += ["", f"## {step} ({filename})", ""]
        try:
            lines += TABLES[step](data)
        except (KeyError, TypeError, AttributeError) as error:  # a step's format changed: keep the JSON, say so
            lines.append(f"(no table: {filename} lacks {error})")
    return report, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the output folder of gpu_check.sh")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        raise SystemExit(f"gpu_report: {folder}: no such folder")
    report, markdown = build(folder)
    (folder / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (folder / "gpu_check.md").write_text(markdown)
    print(markdown)
    print(f"wrote {folder / 'gpu_check.json'} and {folder / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
