"""benchmarks/gpu_check.sh --dry-run: the GPU script's plan, flags and steps on tiny CPU shapes, and its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_report import read_steps  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def gpu_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], check=False, capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_dry_run_checks_every_script_and_writes_one_json_and_one_table(tmp_path):
    out = tmp_path / "gpu"
    run = gpu_check("--dry-run", "--out", str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for script in ("engine_gpu.py", "gpu_exactness.py", "tp_check.py", "gpu_report.py"):
        assert f"ok: benchmarks/{script} takes" in run.stdout  # exists, and its --help lists the flags given
    report = json.loads((out / "gpu_check.json").read_text())
    status = {s["step"]: s["status"] for s in report["steps"]}
    assert status == {"engine": "0", "exactness": "0", "tp": "0", "serve_load": "skipped"} and report["passed"]
    exactness = report["exactness"]
    assert exactness["fp32_invariant"] and exactness["results"]["nested"]["fp32_argmax_mismatches"] == 0
    assert report["tp"]["same_tokens"] and report["tp"]["tp_size"] == 1 and report["tp"]["via"] == "torch"
    assert report["tp"]["shards"], "N = 1 still runs the sharded (DTensor) path"
    assert report["engine"]["hardware"] == "CPU (dry run)"
    markdown = (out / "gpu_check.md").read_text()
    headings = (
        "| engine | 0 |",
        "## exactness",
        "fp32 invariant: **PASS**",
        "## tp",
        "| 1 | torch | gloo | cpu | True",
    )
    for heading in headings:
        assert heading in markdown


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--tp", "0"], "--tp must be a positive integer, got 0"), (["--bogus"], "unknown argument --bogus"),
     (["--wheels", "/nonexistent/wheels"], "--wheels /nonexistent/wheels: no such folder")],
)
def test_bad_flags_are_refused_in_one_line(args, message):
    run = gpu_check("--dry-run", *args, timeout=60)
    suffix = " (see --help)" if "bogus" in message else ""
    assert run.returncode == 2 and run.stderr.strip() == f"gpu_check.sh: {message}{suffix}"


def test_report_names_a_malformed_steps_line(tmp_path):
    (tmp_path / "steps.tsv").write_text("engine\t0\t12\tpython x\nbroken line\n")
    with pytest.raises(ValueError, match=r"steps.tsv:2: expected 4 tab-separated fields"):
        read_steps(tmp_path)
