"""`multiverse eval` on 2 real torchrun processes (gloo, CPU): data parallel and tensor parallel equal one process."""

from __future__ import annotations

import json
import re

import pytest
from test_tensor_parallel import torchrun
from tiny import tiny_model

from evaluation.cli import parse_args
from evaluation.distributed import batch_shard, merge_shards
from evaluation.sampling import majority, problem_result, problem_seed
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


SAMPLED = ["--num-samples", "3", "--temperature", "1.0", "--seed", "11"]


def sample_texts(report: dict) -> list[list[str]]:
    return [[s["response"] for s in r["samples"]] for r in report["records"]]


def test_sampled_eval_pass_and_maj_at_k_equal_in_both_modes(task, tmp_path):
    """--num-samples k: seeded per problem, so 2 data-parallel processes write the samples one process writes."""
    assert main([*eval_args(task, tmp_path / "single.json"), *SAMPLED]) == 0
    single = json.loads((tmp_path / "single.json").read_text())
    assert single["num_samples"] == 3 and (single["temperature"], single["seed"]) == (1.0, 11)
    texts = sample_texts(single)
    assert all(len(t) == 3 for t in texts) and any(len(set(t)) > 1 for t in texts), "the samples are not samples"
    for record in single["records"]:
        assert record["pass_at_k"] == any(s["correct"] for s in record["samples"])
        assert record["correct"] == sum(s["correct"] for s in record["samples"]) / 3
    assert single["pass_at_k"] == sum(r["pass_at_k"] for r in single["records"]) / 5

    run = torchrun(["-m", "multiverse.cli", *eval_args(task, tmp_path / "dp.json"), *SAMPLED])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "pass@3" in run.stdout and run.stdout.count("maj@3") == 1
    distributed = json.loads((tmp_path / "dp.json").read_text())
    assert distributed["data_parallel"] == 2 and sample_texts(distributed) == texts
    for field in ("pass_at_k", "maj_at_k", "accuracy", "well_formed", "mean_tokens"):
        assert distributed[field] == single[field]

    # another seed, other samples
    assert main([*eval_args(task, tmp_path / "other.json"), *SAMPLED[:-1], "12"]) == 0
    assert sample_texts(json.loads((tmp_path / "other.json").read_text())) != texts


def test_majority_vote_and_sampling_flags():
    assert majority(["\\frac{1}{2}", "7", "1/2"], "math") == (0, "\\frac{1}{2}")  # equal answers vote together
    assert majority(["4", "5", "5", "4"], "aime") == (0, "4")  # a tie goes to the earliest
    assert majority([None, None], "aime") == (None, None)
    samples = [{"predicted": p, "correct": c, "well_formed": True, "finished": True, "generated_tokens": 4,
                "decode_steps": 2, "parallelism": 2.0, "batch_time_s": 0.1} for p, c in (("5", False), ("4", True),
                                                                                      ("5", False))]
    result = problem_result({"id": "p", "answer": "4", "kind": "aime"}, samples)
    assert result["pass_at_k"] and not result["maj_at_k"] and result["majority_answer"] == "5"
    assert result["correct"] == pytest.approx(1 / 3)
    assert problem_seed(0, "a") == problem_seed(0, "a") != problem_seed(0, "b")
    for flags, message in (
        (["--num-samples", "0"], "--num-samples must be >= 1, got 0"),
        (["--num-samples", "4", "--temperature", "0"], "needs a finite --temperature > 0, got 0.0"),
        (["--temperature", "0.5"], "--temperature and --top-p need --num-samples > 1"),
        (["--num-samples", "2", "--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_args(["--model", "m", "--data", "d", "--device", "cpu", *flags])
