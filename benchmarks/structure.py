"""Time and peak memory to build structure + attention inputs for long Multiverse sequences.

Usage:
    python benchmarks/structure.py                      # 4K, 32K, 128K tokens; dense at 4K and 8K only
    python benchmarks/structure.py --lengths 32768 --threads 2

Each measurement runs in a fresh subprocess on synthetic token ids with a random nested structure
(many blocks, 2-4 paths, depth up to 3, truncated at the target length). What is measured is the
public entry points `mask_for(*batch_intervals(input_ids, tag_ids)[1:], implementation)`: parse,
per-token arrays, then either the flex_attention `BlockMask` (the O(S) path) or the dense additive fp32 mask.

Memory method (honest about what it is): Linux peak resident set size. Before the measured call
the child resets its peak (`/proc/self/clear_refs` <- 5) and reads VmRSS; after the call it reads
VmHWM. Peak = VmHWM - VmRSS(before): every byte the call touched, Python objects and torch CPU
tensors alike, including temporaries freed before it returned. tracemalloc's peak (Python objects
only, no torch storage) is shown beside it. Time: best of `--repeats` calls, after the memory run.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
import tracemalloc

TEXT_TOKEN_RANGE = 1000  # text tokens are ids 0..999; tag k is id 1000 + k


def synthetic_kinds(length: int, seed: int = 0, max_depth: int = 3) -> list[int]:
    """Kinds (tag index or -1) of a `<Think>` response with many random nested blocks, cut at `length`."""
    from modeling_multiverse.structure import (
        CONCLUSION,
        CONCLUSION_END,
        GOAL,
        GOAL_END,
        OUTLINE,
        OUTLINE_END,
        PARALLEL,
        PARALLEL_END,
        PATH,
        PATH_END,
        TEXT,
        THINK,
        THINK_END,
    )

    rng = random.Random(seed)
    kinds: list[int] = [THINK]

    def text(n: int) -> None:
        kinds.extend([TEXT] * n)

    def block(depth: int, budget: int) -> None:
        n = rng.randint(2, 4)
        kinds.extend([PARALLEL, TEXT, GOAL])
        for _ in range(n):
            kinds.extend([TEXT, OUTLINE])
            text(rng.randint(4, 20))
            kinds.append(OUTLINE_END)
        kinds.extend([TEXT, GOAL_END])
        for _ in range(n):
            kinds.extend([TEXT, PATH])
            text(3)  # "\n1:"
            body(depth + 1, rng.randint(budget // (2 * n), budget // n))
            kinds.append(PATH_END)
        kinds.extend([TEXT, CONCLUSION])
        text(rng.randint(10, 60))
        kinds.extend([CONCLUSION_END, TEXT, PARALLEL_END])

    def body(depth: int, budget: int) -> None:
        start = len(kinds)
        while len(kinds) - start < budget and len(kinds) < length:
            if depth < max_depth and budget > 200 and rng.random() < 0.5:
                block(depth, min(budget, rng.randint(200, 2000)))
            else:
                text(rng.randint(20, 150))

    body(0, length)
    kinds.append(THINK_END)
    return kinds[:length]


def _status_kib(key: str) -> int:
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))


def child(length: int, mode: str, repeats: int, threads: int) -> dict:
    import torch

    from modeling_multiverse import TAGS, batch_intervals, mask_for, structure_of_ids

    torch.set_num_threads(threads)
    tag_ids = {tag: TEXT_TOKEN_RANGE + k for k, tag in enumerate(TAGS)}
    kinds = torch.tensor(synthetic_kinds(length))
    input_ids = torch.where(kinds < 0, torch.randint(0, TEXT_TOKEN_RANGE, kinds.shape), kinds + TEXT_TOKEN_RANGE)[None]
    implementation = "flex_attention" if mode == "blockmask" else "sdpa"
    structure = structure_of_ids(input_ids[0], tag_ids)
    blocks = int((kinds == TAGS.index("<Parallel>")).sum())

    def call(ids=input_ids):
        position_ids, forbid_lo, forbid_hi = batch_intervals(ids, tag_ids)
        return mask_for(forbid_lo, forbid_hi, implementation), position_ids

    call(input_ids[:, :512])  # warm lazy imports
    open("/proc/self/clear_refs", "w").write("5")
    rss_before = _status_kib("VmRSS")
    tracemalloc.start()
    mask, position_ids = call()
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak_rss = _status_kib("VmHWM") - rss_before
    del mask, position_ids
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {
        "length": length,
        "mode": mode,
        "blocks": blocks,
        "max_depth": structure.forbid_lo.shape[0] - 1,
        "critical_path": structure.critical_path_tokens(),
        "seconds": min(times),
        "peak_rss_mib": peak_rss / 1024,
        "python_peak_mib": python_peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 32768, 131072])
    parser.add_argument("--dense-lengths", type=int, nargs="*", default=[4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("LENGTH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.repeats, args.threads)))
        return
    runs = [(n, "blockmask") for n in args.lengths] + [(n, "dense") for n in args.dense_lengths]
    print(f"threads={args.threads}, best of {args.repeats}; peak = peak RSS increase during one call (see docstring)")
    print(
        f"{'tokens':>8} {'mask':>9} {'blocks':>6} {'depth':>5} {'crit.path':>9} {'seconds':>8} {'peak MiB':>9} "
        f"{'py MiB':>7}"
    )
    for length, mode in sorted(runs):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(length), mode, "--repeats", str(args.repeats),
             "--threads", str(args.threads)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{r['length']:>8} {r['mode']:>9} {r['blocks']:>6} {r['max_depth']:>5} {r['critical_path']:>9} "
            f"{r['seconds']:>8.3f} {r['peak_rss_mib']:>9.1f} {r['python_peak_mib']:>7.1f}"
        )
    for length in args.lengths:
        if length not in args.dense_lengths:
            print(f"dense fp32 mask at {length} tokens would need {length * length * 4 / 2**30:.2f} GiB (not run)")


if __name__ == "__main__":
    main()
