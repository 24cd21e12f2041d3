"""`multiverse inspect` on the real responses of a Multiverse model in ../shared/traces."""

import json
import subprocess
import sys

import pytest
from reference import reference_positions
from tiny import example_response, tiny_model

from modeling_multiverse import StructureError, parse_text
from multiverse.inspect_cmd import main

TRACES = "traces/math500_multiverse_responses.jsonl"


@pytest.fixture(scope="module")
def trace_reports(shared_dir):
    """`multiverse inspect --json` run as a user would, on the default (embedded) tokenizer."""
    done = subprocess.run(
        [sys.executable, "-m", "multiverse.cli", "inspect", str(shared_dir / TRACES), "--json"],
        capture_output=True, text=True, check=True,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return lines[:-1], lines[-1]["summary"]


def test_every_trace_gets_an_answer_and_most_are_valid(shared_dir, trace_reports):
    reports, summary = trace_reports
    records = [json.loads(line) for line in (shared_dir / TRACES).read_text().splitlines() if line.strip()]
    assert [r["id"] for r in reports] == [r["id"] for r in records]
    assert summary["records"] == len(records) == summary["valid"] + summary["invalid"]
    assert summary["valid_fraction"] >= 0.70
    for report, record in zip(reports, records):
        assert report["tokens"] > 0
        if report["valid"]:
            assert report["error"] is None and report["blocks"] >= 0
            assert report["critical_path_tokens"] <= report["tokens"]
        else:
            assert report["error"].startswith("at token ") and "expected" in report["error"]
            # the text-level parser agrees that the response is malformed
            with pytest.raises(StructureError):
                parse_text(record["response"], require_think=True)


def test_structural_ideal_matches_an_independent_computation(shared_dir, trace_reports):
    from modeling_multiverse import TAGS, add_tag_tokens
    from multiverse.embedded import load_embedded_tokenizer

    reports, summary = trace_reports
    tokenizer = load_embedded_tokenizer()
    tag_ids = add_tag_tokens(tokenizer)
    kind_of = {tag_ids[t]: i for i, t in enumerate(TAGS)}
    lines = (shared_dir / TRACES).read_text().splitlines()
    records = {json.loads(line)["id"]: json.loads(line) for line in lines if line.strip()}
    tokens = critical = 0
    for report in reports:
        if not report["valid"]:
            continue
        ids = tokenizer(records[report["id"]]["response"], add_special_tokens=False)["input_ids"]
        kinds = [kind_of.get(i, -1) for i in ids]
        tokens += len(ids)
        critical += max(reference_positions(kinds)) + 1
    assert summary["tokens"] == tokens
    assert summary["structural_ideal"] == pytest.approx(tokens / critical, rel=0.02)


def test_inspect_table_and_bad_input(tmp_path, capsys):
    model, tokenizer = tiny_model()
    tokenizer.save_pretrained(tmp_path / "tok")
    data = tmp_path / "data.jsonl"
    broken = example_response().replace("</Goal>", "", 1)
    data.write_text(
        json.dumps({"id": "good", "text": example_response()}) + "\n" + json.dumps({"id": "bad", "text": broken}) + "\n"
    )
    assert main([str(data), "--field", "text", "--tokenizer", str(tmp_path / "tok")]) == 0
    out = capsys.readouterr().out
    assert "1/2 valid" in out and "good" in out and "found <Path>, expected <Outline> or </Goal>" in out
    with pytest.raises(ValueError, match="no text field 'response'"):
        main([str(data), "--tokenizer", str(tmp_path / "tok")])
    (tmp_path / "junk.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="junk.jsonl:1: not valid JSON"):
        main([str(tmp_path / "junk.jsonl"), "--tokenizer", str(tmp_path / "tok")])
