"""Resume after a real SIGKILL (the acceptance run), torn lines, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curator.pipeline import curate_file, recover_output
from curator.synth import synthesize, write_jsonl
from modeling_multiverse import parse_text

ROOT = Path(__file__).resolve().parents[1]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _curate_command(problems: Path, output: Path) -> list[str]:
    code = "import sys; from multiverse.cli import main; sys.exit(main(sys.argv[1:]))"
    return [
        sys.executable, "-c", code,
        "curate", "--input", str(problems), "--output", str(output), "--backend", "rules", "--no-progress",
    ]


def test_acceptance_sigkill_then_rerun(tmp_path):
    problems, output = tmp_path / "problems.jsonl", tmp_path / "curated.jsonl"
    write_jsonl(synthesize(400, seed=7), problems)  # what `multiverse data synth --n 400 --seed 7` writes (test_synth)
    ids = [json.loads(line)["id"] for line in problems.read_text().splitlines()]
    process = subprocess.Popen(_curate_command(problems, output), cwd=ROOT)
    while _lines(output) < 120 and process.poll() is None:  # about 30% of the records
        time.sleep(0.001)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written_at_kill = _lines(output)
    assert process.returncode == -signal.SIGKILL
    assert 120 <= written_at_kill < 400, written_at_kill
    rerun = subprocess.run(_curate_command(problems, output), cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "converted" in rerun.stdout

    raw = output.read_bytes()
    assert raw.endswith(b"\n")
    rows = [json.loads(line) for line in raw.decode().splitlines()]  # every line is whole JSON
    assert sorted(r["id"] for r in rows) == sorted(ids)  # every id exactly once
    converted = [r for r in rows if r["status"] == "converted"]
    assert len(converted) >= 0.9 * len(ids)
    for row in converted:
        structure = parse_text(row["multiverse"], require_think=True)  # balanced tags, labels match outlines
        assert structure.blocks
        for block in structure.iter_blocks():
            assert len(block.paths) == len(block.outlines) >= 2
            assert [p.label for p in block.paths] == block.labels


def test_torn_last_line_is_cut_and_redone(tmp_path):
    problems, output = tmp_path / "problems.jsonl", tmp_path / "curated.jsonl"
    write_jsonl(synthesize(20, seed=1), problems)
    curate_file(problems, output, progress=False)
    lines = output.read_bytes().splitlines(keepends=True)
    torn = lines[-1][: len(lines[-1]) // 2]  # what a write cut by SIGKILL would leave
    output.write_bytes(b"".join(lines[:15]) + torn)
    assert len(recover_output(output)) == 15
    assert output.read_bytes() == b"".join(lines[:15])  # the torn piece is gone
    summary = curate_file(problems, output, progress=False)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 20 == summary["records"] and len({r["id"] for r in rows}) == 20


def test_bad_input_is_named_and_nothing_is_written(tmp_path):
    problems, output = tmp_path / "problems.jsonl", tmp_path / "curated.jsonl"
    problems.write_text('{"id": "a", "sequential": "x = 1"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"problems.jsonl:2: missing or empty field\(s\) \['sequential'\]"):
        curate_file(problems, output, progress=False)
    problems.write_text('{"id": "a", "sequential": "x = 1"}\n{"id": "a", "sequential": "y = 2"}\n')
    with pytest.raises(ValueError, match="problems.jsonl:2: duplicate id 'a' \\(first on line 1\\)"):
        curate_file(problems, output, progress=False)
    problems.write_text('{"id": "a", "sequential": "x = 1"\n')
    with pytest.raises(ValueError, match="problems.jsonl:1: not valid JSON"):
        curate_file(problems, output, progress=False)
    assert not output.exists()


def test_foreign_output_file_is_refused(tmp_path):
    problems, output = tmp_path / "problems.jsonl", tmp_path / "curated.jsonl"
    write_jsonl(synthesize(3, seed=1), problems)
    output.write_text("not json\n")
    with pytest.raises(ValueError, match="curated.jsonl:1: not valid JSON"):
        curate_file(problems, output, progress=False)
    assert output.read_text() == "not json\n"
