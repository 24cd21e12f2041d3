"""Time the Multiverse kernels against sdpa with a dense mask, flex_attention and causal attention.

(a) branch decode: 1/4/8/16 branches x 4K/16K shared prefix, one new token per branch;
(b) structured prefill: 8K/32K tokens with a nested Multiverse structure; plus the training step
(forward + backward) of flex_attention against causal sdpa. Every case also checks the kernel's
output against sdpa with the dense mask. Prints one markdown table and the three target ratios.

Usage:
    python hub_kernels/multiverse_attention/benchmarks/benchmark.py               # CUDA, full sizes
    TRITON_INTERPRET=1 python hub_kernels/multiverse_attention/benchmarks/benchmark.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

KERNEL_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sizes:
    device: str
    dtype: torch.dtype
    heads: int
    kv_heads: int
    head_dim: int
    branches: tuple[int, ...]
    prefixes: tuple[int, ...]
    tokens_per_branch: int
    prefill_lengths: tuple[int, ...]
    reps: int
    compile_flex: bool
    flex_budget_s: float  # flex compiles per shape: past this much elapsed time, flex is left out


GPU = Sizes("cuda", torch.bfloat16, 32, 8, 128, (1, 4, 8, 16), (4096, 16384), 512, (8192, 32768), 20, True, 110.0)
CPU_SMOKE = Sizes("cpu", torch.float32, 4, 2, 16, (1, 4), (64,), 8, (96,), 1, False, 1e9)


def load_kernel() -> tuple[ModuleType, str]:
    """The kernel as users load it (`kernels.get_local_kernel` on a fresh noarch build), else from torch-ext."""
    sys.path.insert(0, str(KERNEL_ROOT))
    try:
        from build_noarch import build_noarch
        from kernels import get_local_kernel

        return get_local_kernel(build_noarch(Path(tempfile.mkdtemp()))), "kernels.get_local_kernel"
    except Exception as error:  # noqa: BLE001 - time the kernel anyway, and say how it was loaded
        sys.path.insert(0, str(KERNEL_ROOT / "torch-ext"))
        import multiverse_attention

        return multiverse_attention, f"imported from torch-ext/ ({type(error).__name__}: {error})"


def measure_ms(fn: Callable[[], object], sizes: Sizes) -> float:
    """Milliseconds per call: best of 3 runs of `reps` back-to-back calls, after a warm-up call."""
    fn()
    if sizes.device != "cuda":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    torch.cuda.synchronize()
    best = math.inf
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(sizes.reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / sizes.reps)
    return best


def repeat_kv(t: torch.Tensor, times: int) -> torch.Tensor:
    """What transformers does to key/value heads before sdpa with a mask."""
    return t.repeat_interleave(times, dim=1)


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def multiverse_intervals(length: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervals of: prompt (10%), 4 paths of 20% (the first one forking 2 nested paths), conclusion."""
    lo = torch.zeros(1, 3, length, dtype=torch.int32)
    hi = torch.zeros_like(lo)
    first = length // 10
    starts = [first + i * length // 5 for i in range(4)] + [first + 4 * length // 5]
    for start, end in zip(starts[1:-1], starts[2:]):
        lo[:, 1, start:end] = first
        hi[:, 1, start:end] = start
    nested_first, nested_second = starts[0] + length // 20, starts[0] + length // 8
    lo[:, 2, nested_second : starts[1]] = nested_first
    hi[:, 2, nested_second : starts[1]] = nested_second
    return lo.to(device), hi.to(device)


@dataclass
class Case:
    """One table row: the calls to time (built lazily, so a BlockMask or dense mask is made once)."""

    label: str
    ours: Callable[[], object] | None = None
    sdpa_dense: Callable[[], object] | None = None
    sdpa_dense_gqa: Callable[[], object] | None = None
    causal: Callable[[], object] | None = None
    flex: Callable[[], object] | None = None
    check: Callable[[], float] | None = None  # max |ours - sdpa with the dense mask|
    flex_priority: int = 9  # flex compiles per shape: the most telling cases get it first
    cells: dict[str, str] = field(default_factory=dict)


def built_once(make: Callable[[], Callable[[], object]]) -> Callable[[], object]:
    """Build on the first call (a BlockMask, a dense mask), time only the calls after."""
    made: list[Callable[[], object]] = []

    def call():
        if not made:
            made.append(make())
        return made[0]()

    return call


def timed(fn: Callable[[], object] | None, sizes: Sizes) -> str:
    """A table cell: milliseconds, or what went wrong (the script runs once, unattended: never stop)."""
    if fn is None:
        return "-"
    try:
        return f"{measure_ms(fn, sizes):.3f}"
    except Exception as error:  # noqa: BLE001
        return f"error: {type(error).__name__}: {str(error)[:50]}".replace("|", "/").replace("\n", " ")
    finally:
        if sizes.device == "cuda":
            torch.cuda.empty_cache()


def ratio(numerator: str, denominator: str) -> str:
    try:
        return f"{float(numerator) / float(denominator):.2f}"
    except (ValueError, ZeroDivisionError):
        return "-"


def decode_cases(kernel: ModuleType, sizes: Sizes, flex) -> list[Case]:
    cases = []
    group = sizes.heads // sizes.kv_heads
    for prefix in sizes.prefixes:
        for branches in sizes.branches:
            torch.manual_seed(0)
            tokens = branches * sizes.tokens_per_branch
            enter, exit = kernel.tree_intervals([-1] * branches)
            owner = torch.arange(tokens) % branches  # the engine's interleaved physical order
            token_enter, token_exit = enter[owner][None].to(sizes.device), exit[owner][None].to(sizes.device)
            query_node = enter[None].to(sizes.device)
            shape = dict(device=sizes.device, dtype=sizes.dtype)
            q = torch.randn(1, sizes.heads, branches, sizes.head_dim, **shape)
            prefix_k, prefix_v = (torch.randn(1, sizes.kv_heads, prefix, sizes.head_dim, **shape) for _ in range(2))
            branch_k, branch_v = (torch.randn(1, sizes.kv_heads, tokens, sizes.head_dim, **shape) for _ in range(2))
            cache_k, cache_v = torch.cat([prefix_k, branch_k], 2), torch.cat([prefix_v, branch_v], 2)
            node = query_node[:, :, None]
            branch_allowed = (token_enter[:, None, :] <= node) & (node < token_exit[:, None, :])
            prefix_allowed = torch.ones(1, branches, prefix, dtype=torch.bool, device=sizes.device)
            mask = additive(torch.cat([prefix_allowed, branch_allowed], -1), sizes.dtype)[:, None]

            def visible(
                b,
                h,
                q_idx,
                kv_idx,
                prefix=prefix,
                token_enter=token_enter,
                token_exit=token_exit,
                query_node=query_node,
            ):
                slot = (kv_idx - prefix).clamp(min=0)
                writer_sees = (token_enter[0, slot] <= query_node[0, q_idx]) & (
                    query_node[0, q_idx] < token_exit[0, slot]
                )
                return (kv_idx < prefix) | writer_sees

            def make_flex(
                q=q, cache_k=cache_k, cache_v=cache_v, visible=visible, length=prefix + tokens, branches=branches
            ):
                block_mask = create_block_mask(visible, 1, None, branches, length, device=sizes.device)
                return lambda: flex(q, cache_k, cache_v, block_mask=block_mask, enable_gqa=True)

            def ours(
                q=q, pk=prefix_k, pv=prefix_v, bk=branch_k, bv=branch_v, te=token_enter, tx=token_exit, qn=query_node
            ):
                return kernel.branch_decode_attention(q, pk, pv, bk, bv, te, tx, qn)

            def sdpa_dense(q=q, k=cache_k, v=cache_v, mask=mask):
                return F.scaled_dot_product_attention(q, repeat_kv(k, group), repeat_kv(v, group), attn_mask=mask)

            def sdpa_dense_gqa(q=q, k=cache_k, v=cache_v, mask=mask):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

            def check(ours=ours, sdpa_dense=sdpa_dense):
                return (ours().float() - sdpa_dense().float()).abs().max().item()

            size = f"{prefix // 1024}K" if prefix >= 1024 else str(prefix)
            priority = 2 if (branches, prefix) == (8, 16384) else 9
            cases.append(
                Case(
                    f"decode {branches} br x {size} prefix",
                    ours,
                    sdpa_dense,
                    sdpa_dense_gqa,
                    None,
                    built_once(make_flex),
                    check,
                    priority,
                )
            )
    return cases


def prefill_cases(kernel: ModuleType, sizes: Sizes, flex) -> list[Case]:
    cases = []
    group = sizes.heads // sizes.kv_heads
    for length in sorted(sizes.prefill_lengths, reverse=True):
        torch.manual_seed(0)
        shape = dict(device=sizes.device, dtype=sizes.dtype)
        q = torch.randn(1, sizes.heads, length, sizes.head_dim, **shape)
        k, v = (torch.randn(1, sizes.kv_heads, length, sizes.head_dim, **shape) for _ in range(2))
        lo, hi = multiverse_intervals(length, sizes.device)

        def mask_mod(b, h, q_idx, kv_idx, lo=lo, hi=hi):
            allowed = kv_idx <= q_idx
            for d in range(lo.shape[1]):
                allowed = allowed & ~((kv_idx >= lo[b, d, q_idx]) & (kv_idx < hi[b, d, q_idx]))
            return allowed

        def dense_mask(lo=lo, hi=hi, length=length):
            position = torch.arange(length, device=sizes.device)
            inside = (
                (position[None, None, :] >= lo[0, :, :, None]) & (position[None, None, :] < hi[0, :, :, None])
            ).any(0)
            return additive((position[None, :] <= position[:, None]) & ~inside, sizes.dtype)[None, None]

        def make_sdpa_dense(q=q, k=k, v=v, dense_mask=dense_mask):
            mask = dense_mask()
            return lambda: F.scaled_dot_product_attention(q, repeat_kv(k, group), repeat_kv(v, group), attn_mask=mask)

        def make_flex(q=q, k=k, v=v, mask_mod=mask_mod, length=length):
            block_mask = create_block_mask(mask_mod, 1, None, length, length, device=sizes.device)
            return lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True)

        def make_flex_train(q=q, k=k, v=v, mask_mod=mask_mod, length=length):
            block_mask = create_block_mask(mask_mod, 1, None, length, length, device=sizes.device)
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            grad = torch.randn_like(q)
            return lambda: flex(*leaves, block_mask=block_mask, enable_gqa=True).backward(grad)

        def causal_train(q=q, k=k, v=v):
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            F.scaled_dot_product_attention(*leaves, is_causal=True, enable_gqa=True).backward(torch.ones_like(q))

        def ours(q=q, k=k, v=v, lo=lo, hi=hi):
            return kernel.structured_prefill_attention(q, k, v, lo, hi)

        def causal(q=q, k=k, v=v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        def check(ours=ours, make_sdpa_dense=make_sdpa_dense):
            return (ours().float() - make_sdpa_dense()().float()).abs().max().item()

        size = f"{length // 1024}K" if length >= 1024 else str(length)
        top = length == max(sizes.prefill_lengths)
        cases.append(
            Case(
                f"prefill {size}",
                ours,
                built_once(make_sdpa_dense),
                None,
                causal,
                built_once(make_flex),
                check,
                0 if top else 3,
            )
        )
        cases.append(
            Case(
                f"train fwd+bwd {size}",
                None,
                None,
                None,
                causal_train,
                built_once(make_flex_train),
                None,
                1 if top else 4,
            )
        )
    return cases


COLUMNS = (
    "ours ms",
    "sdpa+dense mask ms",
    "sdpa+mask gqa ms",
    "flex ms",
    "causal sdpa ms",
    "sdpa/ours",
    "flex/ours",
    "flex/causal",
    "max abs err vs sdpa",
)


def print_row(case: Case) -> None:
    print("| " + " | ".join([case.label] + [case.cells.get(column, "-") for column in COLUMNS]) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes on CPU (set TRITON_INTERPRET=1): checks every code path"
    )
    args = parser.parse_args()
    sizes = CPU_SMOKE if args.cpu_smoke else GPU
    if sizes.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: use --cpu-smoke with TRITON_INTERPRET=1")
    started = time.perf_counter()
    kernel, how = load_kernel()
    if sizes.compile_flex:
        torch._dynamo.config.cache_size_limit = 64  # flex compiles per shape: never fall back to eager flex
    flex = torch.compile(flex_attention) if sizes.compile_flex else flex_attention
    device_name = torch.cuda.get_device_name() if sizes.device == "cuda" else "cpu (Triton interpreter)"
    print(f"kernel: {how}; device: {device_name}; {sizes.dtype}; "
          f"heads {sizes.heads}/{sizes.kv_heads} x {sizes.head_dim}; "
          f"{sizes.tokens_per_branch} tokens per branch", flush=True)
    cases = prefill_cases(kernel, sizes, flex) + decode_cases(kernel, sizes, flex)
    header = "| case | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 1)
    print("\nwithout flex (printed as measured):\n" + header, flush=True)
    for case in cases:
        case.cells["max abs err vs sdpa"] = "-" if case.check is None else _checked(case.check)
        case.cells["ours ms"] = timed(case.ours, sizes)
        case.cells["sdpa+dense mask ms"] = timed(case.sdpa_dense, sizes)
        case.cells["sdpa+mask gqa ms"] = timed(case.sdpa_dense_gqa, sizes)
        case.cells["causal sdpa ms"] = timed(case.causal, sizes)
        print_row(case)
    for case in sorted(cases, key=lambda case: case.flex_priority):
        if time.perf_counter() - started > sizes.flex_budget_s:
            case.cells["flex ms"] = "skipped (time)"
        else:
            case.cells["flex ms"] = timed(case.flex, sizes)
            print(f"flex {case.label}: {case.cells['flex ms']} ms", flush=True)
    for case in cases:
        case.cells["sdpa/ours"] = ratio(case.cells["sdpa+dense mask ms"], case.cells["ours ms"])
        case.cells["flex/ours"] = ratio(case.cells["flex ms"], case.cells["ours ms"])
        case.cells["flex/causal"] = ratio(case.cells["flex ms"], case.cells["causal sdpa ms"])
    print("\n" + header)
    for case in cases:
        print_row(case)
    by_label = {case.label: case.cells for case in cases}
    if "decode 8 br x 16K prefix" in by_label:
        print(
            "\ntarget (a) 8 branches x 16K prefix: sdpa+dense / ours = "
            f"{by_label['decode 8 br x 16K prefix']['sdpa/ours']} (want >= 2)"
        )
    if "prefill 32K" in by_label:
        cells = by_label["prefill 32K"]
        print(
            f"target (b) 32K prefill: ours / causal = {ratio(cells['ours ms'], cells['causal sdpa ms'])} (want <= 1.3)"
        )
        print(
            f"target training 32K: flex / causal fwd+bwd = {by_label['train fwd+bwd 32K']['flex/causal']} (want <= 1.3)"
        )
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)


def _checked(check: Callable[[], float]) -> str:
    try:
        return f"{check():.1e}"
    except Exception as error:  # noqa: BLE001 - report and go on
        return f"error: {type(error).__name__}"


if __name__ == "__main__":
    main()
