"""Tensor-parallel fork/merge decoding: 2 real torchrun processes (gloo, CPU) against one process
(`benchmarks/tp_check.py --dry-run`), and `multiverse generate` under torchrun.

The tiny Qwen2-shaped model has 4 attention heads and 2 key/value heads, so each process holds 2 and 1 of
them: the engine's attention (`decode_attention.py`) runs on local heads, the all-reduces and the gathered
head give both processes the full logits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def test_an_idle_engine_steps_without_a_forward_pass(model_dir):
    """`LockstepEngine`'s heartbeat on an idle server is an empty step: nothing runs, nothing is computed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_multiverse.serving import ContinuousEngine

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    engine = ContinuousEngine(model, AutoTokenizer.from_pretrained(model_dir))
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    seen = []
    assert engine.step(boundary=lambda: seen.append(1)) == [] and engine.step() == []
    assert calls == [] and seen == [1]


def test_lockstep_engine_serves_like_one_process(model_dir, tmp_path):
    """Requests reach rank 0 only (a server): staggered, threaded, cancelled and sampled requests under
    `LockstepEngine` give both processes the same tokens, and the greedy and seeded ones those of one process."""
    from lockstep_worker import AFTER_RESET, CANCEL, requests
    from test_engine_continuous import alone
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_multiverse.serving import ContinuousEngine

    out = tmp_path / "lockstep.json"
    result = torchrun([str(ROOT / "tests" / "lockstep_worker.py"), str(model_dir), str(out)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    split = {int(k): v for k, v in json.loads(out.read_text()).items()}
    follower = {r["id"]: r for r in json.loads(Path(f"{out}.rank1").read_text())}
    assert sorted(split) == list(range(AFTER_RESET + 1)) and len(follower) == len(split)
    for k, got in split.items():  # rank 1 ran every request, under rank 0's id, to the same tokens and steps
        assert got == follower[got["id"]], k
        assert got["finished"] and got["cancelled"] == (k == CANCEL[0]), k

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    specs = requests(tokenizer)
    for k, spec in enumerate(specs):
        if spec.get("do_sample") and spec.get("seed") is None:
            continue  # unseeded: only the two processes can agree (above)
        engine = ContinuousEngine(model, tokenizer)
        single = engine.add_request(**spec)
        engine.run_until_done()
        want = single.response_ids
        if k == CANCEL[0]:  # left mid-decode: a strict prefix of what it gets alone
            cut = split[k]["response"]
            assert 0 < len(cut) < len(want) and want[: len(cut)] == cut
            continue
        assert split[k]["response"] == want, k
        if not spec.get("do_sample"):
            kwargs = {name: spec[name] for name in ("logits_processor", "max_new_tokens") if name in spec}
            assert alone(model, tokenizer, spec["input_ids"], **kwargs)[0] == want, k
    assert split[0]["steps"] < len(split[0]["response"])  # the forced skeleton forked and merged


def _children(pid: int) -> list[int]:
    """The processes `pid` started (Linux), e.g. torchrun's workers."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _served(command: list[str], port: int, log: Path) -> subprocess.Popen:
    """A server in a session of its own (a signal can reach its whole group), once it answers /health."""
    from test_serve import environment, health

    env = dict(environment(), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                               start_new_session=True)
    for _ in range(360):  # up to 3 minutes: torch imports and model loads on a busy machine
        if process.poll() is not None or health(f"http://127.0.0.1:{port}") is not None:
            break
        time.sleep(0.5)
    if process.poll() is not None or health(f"http://127.0.0.1:{port}") is None:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"the server did not start:\n{log.read_text()[-3000:]}")
    return process


def _greedy_answer(port: int) -> str:
    from test_serve import QUESTION, client

    answer = client(f"http://127.0.0.1:{port}").chat.completions.create(
        model="multiverse", messages=QUESTION, max_tokens=40, temperature=0
    )
    return answer.choices[0].message.content


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_serve_under_torchrun_answers_like_one_process_and_stops(model_dir, tmp_path, stop):
    """`torchrun -m multiverse.cli serve`: rank 0 answers a greedy chat with the one-process text; SIGTERM to
    torchrun (a process manager) or SIGINT to the whole group (Ctrl-C) stops both processes cleanly."""
    from test_serve import free_port

    serve = ["-m", "multiverse.cli", "serve", "--model", str(model_dir), "--precision", "fp32", "--port"]
    port = free_port()
    single = _served([sys.executable, *serve, str(port)], port, tmp_path / "single.log")
    try:
        want = _greedy_answer(port)
    finally:
        os.killpg(single.pid, signal.SIGTERM)
        single.wait(timeout=60)
    port = free_port()
    log = tmp_path / "tp.log"
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    process = _served([*run, *serve, str(port)], port, log)
    workers = _children(process.pid)
    try:
        assert len(workers) == 2
        assert _greedy_answer(port) == want
        assert "tensor parallel over 2 processes" in log.read_text()
        if stop == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=90)
        for _ in range(60):
            if not any(Path(f"/proc/{pid}").exists() for pid in workers):
                break
            time.sleep(0.5)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers), log.read_text()[-3000:]
        text = log.read_text()
        # no worker needed killing, and the one traceback is torchrun's own report of the signal it got
        own = text.count("multiprocessing.api.SignalException")
        assert "forcefully" not in text and text.count("Traceback") == own, text[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
