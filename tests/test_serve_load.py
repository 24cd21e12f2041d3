"""`benchmarks/serve_load.py`: bad arguments, and a tiny real run (loopback servers, a tiny random model).

The tiny run drives `multiverse serve` with C = 1 and 2 streaming `openai` clients, the static batched
`generate()` on the same prompts, a plain Llama folder under `transformers serve --continuous-batching`, and
the fault mode (clients leaving mid-stream, malformed bodies) with all its checks passing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "serve_load.py"


def run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent"], "--model /nonexistent is not a model folder"),
        (["--model", ".", "--concurrency", "1,0"], "every value must be an integer >= 1"),
        (["--model", ".", "--requests", "x"], "'x' is not an integer"),
        (["--model", ".", "--disconnect-share", "1.5"], "1.5 is not in [0, 1]"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    result = run(args, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("serve_load: ") and message in lines[0], lines


@pytest.mark.parametrize("target", ["folder", "missing/report.json"])
def test_a_json_path_that_cannot_be_written_is_refused_before_the_run(tmp_path, target):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "folder").mkdir()
    result = run(["--model", str(tmp_path / "model"), "--json", str(tmp_path / target)], timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--json" in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "model"]


@pytest.mark.slow
def test_a_tiny_run_measures_both_servers_and_passes_the_fault_checks(tmp_path):
    model, tokenizer = tiny_model("qwen2", seed=3)
    model.save_pretrained(tmp_path / "multiverse")
    tokenizer.save_pretrained(tmp_path / "multiverse")
    from transformers import LlamaConfig, LlamaForCausalLM

    plain_tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(plain_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=plain_tokenizer.eos_token_id, pad_token_id=plain_tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "plain")
    plain_tokenizer.save_pretrained(tmp_path / "plain")
    out = tmp_path / "load.json"
    result = run([
        "--model", str(tmp_path / "multiverse"), "--baseline", str(tmp_path / "plain"), "--requests", "4",
        "--concurrency", "1,2", "--max-tokens", "12", "--static-batch", "2", "--max-running", "2",
        "--max-waiting", "2", "--faults", "--fault-requests", "16", "--fault-concurrency", "4",
        "--malformed-share", "0.25", "--disconnect-share", "0.25", "--baseline-cache-tokens", "2048",
        "--json", str(out),
    ])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    ours = report["servers"]["multiverse serve"]
    assert set(ours) == {"1", "2"}
    for point in ours.values():
        assert point["answered"] == 4 and point["failed"] == 0 and point["tokens_per_s"] > 0
        assert 0 < point["ttft_p50_s"] <= point["ttft_p95_s"] <= point["latency_p95_s"]
    static = report["static generate"]
    assert static["answered"] == 4 and static["same_text_as_server"] == 4, "greedy fp32: batched == served"
    baseline = report["servers"]["transformers serve --continuous-batching"]
    assert all(point["answered"] == 4 and point["failed"] == 0 for point in baseline.values())
    faults = report["faults"]
    assert all(faults["checks"].values()) and faults["malformed"] > 0 and faults["left"] > 0
    assert faults["health_end"]["running"] == 0 and faults["health_end"]["invalid"] == faults["malformed"]
    assert "C=2" in result.stdout and "transformers serve --continuous-batching" in result.stdout
