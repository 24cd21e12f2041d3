"""Run Triton kernels in Triton's interpreter when there is no GPU.

The switch is read when `triton.language` is imported, and importing the project (torch's flex
attention) imports Triton, so it is set here: pytest loads this file before collecting any test.
"""

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/tiny.py
