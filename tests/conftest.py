import os
import platform
import sys
from pathlib import Path

# The suite runs as on an AVX2-only CPU whatever x86 CPU it is on (issue 11): `--precision auto` picks fp32, so no
# test trains or decodes in bf16, and its timings hold for the slowest machine. The variables are
# `precision.AVX2_ONLY` (test_precision.py checks); they act only if set before torch is first imported, as here.
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
if platform.machine().lower() in ("x86_64", "amd64"):
    for name, value in AVX2.items():
        os.environ.setdefault(name, value)

import pytest  # noqa: E402  (nothing here imports torch: hub_kernels/conftest.py must see Triton unimported)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"../shared is missing beside the checkout ({SHARED})"
    return SHARED


@pytest.fixture(scope="session")
def converted_smollm2(tmp_path_factory) -> Path:
    """The embedded default (SmolLM2-135M-Instruct) converted once per test session."""
    from multiverse.convert import convert

    return convert("smollm2", tmp_path_factory.mktemp("embedded") / "smollm2-multiverse")
