"""GRPO after SFT on the built-in task: accuracy, well-formedness and parallelism before and after, on CPU.

    python benchmarks/grpo.py --out /tmp/grpo-bench                 # quick SFT in the script, then GRPO
    python benchmarks/grpo.py --out /tmp/grpo-bench --sft-model runs/demo/multiverse-model

Stages (each reused when its output exists, so an interrupted run resumes):
  1. problems   `most` problems with 2-3 people and 2-3 bags each (short responses), train / held out
  2. sft        unless --sft-model: convert the embedded SmolLM2-135M-Instruct, curate with `rules`, a short SFT
  3. before     the SFT model on the held-out problems (greedy, fork/merge engine)
  4. grpo       `trl_recipes.grpo` on the training problems: correctness + format + parallel rewards
  5. after      the GRPO model on the same held-out problems
Prints the before/after table and writes `summary.json` and `grpo.png` (reward, accuracy and parallelism per
step) into --out. fp32 throughout (no bf16 on CPUs without native support).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from runtime.paths import write_text_atomic


def log(message: str) -> None:
    print(f"[grpo-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def stage(name: str, output: Path, work) -> None:
    if output.exists():
        log(f"{name}: reused {output}")
        return
    log(f"{name} ...")
    start = time.perf_counter()
    work()
    log(f"{name}: {time.perf_counter() - start:.0f} s")


def make_problems(out: Path, args) -> None:
    from curator.synth import synthesize, write_jsonl

    rows = synthesize(args.n_train + args.n_eval, args.seed, k=(2, 3), bags=(2, 3), task="most")
    write_jsonl(rows[: args.n_train], out / "train.jsonl")
    write_jsonl(rows[args.n_train :], out / "held_out.jsonl")


def quick_sft(out: Path, args) -> None:
    from curator.export import to_datasets
    from curator.pipeline import curate_file
    from multiverse.convert import convert
    from trl_recipes import MultiverseModelConfig, MultiverseSFTConfig, RecipeArguments
    from trl_recipes.train import train

    curate_file(out / "train.jsonl", out / "curated.jsonl", backend="rules")
    to_datasets(out / "curated.jsonl", out / "train.jsonl").save_to_disk(str(out / "datasets"))
    base = convert("smollm2", out / "base", overwrite=True)
    outcome = train(
        RecipeArguments(
            recipe="multiverse", dataset_name=str(out / "datasets"), dataset_train_split="multiverse",
            pack_examples=True,
        ),
        MultiverseSFTConfig(
            output_dir=str(out / "sft-model"), max_length=512, max_steps=args.sft_steps, per_device_train_batch_size=2,
            gradient_accumulation_steps=2, learning_rate=4e-4, lr_scheduler_type="cosine", warmup_steps=2, bf16=False,
            use_cpu=True, logging_steps=1, save_strategy="no", report_to="none", seed=args.seed,
        ),
        MultiverseModelConfig(model_name_or_path=str(base)),
    )
    log(f"sft: loss {outcome.losses[0]:.3f} -> {outcome.losses[-1]:.3f}")


def evaluate_model(model_dir: Path, held_out: Path, report: Path, args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.evaluate import evaluate, load_records

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records, _ = load_records(held_out, "builtin", limit=args.n_eval)
    result = evaluate(
        model, tokenizer, records, "builtin", max_new_tokens=args.max_new_tokens, batch_size=16, parallel_prompt=True
    )
    write_text_atomic(report, json.dumps(result, indent=2) + "\n")


def run_grpo(sft_model: Path, out: Path, args) -> None:
    from trl_recipes import MultiverseModelConfig
    from trl_recipes.grpo import GRPORecipeArguments, MultiverseGRPOConfig, train_grpo

    outcome = train_grpo(
        GRPORecipeArguments(dataset_name=str(out / "train.jsonl")),
        MultiverseGRPOConfig(
            output_dir=str(out / "grpo-model"), max_steps=args.grpo_steps, num_generations=args.group,
            per_device_train_batch_size=args.group * args.prompts, max_completion_length=args.max_new_tokens,
            learning_rate=args.lr, temperature=args.temperature, beta=0.0, reward_weights=[1.0, 0.25, 0.5],
            logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=args.seed,
            lr_scheduler_type="constant",
        ),
        MultiverseModelConfig(model_name_or_path=str(sft_model)),
    )
    write_text_atomic(out / "grpo-log.json", json.dumps(outcome.log_history, indent=2) + "\n")


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [h for h in json.loads((out / "grpo-log.json").read_text()) if "reward" in h]
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, title in zip(
        axes,
        ("reward", "rewards/correctness/mean", "multiverse/parallelism"),
        ("total reward", "accuracy (training rollouts)", "parallelism (tokens / decode steps)"),
    ):
        ax.plot(steps, [h.get(key, float("nan")) for h in history], marker="o")
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
    fig.tight_layout()
    fig.savefig(out / "grpo.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--sft-model", type=Path, help="an SFT Multiverse model (e.g. `multiverse demo`'s); default: quick SFT"
    )
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-eval", type=int, default=100)
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--grpo-steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per GRPO step")
    parser.add_argument("--group", type=int, default=4, help="completions per prompt (GRPO group)")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument(
        "--temperature", type=float, default=1.0,
        help="rollout temperature (the loss divides the logits by it too); "
        "below 1 a 135M model's groups are mostly well-formed",
    )
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not 0 < args.temperature < float("inf"):
        parser.error(f"--temperature must be a positive finite number, got {args.temperature}")

    import torch

    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stage("problems", out / "held_out.jsonl", lambda: make_problems(out, args))
    sft_model = args.sft_model or out / "sft-model"
    if args.sft_model is None:
        stage("sft", sft_model / "config.json", lambda: quick_sft(out, args))  # the trainer makes the folder early
    stage(
        "before",
        out / "eval-before.json",
        lambda: evaluate_model(sft_model, out / "held_out.jsonl", out / "eval-before.json", args),
    )
    stage("grpo", out / "grpo-log.json", lambda: run_grpo(sft_model, out, args))
    plot(out)
    stage(
        "after",
        out / "eval-after.json",
        lambda: evaluate_model(out / "grpo-model", out / "held_out.jsonl", out / "eval-after.json", args),
    )

    before, after = (json.loads((out / f"eval-{n}.json").read_text()) for n in ("before", "after"))
    keys = ("accuracy", "well_formed", "parallelism", "mean_tokens", "wall_time_s")
    summary = {
        "before": {k: before[k] for k in keys},
        "after": {k: after[k] for k in keys},
        "settings": vars(args) | {"out": str(out), "sft_model": str(sft_model)},
    }
    delta_acc = after["accuracy"] - before["accuracy"]
    delta_par = after["parallelism"] - before["parallelism"]
    summary["targets"] = {
        "parallelism +0.2 at accuracy within 2 points": delta_par >= 0.2 and delta_acc >= -0.02,
        "accuracy +5 points at no loss of parallelism": delta_acc >= 0.05 and delta_par >= 0.0,
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    print(
        f"\n{len(before['records'])} held-out problems, greedy fork/merge decoding, "
        f"max_new_tokens={args.max_new_tokens}"
    )
    print(f"| measure | SFT (before) | SFT + GRPO {args.grpo_steps} steps (after) | change |")
    print("| --- | --- | --- | --- |")
    for key in keys:
        print(f"| {key} | {before[key]:.3f} | {after[key]:.3f} | {after[key] - before[key]:+.3f} |")
    for name, met in summary["targets"].items():
        print(f"- {'met' if met else 'NOT met'}: {name}")
    print(f"plot: {out / 'grpo.png'}")


if __name__ == "__main__":
    main()
