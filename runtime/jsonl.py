"""The one JSONL reader of the project: one JSON object per line, every error naming the file and line.

Used by the curator (inputs, its resumable output, the export), `multiverse eval` and `multiverse inspect`.
Not part of the remote code: the modeling files do not import it, so it is not shipped with a model.

Example:
    >>> for line, record in iter_jsonl("problems.jsonl"):  # doctest: +SKIP
    ...     print(line, record["id"])
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path


class JsonlError(ValueError):
    """A bad line of a JSONL file. The message reads `FILE:LINE: problem`; `path` and `line` say where."""

    def __init__(self, path: str | os.PathLike, line: int, problem: str):
        super().__init__(f"{path}:{line}: {problem}")
        self.path = Path(path)
        self.line = line


def check_file(path: str | os.PathLike) -> Path:
    """`path` as a Path; FileNotFoundError / IsADirectoryError with a one-line message otherwise."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, expected a JSONL file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def _parse(path: Path, number: int, raw: bytes) -> dict:
    try:
        record = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))  # a BOM some editors write
    except UnicodeDecodeError as err:
        raise JsonlError(path, number, f"not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise JsonlError(path, number, f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise JsonlError(path, number, f"expected a JSON object, got {type(record).__name__}")
    return record


def iter_jsonl(path: str | os.PathLike, *, torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every non-blank line of `path`.

    Raises `JsonlError` at the first line that is not a JSON object. With `torn_tail=True` (an append-only
    log that a killed writer may have cut short) a last line without its newline that does not parse is
    skipped instead: it is a record whose write never finished.
    """
    path = check_file(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            if torn_tail and not raw.endswith(b"\n"):
                try:
                    record = _parse(path, number, raw)
                except JsonlError:
                    return
                yield number, record
                return
            yield number, _parse(path, number, raw)
