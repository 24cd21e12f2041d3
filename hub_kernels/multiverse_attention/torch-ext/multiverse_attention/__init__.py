"""Multiverse attention kernels (Triton): structured prefill and branch (shared-prefix) decode.

Load with the `kernels` package, locally or from the Hub:
    >>> from kernels import get_local_kernel  # doctest: +SKIP
    >>> multiverse_attention = get_local_kernel(Path("hub_kernels/multiverse_attention/build"))  # doctest: +SKIP
    >>> out = multiverse_attention.structured_prefill_attention(q, k, v, forbid_lo, forbid_hi)  # doctest: +SKIP
"""

from . import layers, reference
from .decode import branch_decode_attention, tree_intervals
from .prefill import structured_prefill_attention

__all__ = ["branch_decode_attention", "layers", "reference", "structured_prefill_attention", "tree_intervals"]
