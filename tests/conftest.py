import sys
from pathlib import Path

import pytest

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
