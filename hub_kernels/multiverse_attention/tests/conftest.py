"""Shared fixtures: the kernel, loaded the way users load it (`kernels.get_local_kernel`), and the device.

Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; the switch must be set
before the kernel module is imported, so it is set here, at collection.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
from multiverse_attention_testing import HAS_CUDA

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

KERNEL_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(KERNEL_ROOT))


@pytest.fixture(scope="session")
def kernel_build(tmp_path_factory) -> Path:
    """A fresh noarch `build/` tree of this kernel."""
    from build_noarch import build_noarch

    return build_noarch(tmp_path_factory.mktemp("multiverse-attention"))


@pytest.fixture(scope="session")
def kernel(kernel_build: Path) -> ModuleType:
    pytest.importorskip("triton")
    from kernels import get_local_kernel

    return get_local_kernel(kernel_build)


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if HAS_CUDA else "cpu"
