"""`multiverse eval` on 2 real torchrun processes (gloo, CPU): data parallel and tensor parallel equal one process."""

from __future__ import annotations

import json

import pytest
from test_tensor_parallel import torchrun
from tiny import tiny_model

from evaluation.distributed import batch_shard, merge_shards
from multiverse.cli import main

PER_PROBLEM = ("id", "answer", "predicted", "correct", "well_formed", "finished", "generated_tokens", "decode_steps",
               "response")
"""The fields of a per-problem result that depend on the decoded tokens (not on timing)."""


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny fp32 Qwen2-shaped model folder and five built-in problems (`multiverse data synth`)."""
    folder = tmp_path_factory.mktemp("dp")
    model, tokenizer = tiny_model("qwen2", layers=2, seed=5)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    assert main(["data", "synth", "--n", "5", "--seed", "3", "--out", str(folder / "data.jsonl")]) == 0
    return folder


def eval_args(task, output) -> list[str]:
    # batch size 2 over 5 problems: batches [0 1] [2 3] [4], so rank 0 takes 3 problems and rank 1 takes 2
    return ["eval", "--model", str(task / "model"), "--data", str(task / "data.jsonl"), "--max-new-tokens", "20",
            "--batch-size", "2", "--precision", "fp32", "--device", "cpu", "--output", str(output)]


@pytest.fixture(scope="module")
def single(task):
    assert main(eval_args(task, task / "single.json")) == 0
    return json.loads((task / "single.json").read_text())


@pytest.mark.parametrize("parallel", ["data", "tensor"])
def test_two_processes_write_one_report_equal_to_one_process(task, single, parallel, tmp_path):
    output = tmp_path / "report.json"
    run = torchrun(["-m", "multiverse.cli", *eval_args(task, output), "--parallel", parallel])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("report written to") == 1 and run.stdout.count("problems ") == 1  # rank 0 alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    report = json.loads(output.read_text())
    assert report[f"{parallel}_parallel"] == 2 and report["n"] == single["n"] == 5
    ids = [json.loads(line)["id"] for line in (task / "data.jsonl").read_text().splitlines()]
    assert [r["id"] for r in report["records"]] == ids  # the file's order, every problem once
    for mine, theirs in zip(report["records"], single["records"]):
        assert {k: mine[k] for k in PER_PROBLEM} == {k: theirs[k] for k in PER_PROBLEM}
    for field in ("accuracy", "well_formed", "finished", "parallelism", "mean_tokens", "mean_decode_steps"):
        assert report[field] == single[field]


def test_batches_are_dealt_round_robin_and_merged_back():
    shards = [batch_shard(7, 2, rank, 3) for rank in range(3)]
    assert shards == [[0, 1, 6], [2, 3], [4, 5]]
    assert batch_shard(1, 4, 1, 2) == []  # more processes than batches: the extra process evaluates nothing
    results = [(indices, [f"r{i}" for i in indices]) for indices in shards]
    assert merge_shards(results, 7) == [f"r{i}" for i in range(7)]
    with pytest.raises(ValueError, match="problem 5 was evaluated by no process"):
        merge_shards(results[:2] + [([4], ["r4"])], 7)
    with pytest.raises(ValueError, match="problem 0 was evaluated twice"):
        merge_shards(results + [([0], ["again"])], 7)
    with pytest.raises(ValueError, match="rank in 0..1"):
        batch_shard(4, 2, 2, 2)
