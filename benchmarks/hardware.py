"""The machine a timing was measured on: device, threads, native bf16, fp32 and bf16 matmul GFLOPS.

Every timing the README quotes names this line. bf16 saves time only where it is native (see
`runtime/precision.py`); on an AVX2-only CPU the bf16 number shows why it is off there.

    python benchmarks/hardware.py                 # the default device (cuda if present, else cpu)
    python benchmarks/hardware.py --device cpu --size 2048 --json
"""

from __future__ import annotations

import argparse
import json

from runtime.precision import choose_precision, hardware_line, hardware_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if present, else cpu)")
    parser.add_argument("--size", type=int, default=1024, help="side of the square matmuls (default 1024)")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per dtype (default 0.5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    report = hardware_report(args.device, args.size, args.seconds)
    choice = choose_precision("auto", report["device"])
    if args.json:
        print(json.dumps({**report, "auto_precision": choice.as_dict()}))
        return
    print(hardware_line(report))
    print(f"native bf16: {report['native_bf16']} ({report['bf16_evidence']})")
    print(f"--precision auto -> {choice.name}; torch {report['torch']}")


if __name__ == "__main__":
    main()
