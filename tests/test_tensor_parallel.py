"""Tensor-parallel fork/merge decoding: 2 real torchrun processes (gloo, CPU) against one process
(`benchmarks/tp_check.py --dry-run`), and `multiverse generate` under torchrun.

The tiny Qwen2-shaped model has 4 attention heads and 2 key/value heads, so each process holds 2 and 1 of
them: the engine's attention (`decode_attention.py`) runs on local heads, the all-reduces and the gathered
head give both processes the full logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_model
from transformers import Qwen2Config

from runtime.distributed import Launch, check_tensor_parallel, tensor_parallel_kwargs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from tp_check import NESTED  # noqa: E402


def torchrun(args: list[str], nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node nproc ARGS` with this checkout importable, one thread per process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    model, tokenizer = tiny_model("qwen2", layers=2, seed=3)
    assert model.config.text_config.num_attention_heads % 2 == 0 and model.config.text_config.num_key_value_heads == 2
    folder = tmp_path_factory.mktemp("tp") / "tiny-qwen2"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("via", ["transformers", "torch"])
def test_two_process_tensor_parallel_equals_one_process(via, tmp_path):
    """transformers' TP (the CLI's path) and torch's `parallelize_module` on the same plan (the fallback)."""
    out = tmp_path / "tp.json"
    run = torchrun([str(ROOT / "benchmarks" / "tp_check.py"), "--dry-run", "--via", via, "--out", str(out)])
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert (report["tp_size"], report["via"], report["backend"], report["device"]) == (2, via, "gloo", "cpu")
    # the model really is split: every attention and MLP projection holds half of its rows or columns
    split = [f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    split += [f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    for name in split:
        full, local = report["shards"][f"model.layers.1.{name}.weight"]
        assert full != local and local[0] * local[1] * 2 == full[0] * full[1], (name, full, local)
    # transformers splits the head over the vocabulary too (`MultiverseForCausalLM._tp_plan`)
    assert ("lm_head.weight" in report["shards"]) == (via == "transformers")
    # forks and merges happened: the nested skeleton's blocks, in fewer steps than tokens
    assert report["forks"] == [NESTED[1]["labels"], ["2.1", "2.2"]]
    assert report["decode_steps"] < report["generated_tokens"]
    # both processes chose exactly the tokens one process chose
    *ranks, single = report["sequences"]
    assert len(ranks) == 2 and all(r == single for r in ranks)
    assert report["same_tokens"] and report["same_stats"]


def test_generate_command_under_torchrun_prints_once_and_equals_one_process(model_dir, capsys):
    from multiverse.cli import main

    args = ["generate", "--model", str(model_dir), "--prompt", "What is 2+2?", "--max-new-tokens", "24"]
    args += ["--precision", "fp32", "--json"]
    run = torchrun(["-m", "multiverse.cli", *args])
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, run.stdout  # rank 0 alone prints
    distributed = json.loads(lines[0])
    assert main(args) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert distributed["tensor_parallel"] == 2 and "tensor_parallel" not in single
    assert distributed["response"] == single["response"] and distributed["generated_tokens"] == 24
    assert distributed["decode_steps"] == single["decode_steps"]


def test_heads_that_do_not_divide_are_refused_in_one_line():
    config = Qwen2Config(num_attention_heads=4, num_key_value_heads=2)
    check_tensor_parallel(config, 2)  # divides: accepted
    with pytest.raises(ValueError, match=r"over 3 processes needs num_attention_heads \(4\) and num_key_value_heads"):
        check_tensor_parallel(config, 3)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        tensor_parallel_kwargs(Launch(0, 4, 0), {"num_attention_heads": 8, "num_key_value_heads": 2})
    assert "distributed_config" in tensor_parallel_kwargs(Launch(0, 2, 0), config)
    assert tensor_parallel_kwargs(Launch(), config) == {}


def test_launch_environment_is_read_and_checked():
    assert Launch.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Launch(1, 2, 1)
    assert Launch.from_env({}).main and not Launch.from_env({}).distributed
    assert Launch(1, 2, 1).device("cuda") == "cuda:1" and Launch().device("cuda") == "cuda"
    with pytest.raises(ValueError, match="RANK 2 is not in 0..WORLD_SIZE-1"):
        Launch.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="must be integers"):
        Launch.from_env({"RANK": "zero", "WORLD_SIZE": "2"})


def test_lockstep_server_calls_equal_one_process(model_dir, tmp_path):
    """Requests reach rank 0 only (a server): `LockstepModel` replays each call, RNG states included, on rank 1."""
    from lockstep_worker import run
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "lockstep.json"
    result = torchrun([str(ROOT / "tests" / "lockstep_worker.py"), str(model_dir), str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    split = json.loads(out.read_text())
    single = run(AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir))
    assert [b["labels"] for b in single[0]["blocks"][0]] == [["1", "2"], ["2.1", "2.2"]]  # forks and merges
    assert single[1]["sequences"] != single[2]["sequences"][:1] and len(single[2]["sequences"]) == 2
    assert split == single  # greedy and sampled: the same tokens, blocks and steps as one process
