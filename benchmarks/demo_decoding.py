"""Decoding costs behind the demo's speedup, measured on a finished `multiverse demo` run folder.

(1) The autoregressive baseline on one batch of held-out prompts: decoded by the engine (as the demo
    does; the baseline writes no blocks, so one token per step) and by transformers' own `generate`.
(2) One engine decode step (a batch of 8 cache rows, `--context` cached tokens, q new tokens per row
    under a mask): transformers' sdpa against `grouped_query_sdpa`, the attention the engine uses.
(3) The Multiverse model on two batches: this engine against another `generation.py` (`--other`,
    e.g. `git show REV:modeling_multiverse/generation.py > old.py`), same greedy tokens checked.
Runs alternate and keep each one's fastest (`--repeats`), since the CPU is shared.

    $ python benchmarks/demo_decoding.py --run runs/demo
    $ python benchmarks/demo_decoding.py --run runs/demo --other old_generation.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.evaluate import encode_prompts, load_records  # noqa: E402
from modeling_multiverse.decode_attention import ENGINE_SDPA  # noqa: E402


def load(folder: Path):
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return model, tokenizer


def batches(tokenizer, records: list[dict], size: int, count: int) -> list[dict]:
    out = []
    for first in range(0, size * count, size):
        out.append(encode_prompts(tokenizer, records[first : first + size], parallel_prompt=True, device="cpu"))
    return out


@torch.inference_mode()
def timed_generate(
    model, tokenizer, encoded: list[dict], max_new_tokens: int, **kwargs
) -> tuple[float, list[torch.Tensor]]:
    start, outputs = time.perf_counter(), []
    for enc in encoded:
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            return_dict_in_generate=True, tokenizer=tokenizer, **kwargs,
        )
        outputs.append(out.sequences)
    return time.perf_counter() - start, outputs


@torch.inference_mode()
def step_ms(model, attention: str, q: int, context: int, repeats: int) -> float:
    """Median time of one decode step (8 rows, q tokens each) with the given attention implementation."""
    config = model.get_decoder().config
    config._attn_implementation = attention
    try:
        cache = model(torch.randint(0, 1000, (8, context)), use_cache=True).cache
        times = []
        for i in range(repeats):
            mask = torch.zeros(8, 1, q, context + q * (i + 1))
            start = time.perf_counter()
            model(torch.randint(0, 1000, (8, q)), attention_mask=mask, cache=cache, use_cache=True)
            times.append(time.perf_counter() - start)
    finally:
        config._attn_implementation = "sdpa"
    return 1000 * sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a finished `multiverse demo --out` folder")
    parser.add_argument("--other", type=Path, help="another engine (generation.py) to compare in (3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--context", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    records, _ = load_records(args.run / "held_out.jsonl", "builtin")
    records = [dict(r, kind="builtin") for r in records]

    model, tokenizer = load(args.run / "autoregressive-model")
    (encoded,) = batches(tokenizer, records, args.batch_size, 1)
    best = {"engine": float("inf"), "transformers": float("inf")}
    for _ in range(args.repeats):
        best["engine"] = min(best["engine"], timed_generate(model, tokenizer, [encoded], args.max_new_tokens)[0])
        plain = timed_generate(model, tokenizer, [encoded], args.max_new_tokens, multiverse=False)[0]
        best["transformers"] = min(best["transformers"], plain)
    print(f"(1) autoregressive model, {args.batch_size} prompts: engine {best['engine']:.1f} s, "
          f"transformers generate {best['transformers']:.1f} s")  # fmt: skip

    model, tokenizer = load(args.run / "multiverse-model")
    for q in (1, 2, 4):
        plain, grouped = (step_ms(model, name, q, args.context, 2 * args.repeats + 3) for name in ("sdpa", ENGINE_SDPA))
        print(
            f"(2) decode step, 8 rows x {q} queries, {args.context} cached: "
            f"sdpa {plain:.0f} ms, grouped {grouped:.0f} ms"
        )

    if args.other is not None:
        with tempfile.TemporaryDirectory() as tmp:
            other_dir = Path(tmp) / "other-engine"
            shutil.copytree(args.run / "multiverse-model", other_dir)
            for target in (other_dir / "generation.py", other_dir / "custom_generate" / "generate.py"):
                shutil.copy(args.other, target)
            engines = {"this engine": load(args.run / "multiverse-model"), "other engine": load(other_dir)}
            encoded = batches(tokenizer, records, args.batch_size, 2)
            best, outputs = {name: float("inf") for name in engines}, {}
            for _ in range(args.repeats):
                for name, (m, t) in engines.items():
                    seconds, outputs[name] = timed_generate(m, t, encoded, args.max_new_tokens)
                    best[name] = min(best[name], seconds)
            same = all(torch.equal(a, b) for a, b in zip(*outputs.values()))
            print(f"(3) multiverse model, {2 * args.batch_size} prompts: this engine {best['this engine']:.1f} s, "
                  f"other engine {best['other engine']:.1f} s, same tokens: {same}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
