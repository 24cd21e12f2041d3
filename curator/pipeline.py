"""Curate a JSONL file of sequential chains into Multiverse responses: plan, render, validate, retry, write.

Output lines are `{id, status: converted|rejected, multiverse, reason, scores}`. The output is
resumable: every record is written whole with one `write` on an append-only file, so a killed run
(SIGKILL included) leaves at most one torn last line, which the next run cuts off before it skips
the ids already done. No id is written twice: a run holds an exclusive OS lock on the output, so a
second run onto the same file is refused. The output is never the input, and a file that is not a
curate output is refused untouched. A backend that cannot be reached is not a verdict on a record:
the run stops with `BackendUnavailable`, the records not done stay pending, and a rerun retries them.

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

from modeling_multiverse.structure import TAGS, split_tags
from runtime.jsonl import JsonlError, iter_jsonl
from runtime.paths import same_path

from .backends import BackendError, BackendUnavailable
from .plan import Plan, iter_blocks, render_response, split_answer, split_chain
from .rules import RulesStructurer
from .stages import LLMStructurer, StageError
from .validate import DEFAULT_MIN_COVERAGE, validate_response

REQUIRED_FIELDS = ("id", "sequential")


class Structurer(Protocol):
    def plan(self, steps: Sequence[str], question: str = "", **kwargs) -> Plan: ...


def read_problems(path: str | os.PathLike) -> list[dict]:
    """Input records (integer ids read as strings); a bad one raises `JsonlError` naming its file and line."""
    rows, seen = [], {}
    for number, row in iter_jsonl(path):
        if isinstance(row.get("id"), int) and not isinstance(row["id"], bool):
            row["id"] = str(row["id"])
        missing = [k for k in REQUIRED_FIELDS if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise JsonlError(path, number, f"missing or empty field(s) {missing} (each must be a non-empty string)")
        if row["id"] in seen:
            raise JsonlError(path, number, f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
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
    tags = [piece for piece in split_tags(record["sequential"]) if piece in TAGS]
    if tags:  # the chain becomes the response, where a tag is structure: it cannot hold one as text
        return {
            "id": record["id"],
            "status": "rejected",
            "multiverse": None,
            "reason": f"tags: the chain contains the tag text {tags[0]}",
            "scores": {"attempts": 0},
        }
    think, answer = split_answer(split_chain(record["sequential"]))
    deterministic = isinstance(structurer, RulesStructurer)  # the same input gives the same plan: no retries
    reason, scores = None, {}
    attempts = 1 if deterministic else retries + 1
    for attempt in range(1, attempts + 1):
        try:
            plan = (
                structurer.plan(think, question) if deterministic else structurer.plan(think, question, feedback=reason)
            )
        except StageError as err:
            reason = f"stage: {err}"
            continue
        except BackendUnavailable:
            raise  # the server, not the record: it stays pending
        except BackendError as err:
            reason = f"backend: {err}"
            break
        if not any(True for _ in iter_blocks(plan)) and not keep_sequential:
            reason = "no_parallel: no independent steps found"
            continue
        response = render_response(plan, answer)
        verdict = validate_response(response, record["sequential"], question, min_coverage)
        kinds = Counter(block.kind for block, _ in iter_blocks(plan))
        scores = {
            **verdict.scores,
            "collective": kinds["collective"],
            "selective": kinds["selective"],
            "attempts": attempt,
        }
        if verdict.ok:
            return {"id": record["id"], "status": "converted", "multiverse": response, "reason": None, "scores": scores}
        reason = verdict.reason
    return {
        "id": record["id"],
        "status": "rejected",
        "multiverse": None,
        "reason": reason,
        "scores": {**scores, "attempts": attempt},
    }


RECORD_START = b'{"id": '  # how every output line begins (`_append` writes the id first)


def read_curated(path: str | os.PathLike, *, torn_tail: bool = False) -> dict[str, dict]:
    """The curated records of an output file by id (the first record of an id wins, as a resumed run keeps it).

    Raises `JsonlError` at the first line that is not a curated record.
    """
    done: dict[str, dict] = {}
    for number, record in iter_jsonl(path, torn_tail=torn_tail):
        if not isinstance(record.get("id"), str) or record.get("status") not in ("converted", "rejected"):
            raise JsonlError(
                path, number, "not a curated record ({id, status, ...}); refusing to use this file as curate output"
            )
        done.setdefault(record["id"], record)
    return done


def recover_output(path: str | os.PathLike, fd: int | None = None) -> dict[str, dict]:
    """Finished records of an earlier run, by id. A torn last line (a killed write) is cut off the file.

    `fd` is the caller's open (and locked) descriptor of `path`, used for the repair; without one the file
    is opened for it. A last record that is whole but lacks its newline gets one; any other unfinished
    last line is refused, the file left unchanged.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return {}
    done = read_curated(path, torn_tail=True)
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    tail = data[end:]
    if not tail.strip():
        return done
    own = fd is None
    fd = os.open(path, os.O_WRONLY | os.O_APPEND) if own else fd
    try:
        try:
            whole = isinstance(json.loads(tail), dict)
        except (json.JSONDecodeError, UnicodeDecodeError):
            whole = False
        if whole:  # read_curated checked it: a complete record whose newline was never written
            os.write(fd, b"\n")
        elif tail.startswith(RECORD_START) or RECORD_START.startswith(tail):
            os.ftruncate(fd, end)
        else:
            line = data.count(b"\n") + 1
            raise JsonlError(
                path, line, "not a curated record (an unfinished line); refusing to use this file as curate output"
            )
    finally:
        if own:
            os.close(fd)
    return done


class OutputBusyError(OSError):
    """Another run holds the lock on the output file."""


def _lock(fd: int, path: os.PathLike) -> None:
    """An exclusive, non-blocking OS lock on the output; released when `fd` is closed (also by a killed run)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        def lock() -> None:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        def lock() -> None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        lock()
    except OSError:
        raise OutputBusyError(
            f"{path}: another `multiverse curate` run is writing this file; wait for it or pick another --output"
        ) from None


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

        return LLMStructurer(
            TransformersBackend(options.pop("model")), **({"max_depth": max_depth} if max_depth else {})
        )
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
    if Path(output).is_dir():
        raise IsADirectoryError(f"--output {output}: is a folder, expected a JSONL file")
    if same_path(input, output):
        raise ValueError(f"--output {output} is the input file; curated records go to a file of their own")
    structurer = structurer or make_structurer(backend, **backend_options)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(output, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    failure: BackendUnavailable | None = None

    def work(record: dict) -> dict:
        return curate_record(
            record, structurer, retries=retries, min_coverage=min_coverage, keep_sequential=keep_sequential
        )

    try:
        _lock(fd, output)
        done = recover_output(output, fd)
        todo = [p for p in problems if p["id"] not in done]
        with tqdm(total=len(problems), initial=len(problems) - len(todo), desc="curate", disable=not progress) as bar:
            if workers <= 1:
                for record in todo:
                    try:
                        result = work(record)
                    except BackendUnavailable as err:
                        failure = err
                        break
                    _append(fd, result)
                    done[result["id"]] = result
                    bar.update()
            else:
                with ThreadPoolExecutor(workers) as pool:
                    futures = [pool.submit(work, r) for r in todo]
                    for future in as_completed(futures):
                        if future.cancelled():
                            continue
                        try:
                            result = future.result()
                        except BackendUnavailable as err:
                            failure = failure or err
                            for other in futures:  # the server is down: start nothing more
                                other.cancel()
                            continue
                        _append(fd, result)  # only this thread writes: lines never interleave
                        done[result["id"]] = result
                        bar.update()
    finally:
        os.close(fd)
    if failure is not None:
        pending = sum(1 for p in problems if p["id"] not in done)
        raise BackendUnavailable(
            f"the backend failed ({failure}); {pending} of {len(problems)} records left pending in {output}: "
            "rerun to retry them"
        )
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
        "blocks_per_example": (
            round(sum(r["scores"]["blocks"] for r in converted) / len(converted), 3) if converted else 0.0
        ),
        "branches_per_example": (
            round(sum(r["scores"]["branches"] for r in converted) / len(converted), 3) if converted else 0.0
        ),
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
        f"parallelizable fraction {summary['parallelizable_fraction']:.3f}, "
        f"blocks per example {summary['blocks_per_example']}, "
        f"branches per example {summary['branches_per_example']}, "
        f"nesting depth mean {summary['mean_depth']} max {summary['max_depth']}, "
        f"blocks collective {summary['collective_blocks']} / selective {summary['selective_blocks']}"
    )
