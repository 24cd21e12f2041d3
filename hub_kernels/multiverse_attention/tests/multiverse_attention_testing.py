"""What the kernel tests share besides fixtures: whether a GPU is here, and the mark for GPU-only tests."""

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
