"""One process of the lockstep test (`test_tensor_parallel.py`), started by torchrun: a server's view of TP.

Rank 0 plays a server that receives requests alone: it calls `generate` through `LockstepModel` (the request's
`torch.manual_seed` first, as `multiverse serve` does) and writes the outputs to OUT; the other processes only
`follow`. The calls are `CALLS`: greedy with the skeleton forced (forks and merges), then sampled.

    $ torchrun --standalone --nproc-per-node 2 tests/lockstep_worker.py MODEL OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))


def calls(tokenizer) -> list[tuple[int, dict]]:
    """(seed, generate keyword arguments) of each request."""
    from engine_skeleton import SkeletonProcessor, block, skeleton_template
    from transformers import LogitsProcessorList

    template = skeleton_template(tokenizer, [2, block(["1", "2"], [[5], [2, block(["2.1", "2.2"], [[3], [4]]), 2]]), 2])
    chat = [{"role": "user", "content": "What is 2+2?"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    forced = LogitsProcessorList([SkeletonProcessor(template, tokenizer)])
    return [
        (0, {**ids, "logits_processor": forced, "do_sample": False, "max_new_tokens": 300}),
        (5, {**ids, "do_sample": True, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 40}),
        (6, {**ids, "do_sample": True, "temperature": 1.5, "num_return_sequences": 2, "max_new_tokens": 30}),
    ]


def run(model, tokenizer) -> list[dict]:
    import torch

    outputs = []
    for seed, kwargs in calls(tokenizer):
        torch.manual_seed(seed)
        out = model.generate(**kwargs, tokenizer=tokenizer, return_dict_in_generate=True)
        outputs.append({"sequences": out.sequences.tolist(), "blocks": out.blocks, "steps": out.decode_steps})
    return outputs


def main(model_dir: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import modeling_multiverse  # noqa: F401  (registers the Multiverse auto classes: no remote code prompt)
    from runtime.distributed import (
        Launch,
        LockstepModel,
        finish,
        follow,
        tensor_parallel_kwargs,
    )

    launch = Launch.from_env()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **tensor_parallel_kwargs(launch))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if launch.main:
        server = LockstepModel(model.eval(), launch)
        Path(out).write_text(json.dumps(run(server, tokenizer)))
        server.close()
    else:
        follow(model.eval(), launch)
    finish(launch)


if __name__ == "__main__":
    main(*sys.argv[1:3])
