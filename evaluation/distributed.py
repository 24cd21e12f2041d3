"""`multiverse eval` on several processes (torchrun or accelerate launch): data parallel or tensor parallel.

- `--parallel data` (the default when launched on several processes): every process loads the whole model on
  its own device and evaluates whole batches of the task, batch i on process i mod N. The batches are exactly
  those of a one-process run (same records, same order, same padding), so every problem's output is the one a
  single process writes. Rank 0 gathers the per-problem results (`torch.distributed.gather_object`), puts them
  back in the file's order, and writes ONE report; the other processes print and write nothing.
- `--parallel tensor`: the model is split over the processes (`runtime/distributed.py`); every process
  evaluates every batch in lockstep, rank 0 reports.

Example:
    $ torchrun --nproc-per-node 2 -m multiverse.cli eval --model out/m --data data/test.jsonl --output report.json
    $ accelerate launch --num_processes 2 -m multiverse.cli eval --model out/m --data data/test.jsonl

    >>> batch_shard(10, batch_size=3, rank=1, world_size=2)  # batches [0,1,2] [3,4,5] [6,7,8] [9]: 2nd and 4th
    [3, 4, 5, 9]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtime.distributed import (
    PARALLEL_MODES,
    Launch,
    finish,
    gather_to_main,
    init_process_group,
    tensor_parallel_kwargs,
)


def add_parallel_argument(parser: argparse.ArgumentParser) -> None:
    """`--parallel {data,tensor}`: how processes launched by torchrun / accelerate launch share the evaluation."""
    parser.add_argument(
        "--parallel",
        choices=PARALLEL_MODES,
        default="data",
        help="under torchrun/accelerate launch: 'data' shards the problems over the processes (default), "
        "'tensor' splits the model over them; one process ignores it",
    )


def batch_shard(n_records: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """Indices of the records process `rank` evaluates: batches `rank`, `rank + world_size`, ... of a one-process run.

    >>> batch_shard(5, batch_size=2, rank=0, world_size=2)
    [0, 1, 4]
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"batch_size and world_size must be >= 1 and rank in 0..{world_size - 1}")
    return [
        index
        for first in range(rank * batch_size, n_records, world_size * batch_size)
        for index in range(first, min(first + batch_size, n_records))
    ]


def merge_shards(shards: Sequence[tuple[Sequence[int], Sequence[Any]]], n_records: int) -> list[Any]:
    """Every process's `(indices, results)` back in the original order; every index exactly once.

    >>> merge_shards([([0, 1, 4], ["a", "b", "e"]), ([2, 3], ["c", "d"])], 5)
    ['a', 'b', 'c', 'd', 'e']
    """
    merged: list[Any] = [None] * n_records
    seen = [False] * n_records
    for indices, results in shards:
        if len(indices) != len(results):
            raise ValueError(f"a process returned {len(results)} results for {len(indices)} problems")
        for index, result in zip(indices, results):
            if seen[index]:
                raise ValueError(f"problem {index} was evaluated twice")
            merged[index], seen[index] = result, True
    if not all(seen):
        raise ValueError(f"problem {seen.index(False)} was evaluated by no process")
    return merged


def load_model(model_class, name: str, dtype, device: str, launch: Launch, parallel: str, text_config: Mapping):
    """The evaluated model for this process: whole on its device (one process, data parallel), or its slice (tensor).

    Data parallel joins the process group here (gloo on CPU, nccl on CUDA) for the final gather.

    >>> model = load_model(AutoModelForCausalLM, "out/m", torch.float32, "cpu", Launch(), "data", {})  # doctest: +SKIP
    """
    if launch.distributed and parallel == "tensor":
        return model_class.from_pretrained(name, dtype=dtype, **tensor_parallel_kwargs(launch, text_config)).eval()
    device = launch.device(device)
    init_process_group(launch, device)
    return model_class.from_pretrained(name, dtype=dtype).to(device).eval()


def run_evaluation(
    evaluate_part: Callable[[list[dict]], dict[str, Any]],
    records: Sequence[dict],
    batch_size: int,
    kind: str,
    launch: Launch,
    summarize: Callable[[list[dict], str, float], dict[str, Any]],
    parallel: str = "data",
) -> dict[str, Any] | None:
    """Evaluate `records` with `evaluate_part` (records -> `evaluate` report) as the launch says; the report on rank 0.

    Returns None on the other processes, which must then print and write nothing. Data parallel: the merged
    report (`summarize`, e.g. `evaluate.summarize`, over every problem; wall time from the first batch to the
    last result gathered) gains `data_parallel: N`; tensor parallel: `tensor_parallel: N`. Leaves the process
    group at the end.

    >>> part = lambda records: evaluate(model, tok, records, "math")  # doctest: +SKIP
    >>> report = run_evaluation(part, records, 8, "math", Launch(), summarize)  # doctest: +SKIP
    """
    if not launch.distributed:
        return evaluate_part(list(records))
    if parallel == "tensor":
        report = evaluate_part(list(records))
        report["tensor_parallel"] = launch.world_size
    else:
        start = time.perf_counter()
        indices = batch_shard(len(records), batch_size, launch.rank, launch.world_size)
        part = evaluate_part([records[i] for i in indices])
        shards = gather_to_main((indices, part["records"]), launch)
        report = None
        if launch.main:
            report = summarize(merge_shards(shards, len(records)), kind, time.perf_counter() - start)
            report["data_parallel"] = launch.world_size
    finish(launch)
    return report if launch.main else None


__all__ = ["add_parallel_argument", "batch_shard", "load_model", "merge_shards", "run_evaluation"]
