"""Tensor-parallel fork/merge decoding against one process: the same tokens, forks and merges included.

Run by torchrun, one process per device. Rank 0 builds a random Qwen2-shaped Multiverse model (tiny on
`--dry-run`; on a GPU 28 layers of Qwen2.5-1.5B's width), saves it, and every process loads it split over
the launched processes:
- `--via transformers` (the default for N >= 2):
  `from_pretrained(..., distributed_config=DistributedConfig(tp_size=N))`;
- `--via torch` (the default for N = 1, where transformers leaves the model whole): torch's
  `parallelize_module` on the model's own TP plan (`runtime.distributed.parallelize`), so the sharded (DTensor)
  code path runs even on one device.
Every process decodes the nested skeleton greedily in fp32 (forced with `tests/engine_skeleton.py`, so forks
and merges happen); rank 0 gathers every process's tokens, decodes again with the whole model in one process,
and writes one JSON: whether every process chose exactly the one-process tokens, the engine statistics, the
seconds of both runs and the full and local shapes of the split weights.

    $ torchrun --standalone --nproc-per-node 2 benchmarks/tp_check.py --dry-run --out /tmp/tp.json   # CPU, gloo
    $ torchrun --standalone --nproc-per-node 1 benchmarks/tp_check.py --out out/tp.json              # one GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(1, str(ROOT))

from engine_skeleton import SkeletonProcessor, block, skeleton_template  # noqa: E402

NESTED = [2, block(["1", "2", "3"], [[4], [2, block(["2.1", "2.2"], [[3], [6]]), 2], [7]]), 3]
"""The skeleton decoded: a three-path block whose second path forks again."""

PROMPT = "What is 2+2?"
GPU_SHAPE = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2}
"""Qwen2.5-1.5B's layers (its 151936-token vocabulary replaced by the test tokenizer's)."""


def build(folder: Path, dry_run: bool, dtype: torch.dtype = torch.float32) -> None:
    """Save a random Multiverse model with the tags (in `dtype`), and its tokenizer, in `folder`."""
    from tiny import tiny_model, tiny_tokenizer
    from transformers import Qwen2Config

    from modeling_multiverse import (
        MultiverseConfig,
        MultiverseForCausalLM,
        add_multiverse_tokens,
    )

    if dry_run:
        model, tokenizer = tiny_model("qwen2", layers=2, seed=3)
    else:
        tokenizer = tiny_tokenizer()
        torch.manual_seed(3)
        text = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=False,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **GPU_SHAPE)
        model = MultiverseForCausalLM(MultiverseConfig(text_config=text.to_dict()))
        add_multiverse_tokens(model, tokenizer)
    model.to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def decode(model, tokenizer) -> dict:
    """Greedy fork/merge decoding of PROMPT under NESTED: tokens and engine statistics (plain lists)."""
    from transformers import LogitsProcessorList

    template = skeleton_template(tokenizer, NESTED)
    chat = [{"role": "user", "content": PROMPT}]
    enc = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **enc.to(model.device),
            logits_processor=LogitsProcessorList([SkeletonProcessor(template, tokenizer)]),
            do_sample=False,
            return_dict_in_generate=True,
            tokenizer=tokenizer,
            max_new_tokens=400,
        )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {
        "sequences": out.sequences.tolist(),
        "decode_steps": out.decode_steps[0],
        "generated_tokens": out.generated_tokens[0],
        "blocks": out.blocks[0],
        "seconds": round(time.perf_counter() - start, 3),
    }


def shard_shapes(model) -> dict[str, list[list[int]]]:
    """`{name: [full shape, this process's shape]}` of every split (DTensor) weight."""
    from torch.distributed.tensor import DTensor

    return {n: [list(p.shape), list(p.to_local().shape)] for n, p in model.named_parameters() if isinstance(p, DTensor)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="a tiny model on CPU (gloo)")
    parser.add_argument(
        "--via", choices=("transformers", "torch"), help="default: transformers (N >= 2), torch (N = 1)"
    )
    parser.add_argument("--out", required=True, help="the JSON written by rank 0")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.distributed import (
        Launch,
        finish,
        gather_to_main,
        init_process_group,
        parallelize,
        tensor_parallel_kwargs,
    )

    launch = Launch.from_env()
    via = args.via or ("transformers" if launch.distributed else "torch")
    if via == "transformers" and not launch.distributed:
        raise ValueError("--via transformers needs 2 or more processes: transformers leaves a tp_size=1 model whole")
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    device = launch.device(device) if device == "cuda" else device
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: equal tokens are checked
        torch.backends.cudnn.allow_tf32 = False
    init_process_group(launch, device, even_alone=True)
    scratch = tempfile.TemporaryDirectory(prefix="tp_check_") if launch.main else None
    folder = [scratch.name if scratch else None]
    torch.distributed.broadcast_object_list(folder, src=0)
    if launch.main:
        build(Path(folder[0]), args.dry_run)
    torch.distributed.barrier()

    tokenizer = AutoTokenizer.from_pretrained(folder[0])
    if via == "transformers":
        model = AutoModelForCausalLM.from_pretrained(folder[0], dtype=torch.float32, **tensor_parallel_kwargs(launch))
    else:
        whole = AutoModelForCausalLM.from_pretrained(folder[0], dtype=torch.float32).to(device)
        model = parallelize(whole, launch, device)
    split = decode(model.eval(), tokenizer)
    shards = shard_shapes(model)
    del model
    results = gather_to_main(split, launch)
    if launch.main:
        whole = AutoModelForCausalLM.from_pretrained(folder[0], dtype=torch.float32).to(device).eval()
        single = decode(whole, tokenizer)
        report = {
            "tp_size": launch.world_size,
            "via": via,
            "backend": torch.distributed.get_backend(),
            "device": device,
            "same_tokens": all(r["sequences"] == single["sequences"] for r in results),
            "same_stats": all(
                (r["decode_steps"], r["blocks"]) == (single["decode_steps"], single["blocks"]) for r in results
            ),
            "forks": [b["labels"] for b in single["blocks"]],
            "decode_steps": single["decode_steps"],
            "generated_tokens": single["generated_tokens"],
            "seconds_split": max(r["seconds"] for r in results),
            "seconds_single": single["seconds"],
            "shards": shards,
            "sequences": [r["sequences"] for r in results] + [single["sequences"]],
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"tp_check: N={launch.world_size} via {via} on {device}: same tokens {report['same_tokens']}, "
              f"{report['generated_tokens']} tokens in {report['decode_steps']} steps, forks {report['forks']}")
        scratch.cleanup()
    finish(launch)
    return 0 if not launch.main or (report["same_tokens"] and report["same_stats"]) else 1


if __name__ == "__main__":
    sys.exit(main())
