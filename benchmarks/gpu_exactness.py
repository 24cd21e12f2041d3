"""Exactness of the Multiverse Engine on a GPU: fp32 exactly as one full forward, bf16 within a stated tolerance.

A random Qwen2-shaped Multiverse model (28 layers of Qwen2.5-1.5B's width; tiny on `--dry-run`, on CPU) decodes
skeletons forced with `tests/engine_skeleton.py` (so forks and merges happen) greedily, in fp32 and in bf16.
Checked, at every FREE slot (where the model chose the token):

1. `fp32_invariant` (SPEC.md §7 on the GPU): one full fp32 forward over the fp32 engine's output, under the
   Multiverse mask, picks every token the engine picked, and gives it the engine's log-probability.
   Pass: 0 argmax mismatches and max |delta log-prob| <= `FP32_LOGPROB_TOL`.
2. `bf16_vs_fp32`: the bf16 engine's tokens, read by the fp32 model (one full forward over the bf16 output):
   the fp32 log-probability of each bf16 choice is at most `BF16_REGRET_TOL` nats below the fp32 best
   (bf16 only ever picks a token fp32 finds about as likely). Reported besides: how many greedy tokens of
   bf16 and fp32 agree before the first difference, and the teacher-forced max |delta log-prob| and top-1
   agreement of bf16 against fp32 over the fp32 output.

Writes one JSON; exit status 1 if a check fails. TF32 is off: fp32 means fp32.

    $ python benchmarks/gpu_exactness.py --out out/exactness.json             # on a GPU, < 1 min
    $ python benchmarks/gpu_exactness.py --dry-run --out /tmp/exactness.json  # CPU, tiny model
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(1, str(ROOT))

from engine_skeleton import FREE, SkeletonProcessor, block, skeleton_template  # noqa: E402

FP32_LOGPROB_TOL = 1e-3
"""Largest |engine log-prob - full-forward log-prob| of an fp32 choice (kernels differ, arithmetic does not)."""
BF16_REGRET_TOL = 0.25
"""Largest fp32 log-prob gap (nats) between the fp32 best token and the token bf16 chose."""

SKELETONS = {
    "nested": [4, block(["1", "2", "3"], [[16], [4, block(["2.1", "2.2"], [[12], [20]]), 4], [24]]), 8],
    "flat4": [4, block(["1", "2", "3", "4"], [[32], [24], [40], [16]]), 8],
}
GPU_SHAPE = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2}


def build(dry_run: bool, device: str):
    """A random fp32 Multiverse model on `device` and its tokenizer (the tests' character tokenizer)."""
    from tiny import tiny_model, tiny_tokenizer
    from transformers import Qwen2Config

    from modeling_multiverse import (
        MultiverseConfig,
        MultiverseForCausalLM,
        add_multiverse_tokens,
    )

    if dry_run:
        model, tokenizer = tiny_model("qwen2", layers=2, seed=7)
        return model.to(device), tokenizer
    tokenizer = tiny_tokenizer()
    torch.manual_seed(7)
    text = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=False,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **GPU_SHAPE)
    model = MultiverseForCausalLM(MultiverseConfig(text_config=text.to_dict()))
    add_multiverse_tokens(model, tokenizer)
    return model.to(device).eval(), tokenizer


def engine_run(model, tokenizer, template) -> tuple[list[int], list[int], torch.Tensor]:
    """(prompt ids, response ids, per-token log-probs) of one greedy engine run with the skeleton forced."""
    from transformers import LogitsProcessorList

    chat = [{"role": "user", "content": "What is 2+2?"}]
    prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt], device=model.device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=model.device),
            logits_processor=LogitsProcessorList([SkeletonProcessor(template, tokenizer)]),
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            tokenizer=tokenizer,
            max_new_tokens=2 * len(template.ids),
        )
    length = out.generated_tokens[0] + out.closing_tokens[0]
    response = out.sequences[0, len(prompt) : len(prompt) + length].tolist()
    return prompt, response, out.token_logprobs[0, :length].float().cpu()


def free_logprobs(model, tokenizer, prompt: list[int], response: list[int], template) -> torch.Tensor:
    """`[free slots, vocab]` log-probs of ONE full forward over prompt + response at the template's FREE slots,
    tags and eos masked as the skeleton processor masks them (the distribution the engine chose from)."""
    from modeling_multiverse import tag_ids_from_tokenizer

    ids = torch.tensor([prompt + response], device=model.device)
    with torch.inference_mode():
        logits = model(ids).logits[0].float()
    slots = [len(prompt) + j - 1 for j, t in enumerate(template.ids) if t == FREE]
    scores = logits[slots]
    scores[:, sorted(tag_ids_from_tokenizer(tokenizer).values()) + [tokenizer.eos_token_id]] = -float("inf")
    return torch.log_softmax(scores, -1).cpu()


def check(model32, model16, tokenizer, template) -> dict:
    """Both checks of the module doc on one skeleton."""
    free = [j for j, t in enumerate(template.ids) if t == FREE]
    prompt, r32, lp32 = engine_run(model32, tokenizer, template)
    full32 = free_logprobs(model32, tokenizer, prompt, r32, template)
    chosen32 = torch.tensor([r32[j] for j in free])
    engine_lp = lp32[free]
    full_lp = full32.gather(1, chosen32[:, None])[:, 0]
    _, r16, _ = engine_run(model16, tokenizer, template)
    read16 = free_logprobs(model32, tokenizer, prompt, r16, template)  # fp32 reading the bf16 output
    chosen16 = torch.tensor([r16[j] for j in free])
    regret = read16.max(-1).values - read16.gather(1, chosen16[:, None])[:, 0]
    forced16 = free_logprobs(model16, tokenizer, prompt, r32, template)  # bf16 reading the fp32 output
    agree = next((k for k, (a, b) in enumerate(zip(chosen32.tolist(), chosen16.tolist())) if a != b), len(free))
    finite = torch.isfinite(full32)
    return {
        "free_slots": len(free),
        "response_tokens": len(r32),
        "fp32_argmax_mismatches": int((full32.argmax(-1) != chosen32).sum()),
        "fp32_max_logprob_diff": float((engine_lp - full_lp).abs().max()),
        "bf16_max_regret_nats": float(regret.max()),
        "bf16_mean_regret_nats": float(regret.mean()),
        "bf16_first_greedy_tokens_equal": agree,
        "bf16_teacher_forced_max_logprob_diff": float((forced16 - full32)[finite].abs().max()),
        "bf16_teacher_forced_top1_agreement": float((forced16.argmax(-1) == full32.argmax(-1)).float().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="a tiny model on CPU: checks the script, not the GPU")
    parser.add_argument("--out", required=True, help="the JSON written")
    args = parser.parse_args(argv)
    if args.dry_run:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        print("no CUDA device: run with --dry-run to check the script on CPU", file=sys.stderr)
        return 1
    start = time.perf_counter()
    model32, tokenizer = build(args.dry_run, device)
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    results = {name: check(model32, model16, tokenizer, skeleton_template(tokenizer, body, answer=4))
               for name, body in SKELETONS.items()}
    fp32_ok = all(r["fp32_argmax_mismatches"] == 0 and r["fp32_max_logprob_diff"] <= FP32_LOGPROB_TOL
                  for r in results.values())
    bf16_ok = all(r["bf16_max_regret_nats"] <= BF16_REGRET_TOL for r in results.values())
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)",
        "shape": "tiny" if args.dry_run else GPU_SHAPE,
        "tolerances": {"fp32_logprob": FP32_LOGPROB_TOL, "bf16_regret_nats": BF16_REGRET_TOL},
        "fp32_invariant": fp32_ok,
        "bf16_vs_fp32": bf16_ok,
        "passed": fp32_ok and bf16_ok,
        "seconds": round(time.perf_counter() - start, 1),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for name, r in results.items():
        print(f"exactness {name}: fp32 mismatches {r['fp32_argmax_mismatches']}, "
              f"max dlogp {r['fp32_max_logprob_diff']:.2e}"
              f" | bf16 max regret {r['bf16_max_regret_nats']:.3f} nats, first {r['bf16_first_greedy_tokens_equal']}/"
              f"{r['free_slots']} greedy tokens equal, top-1 agreement {r['bf16_teacher_forced_top1_agreement']:.3f}")
    print(f"exactness: fp32 invariant {'PASS' if fp32_ok else 'FAIL'}, bf16 vs fp32 {'PASS' if bf16_ok else 'FAIL'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
