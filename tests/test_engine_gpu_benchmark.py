"""benchmarks/engine_gpu.py --dry-run: the GPU benchmark's code path on tiny shapes on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from engine_gpu import main  # noqa: E402


def test_dry_run_writes_every_measure(tmp_path):
    assert main(["--dry-run", "--workloads", "nested", "--batches", "2", "--out", str(tmp_path / "gpu")]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["hardware"] == "CPU (dry run)"
    (name, result), = report["results"].items()
    assert name.startswith("tiny|nested") and result["batch"] == 2
    assert result["same_tokens_b_c"], "parallelism changed the tokens"
    assert 1 < result["structural_ideal"] < 3
    for key in ("a_hf_generate", "b_engine_sequential", "c_engine"):
        run = result[key]
        assert run["tok_s"] > 0 and run["forward_calls"] > 0 and run["forward_seconds"] <= run["seconds"]
    assert result["c_engine"]["forward_calls"] < result["b_engine_sequential"]["forward_calls"]
    assert "| tiny | nested" in (tmp_path / "gpu.md").read_text() and (tmp_path / "gpu.png").stat().st_size > 0
