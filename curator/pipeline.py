"""Curate a JSONL file of sequential chains into Multiverse responses: plan, render, validate, retry, write.

Output lines are `{id, status: converted|rejected, multiverse, reason, scores}`. The output is
resumable: every record is written whole with one `write` on an append-only file, so a killed run
(SIGKILL included) leaves at most one torn last line, which the next run cuts off before it skips
the ids already done. No id is written twice.

Example:
    >>> summary = curate_file("problems.jsonl", "curated.jsonl", structurer=RulesStructurer())  # doctest: +SKIP
    >>> summary["converted"]  # doctest: +SKIP
    396
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from .backends import BackendError
from .plan import Plan, iter_blocks, render_response, split_answer, split_chain
from .rules import RulesStructurer
from .stages import LLMStructurer, StageError
from .validate import DEFAULT_MIN_COVERAGE, validate_response

REQUIRED_FIELDS = ("id", "sequential")


class Structurer(Protocol):
    def plan(self, steps: Sequence[str], question: str = "", **kwargs) -> Plan: ...


def read_problems(path: str | os.PathLike) -> list[dict]:
    """Input records; raises ValueError naming the file and line of the first bad one (nothing is written)."""
    rows, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number}: expected a JSON object")
            missing = [k for k in REQUIRED_FIELDS if not isinstance(row.get(k), str) or not row[k].strip()]
            if missing:
                raise ValueError(f"{path} line {number}: missing or empty field(s) {missing}")
            if row["id"] in seen:
                raise ValueError(f"{path} line {number}: duplicate id {row['id']!r} (first on line {seen[row['id']]})")
            seen[row["id"]] = number
            rows.append(row)
    return rows


def curate_record(
    record: dict,
    structurer: Structurer,
    *,
    retries: int = 2,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    keep_sequential: bool = False,
) -> dict:
    """One output record for one input record. A rejected record says why (`reason` is "<check>: <detail>").

    >>> r = curate_record({"id": "a", "sequential": "A: 1 + 2 = 3.\\nB: 4 + 5 = 9.\\nT: 3 + 9 = 12.\\n\\\\boxed{12}"},
    ...                   RulesStructurer())
    >>> r["status"], r["scores"]["branches"]
    ('converted', 2)
    """
    question = record.get("question", "")
    think, answer = split_answer(split_chain(record["sequential"]))
    deterministic = isinstance(structurer, RulesStructurer)  # the same input gives the same plan: no retries
    reason, scores = None, {}
    attempts = 1 if deterministic else retries + 1
    for attempt in range(1, attempts + 1):
        try:
            plan = structurer.plan(think, question) if deterministic else structurer.plan(think, question, feedback=reason)
        except StageError as err:
            reason = f"stage: {err}"
            continue
        except BackendError as err:
            reason = f"backend: {err}"
            break
        if not any(True for _ in iter_blocks(plan)) and not keep_sequential:
            reason = "no_parallel: no independent steps found"
            continue
        response = render_response(plan, answer)
        verdict = validate_response(response, record["sequential"], question, min_coverage)
        kinds = Counter(block.kind for block, _ in iter_blocks(plan))
        scores = {**verdict.scores, "collective": kinds["collective"], "selective": kinds["selective"], "attempts": attempt}
        if verdict.ok:
            return {"id": record["id"], "status": "converted", "multiverse": response, "reason": None, "scores": scores}
        reason = verdict.reason
    return {"id": record["id"], "status": "rejected", "multiverse": None, "reason": reason, "scores": {**scores, "attempts": attempt}}


def recover_output(path: str | os.PathLike) -> dict[str, dict]:
    """Finished records of an earlier run, by id. A torn last line (a killed write) is cut off the file."""
    path = Path(path)
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # records end with a newline: anything after the last one is torn
    for number, raw in enumerate(data[:end].split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "id" not in record or "status" not in record:
            raise ValueError(f"{path} line {number}: not a curated record; refusing to append to this file")
        done.setdefault(record["id"], record)
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return done


def _append(fd: int, record: dict) -> None:
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    while data:  # a regular-file write is whole in practice; loop for the partial-write contract
        data = data[os.write(fd, data) :]


def make_structurer(backend: str, **options) -> Structurer:
    """`rules`, `openai` (options: base_url, model, api_key, cache_dir, timeout, ...) or `local` (options: model)."""
    max_depth = options.pop("max_depth", None)
    if backend == "rules":
        return RulesStructurer(**({"max_depth": max_depth} if max_depth else {}))
    if backend == "openai":
        from .backends import OpenAICompatibleBackend

        return LLMStructurer(OpenAICompatibleBackend(**options), **({"max_depth": max_depth} if max_depth else {}))
    if backend == "local":
        from .backends import TransformersBackend

        return LLMStructurer(TransformersBackend(options.pop("model")), **({"max_depth": max_depth} if max_depth else {}))
    raise ValueError(f"unknown backend {backend!r}, expected 'rules', 'openai' or 'local'")


def curate_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    structurer: Structurer | None = None,
    backend: str = "rules",
    workers: int = 1,
    retries: int = 2,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    keep_sequential: bool = False,
    progress: bool = True,
    **backend_options,
) -> dict:
    """Curate `input` into `output` (resuming if it exists) and return the summary of the whole output.

    `structurer` wins over `backend`/`backend_options` (see `make_structurer`).
    """
    problems = read_problems(input)
    done = recover_output(output)
    todo = [p for p in problems if p["id"] not in done]
    structurer = structurer or make_structurer(backend, **backend_options)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def work(record: dict) -> dict:
        return curate_record(record, structurer, retries=retries, min_coverage=min_coverage, keep_sequential=keep_sequential)

    try:
        with tqdm(total=len(problems), initial=len(problems) - len(todo), desc="curate", disable=not progress) as bar:
            if workers <= 1:
                for record in todo:
                    result = work(record)
                    _append(fd, result)
                    done[result["id"]] = result
                    bar.update()
            else:
                with ThreadPoolExecutor(workers) as pool:
                    for future in as_completed([pool.submit(work, r) for r in todo]):
                        result = future.result()
                        _append(fd, result)  # only this thread writes: lines never interleave
                        done[result["id"]] = result
                        bar.update()
    finally:
        os.close(fd)
    return summarize(done[p["id"]] for p in problems)


def summarize(records: Iterable[dict]) -> dict:
    """Converted, rejected by reason, parallelizable fraction, branches per example, nesting depth."""
    records = list(records)
    converted = [r for r in records if r["status"] == "converted"]
    with_blocks = [r for r in converted if r["scores"].get("blocks", 0) > 0]
    n = len(records)
    return {
        "records": n,
        "converted": len(converted),
        "rejected": n - len(converted),
        "rejected_by_reason": dict(Counter(r["reason"].split(":")[0] for r in records if r["status"] != "converted")),
        "parallelizable_fraction": round(len(with_blocks) / n, 4) if n else 0.0,
        "blocks_per_example": round(sum(r["scores"]["blocks"] for r in converted) / len(converted), 3) if converted else 0.0,
        "branches_per_example": round(sum(r["scores"]["branches"] for r in converted) / len(converted), 3) if converted else 0.0,
        "collective_blocks": sum(r["scores"].get("collective", 0) for r in converted),
        "selective_blocks": sum(r["scores"].get("selective", 0) for r in converted),
        "mean_depth": round(sum(r["scores"]["depth"] for r in converted) / len(converted), 3) if converted else 0.0,
        "max_depth": max((r["scores"]["depth"] for r in converted), default=0),
    }


def format_summary(summary: dict) -> str:
    """The closing summary as a few readable lines."""
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary["rejected_by_reason"].items())) or "none"
    return (
        f"converted {summary['converted']}/{summary['records']}, rejected {summary['rejected']} ({reasons})\n"
        f"parallelizable fraction {summary['parallelizable_fraction']:.3f}, blocks per example {summary['blocks_per_example']}, "
        f"branches per example {summary['branches_per_example']}, nesting depth mean {summary['mean_depth']} max {summary['max_depth']}, "
        f"blocks collective {summary['collective_blocks']} / selective {summary['selective_blocks']}"
    )
