"""`multiverse eval` with continuous batching: as problems finish, the next ones join the running batch.

`batch_size` is the number of problems decoding at once. Static batches wait on their longest member;
here a finished problem's row is refilled at the next step (`modeling_multiverse.serving.ContinuousEngine`).
Greedy decoding of a problem does not depend on what runs beside it, so in fp32 every problem's
response equals the static batches' (`tests/test_eval_continuous.py`). Only Multiverse models (the
fork/merge engine) take this path; `evaluate` keeps static batches for plain causal models.

    >>> out = generate_continuous(model, tokenizer, records, 256, 8, parallel_prompt=True, pad_id=0)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from modeling_multiverse import prompt_ids
from modeling_multiverse.serving import ContinuousEngine


def is_multiverse_model(model) -> bool:
    """Whether `model.generate` is the fork/merge engine (a Multiverse checkpoint, local or remote code)."""
    return getattr(model.config, "model_type", None) == "multiverse"


def use_continuous(batching: str, device: torch.device | str) -> bool:
    """Whether `--batching` (auto, continuous or static) means continuous batching on `device`.

    `auto` refills on an accelerator only: a CPU step costs nearly in proportion to its rows and static
    batches shed their finished rows, so there refilling is slower (measured in the README's "From Python").

    >>> use_continuous("auto", "cpu"), use_continuous("auto", "cuda:0"), use_continuous("continuous", "cpu")
    (False, True, True)
    """
    if batching == "auto":
        return torch.device(device).type != "cpu"
    return batching == "continuous"


@torch.inference_mode()
def generate_continuous(
    model, tokenizer, records: Sequence[Mapping[str, Any]], max_new_tokens: int, batch_size: int,
    parallel_prompt: bool, pad_id: int,
) -> list[tuple[list[int], dict, float]]:
    """Greedy responses of every record, `batch_size` running at once: (response ids, engine stats, seconds
    from joining to finishing) per record, in order. The response ends with its eos (or closing tags)."""
    engine = ContinuousEngine(model, tokenizer, max_running=batch_size, pad_token_id=pad_id)
    joined: dict[int, float] = {}
    out: dict[int, tuple[list[int], dict, float]] = {}
    requests = [
        engine.add_request(prompt_ids(tokenizer, r["question"], r["kind"], parallel=parallel_prompt), max_new_tokens)
        for r in records
    ]
    index = {request.id: i for i, request in enumerate(requests)}
    with tqdm(total=len(records), desc="eval", unit="problem") as bar:
        while engine.running or engine.waiting:
            started = time.perf_counter()
            finished = engine.step()
            for request in engine.running + finished:
                joined.setdefault(request.id, started)  # it joined at this step
            for request in finished:
                out[index[request.id]] = (request.response_ids, request.stats, time.perf_counter() - joined[request.id])
                bar.update()
    return [out[i] for i in range(len(records))]
