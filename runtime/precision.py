"""Which precision to train and decode in on this machine, and how fast it multiplies matrices.

bf16 halves memory traffic, but it only saves time where the hardware multiplies bf16 natively: a CUDA
GPU that supports it, or a CPU where oneDNN reports bf16 support (AVX-512 and AMX parts). Elsewhere bf16 is
emulated, and on an AVX2-only CPU a bf16 matmul is tens of times slower than fp32. `choose_precision`
turns `auto|fp32|bf16` into a dtype plus the reason, so that a run can record why it used what it used.

Not part of the model files that ship to the Hub: the CLI, the recipes and the benchmarks import it.

Example:
    >>> choice = choose_precision("auto", "cpu")
    >>> choice.name in ("fp32", "bf16") and bool(choice.reason)
    True
    >>> choose_precision("fp32").dtype
    torch.float32
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
"""What `--precision` accepts."""

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
"""Environment that makes a CPU with AVX-512 or AMX compute like an AVX2-only one, set before torch is
imported: oneDNN then reports no native bf16 (bf16 is emulated) and fp32 runs AVX2 kernels. How to check the
slow path on a fast CPU: `env ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ...`."""


def _onednn_bf16() -> bool:
    """Whether oneDNN (torch's CPU matmul backend) has native bf16 kernels on this CPU."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def native_bf16(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """(whether `device` runs bf16 matmuls natively, the evidence in words)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        with torch.cuda.device(index):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        if native:
            return True, f"{name} supports bf16"
        return False, f"{name} has no native bf16"
    if device.type == "cpu":
        if _onednn_bf16():
            return True, "oneDNN reports native bf16 on this CPU"
        return False, "oneDNN reports no native bf16 on this CPU (bf16 would be emulated)"
    return False, f"no bf16 check for {device.type} devices"


def preferred_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bf16 where `device` runs it natively, else fp32.

    >>> preferred_dtype("cpu") in (torch.float32, torch.bfloat16)
    True
    """
    return torch.bfloat16 if native_bf16(device)[0] else torch.float32


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses (`name`: fp32 or bf16), what was asked for, and why."""

    name: str
    requested: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def as_dict(self) -> dict[str, str]:
        return {"precision": self.name, "requested": self.requested, "reason": self.reason}


def choose_precision(requested: str = "auto", device: str | torch.device | None = None) -> PrecisionChoice:
    """`auto` picks bf16 where `device` (default: cuda if present, else cpu) runs it natively, else fp32;
    `fp32` and `bf16` are taken as asked, with a warning in the reason when bf16 would be emulated."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    native, evidence = native_bf16(device)
    if requested == "auto":
        return PrecisionChoice("bf16" if native else "fp32", requested, f"auto: {evidence}")
    if requested == "bf16" and not native:
        return PrecisionChoice("bf16", requested, f"asked for; {evidence}, expect it to be much slower than fp32")
    return PrecisionChoice(requested, requested, f"asked for; {evidence}")


def matmul_gflops(
    dtype: torch.dtype,
    size: int = 1024,
    device: str | torch.device = "cpu",
    seconds: float = 0.5,
    cpu_time: bool = False,
) -> float:
    """Measured GFLOPS of `size` x `size` matmuls in `dtype` on `device`, over about `seconds`.

    The first matmul (kernel selection, first-touch allocation) is not timed, unless it alone takes
    `seconds` or more: emulated bf16 on an AVX2 CPU takes seconds per 1024 x 1024 matmul, and one
    run is then measure enough. `cpu_time` divides by this process's CPU seconds instead of wall
    seconds: with one thread on a shared CPU, that is what the core does when it runs.

    >>> matmul_gflops(torch.float32, size=64, seconds=0.01) > 0
    True
    """
    device = torch.device(device)
    clock = time.process_time if cpu_time else time.perf_counter
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def timed_mm() -> float:
        start = clock()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return clock() - start

    elapsed, runs = timed_mm(), 1
    if elapsed < seconds:
        elapsed, runs = 0.0, 0
        while runs < 2 or elapsed < seconds:
            elapsed += timed_mm()
            runs += 1
    return 2 * size**3 * runs / max(elapsed, 1e-9) / 1e9


def per_core_gflops(dtype: torch.dtype, size: int = 1024, seconds: float = 0.5) -> float:
    """CPU GFLOPS of one thread by its CPU seconds: robust to other processes sharing the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return matmul_gflops(dtype, size, "cpu", seconds, cpu_time=True)
    finally:
        torch.set_num_threads(threads)


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware_report(device: str | torch.device | None = None, size: int = 1024, seconds: float = 0.5) -> dict:
    """The machine in numbers: device name, torch threads, native bf16 and fp32/bf16 matmul GFLOPS.

    `*_gflops` are wall-clock with every thread, what the machine gives now; on a CPU `*_gflops_per_core`
    are one thread by its CPU seconds, which other processes on shared cores barely change. This is what
    `benchmarks/hardware.py` prints and `multiverse demo` records in summary.json.
    """
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    native, evidence = native_bf16(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": device.type,
        "name": name,
        "threads": torch.get_num_threads(),
        "native_bf16": native,
        "bf16_evidence": evidence,
        "matmul_size": size,
        "fp32_gflops": round(matmul_gflops(torch.float32, size, device, seconds), 2),
        "bf16_gflops": round(matmul_gflops(torch.bfloat16, size, device, seconds), 2),
        **(
            {
                "fp32_gflops_per_core": round(per_core_gflops(torch.float32, size, seconds), 2),
                "bf16_gflops_per_core": round(per_core_gflops(torch.bfloat16, size, seconds), 2),
            }
            if device.type == "cpu"
            else {}
        ),
        "torch": torch.__version__,
        # instruction sets held back by the environment (`AVX2_ONLY`): the numbers are those of the restricted CPU
        "isa_limits": {name: os.environ[name] for name in AVX2_ONLY if name in os.environ and device.type == "cpu"},
        # other processes' share of the CPU when it was measured: the GFLOPS are wall-clock
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def hardware_line(report: dict) -> str:
    """One line naming the hardware a timing was measured on, e.g. for a README or a report.

    >>> hardware_line({"name": "CPU X", "threads": 2, "fp32_gflops": 15.0, "bf16_gflops": 0.2, "matmul_size": 1024})
    'CPU X, 2 threads: fp32 15.0 GFLOPS, bf16 0.2 GFLOPS (1024x1024 matmul)'
    """
    size = report["matmul_size"]
    limits = report.get("isa_limits") or {}
    name = report["name"] + (f" limited by {' '.join(f'{k}={v}' for k, v in limits.items())}" if limits else "")
    line = (
        f"{name}, {report['threads']} threads: fp32 {report['fp32_gflops']} GFLOPS, "
        f"bf16 {report['bf16_gflops']} GFLOPS ({size}x{size} matmul)"
    )
    if "fp32_gflops_per_core" in report:
        line += f"; per core by CPU time: fp32 {report['fp32_gflops_per_core']}, bf16 {report['bf16_gflops_per_core']}"
    if report.get("load_average_1m") is not None:
        line += f"; load average {report['load_average_1m']}"
    return line
