"""One process of the lockstep serving test (`test_tensor_parallel.py`), started by torchrun: a server's view of TP.

Rank 0 plays the server: requests reach it alone, at staggered steps (`ARRIVALS`), one from another thread
while it steps, one cancelled mid-decode; it drives a `LockstepEngine` and writes what each request got to OUT.
The other processes `follow_engine` with an engine that keeps its requests, and write theirs to OUT.rankN.
Request k is `REQUESTS[k]`: greedy with the nested skeleton forced (forks and merges), greedy plain, sampled with
a seed, sampled without one. At the end rank 0 resets (every process takes a fresh engine) and runs one more.

    $ torchrun --standalone --nproc-per-node 2 tests/lockstep_worker.py MODEL OUT
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from modeling_multiverse.serving import ContinuousEngine  # noqa: E402

ARRIVALS = {0: [0], 2: [4], 3: [1], 5: [2, 3]}  # step -> requests added before it (max_running 3: some wait)
CANCEL = (4, 12)  # request 4 is cancelled before step 12, while it decodes
THREADED = 5  # added from another thread once step 4 has begun
AFTER_RESET = 6
TEXTS = ["What is 2+2?", "Name a colour.", "Count to three.", "Say hello.", "A long story, please.", "Why?", "Hi"]


def requests(tokenizer) -> list[dict]:
    """`add_request` keyword arguments of each request (prompt ids included)."""
    from engine_skeleton import SkeletonProcessor, block, skeleton_template
    from transformers import LogitsProcessorList

    template = skeleton_template(tokenizer, [2, block(["1", "2"], [[5], [2, block(["2.1", "2.2"], [[3], [4]]), 2]]), 2])
    forced = LogitsProcessorList([SkeletonProcessor(template, tokenizer)])
    specs = [
        {"logits_processor": forced, "max_new_tokens": 300},
        {"max_new_tokens": 24},
        {"do_sample": True, "temperature": 1.0, "top_p": 0.9, "seed": 7, "max_new_tokens": 30},
        {"do_sample": True, "temperature": 1.5, "max_new_tokens": 30},  # no seed: rank 0 picks it for all
        {"max_new_tokens": 200},  # cancelled
        {"max_new_tokens": 20},  # from another thread
        {"max_new_tokens": 16},  # after the reset
    ]
    return [{"input_ids": prompt_ids(tokenizer, text), **spec} for text, spec in zip(TEXTS, specs)]


def prompt_ids(tokenizer, text: str) -> list[int]:
    chat = [{"role": "user", "content": text}]
    return list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])


def outcome(request) -> dict:
    return {"id": request.id, "response": request.response_ids, "cancelled": request.cancelled,
            "finished": request.finished, "steps": request.stats.get("decode_steps")}


class KeepingEngine(ContinuousEngine):
    """A follower's engine that keeps every request it was given (in `kept`, shared across resets)."""

    def __init__(self, *args, kept: list, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept = kept

    def add_request(self, *args, **kwargs):
        request = super().add_request(*args, **kwargs)
        self.kept.append(request)
        return request


def serve(engine, tokenizer) -> dict:
    """Rank 0: add, cancel and step as a server would; what each request got, by index."""
    specs = requests(tokenizer)
    added: dict[int, object] = {}
    begun = threading.Event()
    thread = threading.Thread(target=lambda: (begun.wait(), added.__setitem__(THREADED, engine.add_request(
        **specs[THREADED]))))
    thread.start()
    idle = [engine.step(), engine.step()]  # heartbeats: empty steps, no forward pass
    for step in range(5000):
        for k in ARRIVALS.get(step, []):
            added[k] = engine.add_request(**specs[k])
        if step == CANCEL[1]:
            engine.cancel(added[CANCEL[0]])
        if step == 4:
            begun.set()
        if step > max(ARRIVALS) and not thread.is_alive() and not (engine.running or engine.waiting):
            break
        engine.step()
    thread.join()
    engine.reset()
    added[AFTER_RESET] = engine.add_request(**specs[AFTER_RESET])
    while engine.running or engine.waiting:
        engine.step()
    assert idle == [[], []]
    return {k: outcome(request) for k, request in sorted(added.items())}


def main(model_dir: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import modeling_multiverse  # noqa: F401  (registers the Multiverse auto classes: no remote code prompt)
    from runtime.distributed import (
        Launch,
        LockstepEngine,
        finish,
        follow_engine,
        tensor_parallel_kwargs,
    )

    launch = Launch.from_env()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **tensor_parallel_kwargs(launch))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if launch.main:
        engine = LockstepEngine(ContinuousEngine(model, tokenizer, max_running=3), launch)
        Path(out).write_text(json.dumps(serve(engine, tokenizer)))
        engine.close()
    else:
        kept: list = []
        local = lambda: KeepingEngine(model, tokenizer, max_running=3, kept=kept)  # noqa: E731
        follow_engine(local(), launch, renew=local)
        Path(f"{out}.rank{launch.rank}").write_text(json.dumps([outcome(r) for r in kept]))
    finish(launch)


if __name__ == "__main__":
    main(*sys.argv[1:3])
