"""Export: prompt/completion splits (Multiverse and its autoregressive twin), save_to_disk, parquet, card."""

from __future__ import annotations

import datasets
import pytest

from curator.cli import main as curate_main
from curator.export import export_file, to_datasets
from curator.synth import synthesize, write_jsonl
from modeling_multiverse import PARALLEL_INSTRUCTION, parse_text, remove_tags


@pytest.fixture
def curated(tmp_path):
    problems, output = tmp_path / "problems.jsonl", tmp_path / "curated.jsonl"
    write_jsonl(synthesize(30, seed=5, nesting=0.3), problems)
    assert curate_main(["--input", str(problems), "--output", str(output), "--no-progress"]) == 0
    return problems, output


def test_splits_share_prompts_and_differ_in_completions(curated):
    problems, output = curated
    data = to_datasets(output, problems)
    mv, ar = data["multiverse"], data["autoregressive"]
    assert len(mv) == len(ar) == 30 and mv["id"] == ar["id"]
    by_id = {r["id"]: r for r in synthesize(30, seed=5, nesting=0.3)}
    for m, a in zip(mv, ar):
        assert (
            m["prompt"]
            == a["prompt"]
            == [{"role": "user", "content": f"{by_id[m['id']]['question']} {PARALLEL_INSTRUCTION}"}]
        )
        response = m["completion"][0]["content"]
        assert m["completion"][0]["role"] == "assistant" and parse_text(response, require_think=True).blocks
        assert a["completion"][0]["content"] == by_id[m["id"]]["sequential"]
    flat = to_datasets(output, problems, ar_source="flattened")["autoregressive"][0]["completion"][0]["content"]
    assert flat == remove_tags(mv[0]["completion"][0]["content"]).strip() and "<" not in flat


def test_export_writes_disk_parquet_and_card(curated, tmp_path):
    problems, output = curated
    export_file(output, problems, tmp_path / "export")
    reloaded = datasets.load_from_disk(str(tmp_path / "export" / "dataset"))
    assert set(reloaded) == {"multiverse", "autoregressive"} and len(reloaded["multiverse"]) == 30
    parquet = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "export" / "multiverse.parquet"), split="train"
    )
    assert parquet["id"] == reloaded["multiverse"]["id"]
    card = (tmp_path / "export" / "README.md").read_text()
    assert card.startswith("---") and "converted: 30" in card


def test_export_names_an_unknown_id(curated, tmp_path):
    problems, output = curated
    other = tmp_path / "other.jsonl"
    write_jsonl(synthesize(3, seed=99), other)
    with pytest.raises(ValueError, match="id 'synth-5-00000' is not in"):
        to_datasets(output, other)
