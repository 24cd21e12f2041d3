"""`multiverse train --recipe grpo`: GRPO on a Multiverse model, with fork/merge rollouts from its own engine.

    multiverse train --recipe grpo --model runs/demo/multiverse-model --dataset held_out.jsonl --output out/grpo \\
        --max-steps 50 --num-generations 4 --max-completion-length 256
    multiverse train --config trl_recipes/configs/grpo-smollm2-cpu.yaml --model M --dataset D --output O

TRL's `GRPOTrainer`, `GRPOConfig` and `TrlParser`, every GRPOConfig / ModelConfig flag included. The recipe's
parts, each in its own module:

- `trl_recipes.problems`: the problems, prompted as `multiverse eval` prompts them (the one prompt builder);
- `trl_recipes.rollout`: fork/merge rollouts from the engine, and the loss's log-probabilities under the same
  mask, positions and grammar (GRPO's ratio is exact), with one engine-options dict per run;
- `trl_recipes.rewards`: correctness, format and parallel rewards (their design is described there);
- `trl_recipes.loading`: the model loading and path checks shared with the SFT recipe.

Advantages: `scale_rewards="none"` by default (TRL's default divides by the group's std). ThreadWeaver
mean-centres only: with std scaling, a group whose answers are all right would blow its small parallel
differences up to unit-size advantages.

From Python:

Example:
    >>> outcome = train_grpo(
    ...     GRPORecipeArguments(dataset_name="problems.jsonl"),
    ...     MultiverseGRPOConfig(output_dir="out/grpo", max_steps=2, num_generations=4, max_completion_length=256),
    ...     MultiverseModelConfig(model_name_or_path="runs/demo/multiverse-model"),
    ... )  # doctest: +SKIP
    >>> [h["rewards/parallel/mean"] for h in outcome.log_history if "loss" in h]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedModel
from trl import GRPOConfig, TrlParser, get_peft_config

from evaluation.grading import KINDS
from modeling_multiverse.generation import ENGINE_DEFAULTS

from .config import (
    CHECKPOINTING_HELP,
    HAS_ACTIVATION_CHECKPOINTING,
    OLD_CHECKPOINTING_HELP,
    MultiverseModelConfig,
    settle_checkpointing,
)
from .export import save_hub_ready
from .loading import check_paths, hub_base, load_model
from .problems import PROMPTLESS_KIND, load_problems
from .rewards import REWARDS, correctness_reward, format_reward, parallel_reward
from .rollout import MultiverseGRPOTrainer, resolve_engine_options


@dataclass
class GRPORecipeArguments:
    """Data, rewards and engine options of the GRPO recipe."""

    dataset_name: str = field(
        default=None,
        metadata={
            "help": "Problems: a `multiverse eval` task file (`multiverse data synth`, MATH500, AIME, ...), or any "
            ".jsonl/.json/.parquet, save_to_disk folder or Hub dataset with `answer` and `question`, `problem` or "
            "`prompt` columns.",
            "aliases": ["--dataset"],
        },
    )
    recipe: str = field(default="grpo", metadata={"help": "Always grpo here.", "choices": ["grpo"]})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    answer_kind: str | None = field(
        default=None,
        metadata={
            "help": "Answer kind (grading, and the prompt's answer-format hint) where the data has no `kind` column; "
            "default: detected from the fields, as `multiverse eval` does (builtin for `prompt` rows).",
            "choices": list(KINDS),
        },
    )
    rewards: list[str] = field(
        default_factory=lambda: list(REWARDS),
        metadata={"help": "Reward functions, in the order of `--reward_weights`.", "choices": list(REWARDS)},
    )
    format_forced_penalty: float = field(
        default=0.5, metadata={"help": "Subtracted from the format reward when the engine forced closing tags."}
    )
    parallel_measure: str = field(
        default="steps",
        metadata={
            "help": "steps: 1 - decode steps / tokens (what the engine saved); "
            "critical_path: 1 - critical path / tokens.",
            "choices": ["steps", "critical_path"],
        },
    )
    parallel_cap: float = field(
        default=0.6, metadata={"help": "Largest parallel reward (1 - 1/parallelism is 0.6 at 2.5)."}
    )
    max_depth: int | None = field(
        default=None,
        metadata={"help": f"Engine: deepest block decoded side by side (default {ENGINE_DEFAULTS['max_depth']})."},
    )
    max_branches: int | None = field(
        default=None,
        metadata={"help": f"Engine: most outlines (paths) per goal (default {ENGINE_DEFAULTS['max_branches']})."},
    )
    max_branch_tokens: int | None = field(
        default=None,
        metadata={"help": f"Engine: most tokens one path writes (default {ENGINE_DEFAULTS['max_branch_tokens']})."},
    )


@dataclass
class MultiverseGRPOConfig(GRPOConfig):
    """GRPOConfig with `--output`, bf16 / activation checkpointing off without a GPU, and mean-centred advantages."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where the trained model goes.", "aliases": ["--output"]}
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision; default: on when a GPU is present."}
    )
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": OLD_CHECKPOINTING_HELP})
    if not HAS_ACTIVATION_CHECKPOINTING:  # transformers 5.17: take the new name too, so one config fits all releases
        activation_checkpointing: bool | None = field(default=None, metadata={"help": CHECKPOINTING_HELP})
    scale_rewards: str = field(
        default="none", metadata={"help": "none (mean-centre only, as P-GRPO), group or batch (divide by the std)."}
    )

    def __post_init__(self):
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning only speeds copies to a GPU; torch warns without one
        if self.bf16 is None and not torch.cuda.is_available():
            self.bf16 = False
        settle_checkpointing(self)
        super().__post_init__()


def reward_functions(args: GRPORecipeArguments) -> list:
    """The selected reward callables, named as TRL logs them (`rewards/<name>/mean`).

    >>> [f.__name__ for f in reward_functions(GRPORecipeArguments(rewards=["parallel", "correctness"]))]
    ['parallel', 'correctness']
    """
    answer_kind = args.answer_kind or PROMPTLESS_KIND  # for rows without a `kind` column (`load_problems` adds one)

    def correctness(completions, answer, **kwargs):
        return correctness_reward(completions, answer, answer_kind=answer_kind, **kwargs)

    def format(completions, **kwargs):  # noqa: A001 - the name TRL logs
        return format_reward(completions, forced_penalty=args.format_forced_penalty, **kwargs)

    def parallel(completions, answer, **kwargs):
        return parallel_reward(
            completions, answer, measure=args.parallel_measure, cap=args.parallel_cap, answer_kind=answer_kind,
            **kwargs,
        )

    table = {"correctness": correctness, "format": format, "parallel": parallel}
    unknown = [name for name in args.rewards if name not in table]
    if unknown or not args.rewards:
        raise ValueError(f"--rewards: unknown {unknown or 'none given'}; choose from {', '.join(REWARDS)}")
    return [table[name] for name in args.rewards]


# ---------------------------------------------------------------------------------------------
# Entry points


@dataclass
class GRPOOutcome:
    """Where the model went and TRL's log history (losses, rewards, `multiverse/*` rollout metrics)."""

    output_dir: Path
    log_history: list[dict]


def train_grpo(
    recipe_args: GRPORecipeArguments,
    config: MultiverseGRPOConfig,
    model_args: MultiverseModelConfig | None = None,
    *,
    model: PreTrainedModel | None = None,
    tokenizer=None,
    dataset: Dataset | None = None,
) -> GRPOOutcome:
    """GRPO on a Multiverse model; writes a Hub-ready folder to `config.output_dir`. As `train.train`: the model
    comes from `model_args` (name, dtype, attention, LoRA) or loaded as `model` with its `tokenizer`; the problems
    from `recipe_args.dataset_name` or as `dataset`."""
    model_args = model_args or MultiverseModelConfig()
    if (model is None) == (model_args.model_name_or_path is None):
        raise ValueError("give the model either as model_args.model_name_or_path or loaded as model=, not both")
    if (dataset is None) == (recipe_args.dataset_name is None):
        raise ValueError("give the problems either as recipe_args.dataset_name or loaded as dataset=, not both")
    # the model and output checks of the SFT recipe; problems are checked by `load_problems` (other columns)
    check_paths(model_args.model_name_or_path if model is None else model, None, config.output_dir, "multiverse")
    if dataset is None and Path(recipe_args.dataset_name).resolve() == Path(config.output_dir).resolve():
        raise ValueError(
            f"--output {config.output_dir} would overwrite the problems (--dataset {recipe_args.dataset_name})"
        )
    reward_funcs = reward_functions(recipe_args)
    problems = load_problems(
        dataset if dataset is not None else recipe_args.dataset_name,
        split=recipe_args.dataset_train_split,
        config=recipe_args.dataset_config,
        kind=recipe_args.answer_kind,
    )
    if model is None:
        base_name = hub_base(model_args.model_name_or_path)
        model, tokenizer = load_model(model_args, "multiverse")
    elif tokenizer is None:
        raise ValueError("train_grpo(model=<loaded model>) needs tokenizer=")
    else:
        base_name = model.config.name_or_path or None
    tokenizer.padding_side = "left"
    peft_config = get_peft_config(model_args)
    engine_options = resolve_engine_options(  # the one options dict of the run: rollouts and loss both read it
        max_depth=recipe_args.max_depth,
        max_branches=recipe_args.max_branches,
        max_branch_tokens=recipe_args.max_branch_tokens,
    )
    trainer = MultiverseGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=problems,
        processing_class=tokenizer,
        peft_config=peft_config,
        engine_options=engine_options,
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    training = {
        "problems": len(problems),
        "steps": trainer.state.global_step,
        "rewards": ", ".join(recipe_args.rewards),
        "reward_weights": config.reward_weights,
        "num_generations": config.num_generations,
        "lora": peft_config is not None,
    }
    output_dir = Path(config.output_dir)
    save_hub_ready(trainer, output_dir, recipe="grpo", base_model=base_name, training=training)
    return GRPOOutcome(output_dir, trainer.state.log_history)


def main(argv: list[str] | None = None) -> int:
    parser = TrlParser(
        (GRPORecipeArguments, MultiverseGRPOConfig, MultiverseModelConfig), prog="multiverse train --recipe grpo"
    )
    recipe_args, config, model_args = parser.parse_args_and_config(sys.argv[1:] if argv is None else argv)
    given = (
        ("--model", model_args.model_name_or_path),
        ("--dataset", recipe_args.dataset_name),
        ("--output", config.output_dir),
    )
    missing = [flag for flag, value in given if not value]
    if missing:
        parser.error(f"missing {', '.join(missing)}")
    outcome = train_grpo(recipe_args, config, model_args)  # bad input raises: the CLI prints it as one line
    steps = [h for h in outcome.log_history if "loss" in h]
    keys = ["loss"] + [f"rewards/{name}/mean" for name in recipe_args.rewards] + ["multiverse/parallelism"]
    for h in steps:
        print(json.dumps({"step": h.get("step"), **{k: round(h[k], 4) for k in keys if k in h}}))
    print(f"grpo: {len(steps)} logged steps; wrote {outcome.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
