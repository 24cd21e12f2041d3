"""The benchmark behind gpu_check.sh runs end to end at tiny sizes on CPU, so its one GPU run cannot
trip over a code path that was never executed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark.py"


def test_kernel_benchmark_cpu_smoke():
    # A process of its own: the interpreter switch must be on before Triton is imported, GPU or not.
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, str(BENCHMARK), "--cpu-smoke"], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    table = run.stdout.split("\n\n")[-2]
    rows = [line for line in table.splitlines() if line.startswith("| decode") or line.startswith("| prefill")]
    assert len(rows) == 3
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[2]) > 0  # ours, sdpa with the dense mask
        assert float(cells[-1]) < 1e-4  # max |ours - sdpa|
    # flex has no backward on CPU: the only error the smoke run may show
    assert all("NotImplementedError" in error for error in re.findall(r"error: [^|]*", table))
