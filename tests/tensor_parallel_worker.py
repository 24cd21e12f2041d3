"""One process of the 2-process tensor-parallel test (`test_tensor_parallel.py`), started by torchrun.

Loads the Multiverse model in MODEL split over the launched processes (transformers' tensor parallelism,
gloo on CPU), decodes the skeleton test's prompt greedily with the skeleton forced (forks and merges
guaranteed) and writes what it saw to OUT/rank{RANK}.json: the sequences, the engine statistics and, per
sharded weight, its full and local shapes.

    $ torchrun --standalone --nproc-per-node 2 tests/tensor_parallel_worker.py MODEL OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from engine_skeleton import SkeletonProcessor, block, skeleton_template  # noqa: E402

NESTED = [2, block(["1", "2", "3"], [[4], [2, block(["2.1", "2.2"], [[3], [6]]), 2], [7]]), 3]
"""The skeleton decoded: a three-path block whose second path forks again."""

PROMPT = "What is 2+2?"


def decode(model, tokenizer) -> dict:
    """Greedy fork/merge decoding of PROMPT under NESTED; what both the test and the worker compare."""
    import torch
    from transformers import LogitsProcessorList

    template = skeleton_template(tokenizer, NESTED)
    chat = [{"role": "user", "content": PROMPT}]
    enc = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(
            **enc,
            logits_processor=LogitsProcessorList([SkeletonProcessor(template, tokenizer)]),
            do_sample=False,
            return_dict_in_generate=True,
            tokenizer=tokenizer,
            max_new_tokens=400,
        )
    return {
        "sequences": out.sequences.tolist(),
        "decode_steps": out.decode_steps,
        "generated_tokens": out.generated_tokens,
        "blocks": out.blocks,
    }


def main(model_dir: str, out_dir: str) -> None:
    import torch
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.distributed import Launch, finish, tensor_parallel_kwargs

    launch = Launch.from_env()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **tensor_parallel_kwargs(launch))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    shards = {
        name: [list(p.shape), list(p.to_local().shape)]
        for name, p in model.named_parameters()
        if isinstance(p, DTensor)
    }
    result = decode(model, tokenizer)
    result.update(rank=launch.rank, world_size=launch.world_size, shards=shards, backend=torch.distributed.get_backend())
    Path(out_dir, f"rank{launch.rank}.json").write_text(json.dumps(result))
    finish(launch)


if __name__ == "__main__":
    main(*sys.argv[1:3])
