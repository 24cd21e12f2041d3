"""`multiverse train`: SFT a converted base into a Multiverse model, or train the autoregressive baseline.

    multiverse train --recipe multiverse --model out/smollm2-multiverse --dataset train.jsonl --output out/sft \\
        --max-steps 4 --max-length 512
    multiverse train --config trl_recipes/configs/smollm2-135m-cpu.yaml --dataset train.jsonl --output out/sft
    accelerate launch --config_file trl_recipes/configs/accelerate/fsdp-2x8.yaml -m trl_recipes.train \\
        --config trl_recipes/configs/qwen2.5-32b-fsdp.yaml

A TrlParser script, as TRL's `trl sft`: every SFTConfig / ModelConfig flag works (`--use_peft`,
`--learning_rate`, ...), from the command line or a YAML file. From Python, `train` takes the same three
parsed dataclasses:

Example:
    >>> outcome = train(
    ...     RecipeArguments(recipe="autoregressive", dataset_name="train.jsonl"),
    ...     MultiverseSFTConfig(output_dir="out/sft", max_steps=4),
    ...     MultiverseModelConfig(model_name_or_path="out/smollm2-multiverse"),
    ... )  # doctest: +SKIP
    >>> outcome.losses[-1] < outcome.losses[0]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import PreTrainedModel
from trl import TrlParser, get_peft_config

from modeling_multiverse import MultiverseForCausalLM, tag_ids_from_tokenizer

from .config import MultiverseModelConfig, MultiverseSFTConfig, RecipeArguments
from .data import load_sft_dataset
from .export import save_hub_ready
from .loading import check_paths, hub_base, load_model
from .preparation import PreparationReport, prepare_dataset
from .trainer import MultiverseSFTTrainer


@dataclass
class TrainOutcome:
    """Where the model went, the logged training losses, and what data preparation kept and skipped."""

    output_dir: Path
    losses: list[float]
    report: PreparationReport
    log_history: list[dict] = field(repr=False, default_factory=list)


def train(
    recipe_args: RecipeArguments,
    config: MultiverseSFTConfig,
    model_args: MultiverseModelConfig | None = None,
    *,
    model: PreTrainedModel | None = None,
    tokenizer=None,
    dataset: Dataset | None = None,
) -> TrainOutcome:
    """Train with one recipe and write a Hub-ready folder to `config.output_dir`.

    The model comes from `model_args` (name, dtype, attention, LoRA), or is passed loaded as `model` with its
    `tokenizer`; the data comes from `recipe_args.dataset_name`, or is passed as `dataset`.
    """
    model_args = model_args or MultiverseModelConfig()
    if (model is None) == (model_args.model_name_or_path is None):
        raise ValueError("give the model either as model_args.model_name_or_path or loaded as model=, not both")
    if (dataset is None) == (recipe_args.dataset_name is None):
        raise ValueError("give the data either as recipe_args.dataset_name or loaded as dataset=, not both")
    recipe = recipe_args.recipe
    check_paths(
        model_args.model_name_or_path if model is None else model,
        recipe_args.dataset_name if dataset is None else dataset,
        config.output_dir,
        recipe,
    )
    if model is None:
        base_name = hub_base(model_args.model_name_or_path)
        model, tokenizer = load_model(model_args, recipe)
    elif tokenizer is None:
        raise ValueError("train(model=<loaded model>) needs tokenizer=")
    else:
        base_name = model.config.name_or_path or None
    if recipe == "autoregressive" and isinstance(model, MultiverseForCausalLM):
        model.config.multiverse_attention = False  # the baseline is a plain causal LM, also when it generates
    peft_config = get_peft_config(model_args)
    if peft_config is not None and recipe == "multiverse" and not model.config.tie_word_embeddings:
        # LoRA leaves embeddings frozen: train the tag rows, which start as mean embeddings (SPEC.md §2). Not with
        # tied embeddings: PEFT then wraps lm_head too, and TRL's fused head cannot read the wrapped weight.
        tag_rows = sorted(tag_ids_from_tokenizer(tokenizer).values())
        peft_config.trainable_token_indices = {"embed_tokens": tag_rows}

    source = dataset if dataset is not None else recipe_args.dataset_name
    prepared, report = prepare_dataset(
        load_sft_dataset(
            source, config=recipe_args.dataset_config, split=recipe_args.dataset_train_split, fallback_split=recipe
        ),
        tokenizer,
        recipe=recipe,
        max_length=config.max_length,
        ar_fraction=recipe_args.ar_fraction,
        skip_invalid=recipe_args.skip_invalid,
        packing=recipe_args.pack_examples,
        seed=config.seed,
    )
    trainer = MultiverseSFTTrainer(
        model=model, args=config, train_dataset=prepared, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    training = {
        "examples": report.examples,
        "skipped": len(report.skipped),
        "autoregressive-format examples": report.autoregressive,
        "truncated": report.truncated,
        "max_length": config.max_length,
        "steps": trainer.state.global_step,
        "packing": recipe_args.pack_examples,
        "lora": peft_config is not None,
        "precision": "bf16" if config.bf16 else "fp16" if config.fp16 else "fp32",
        "precision_reason": getattr(config, "precision_reason", ""),
    }
    output_dir = Path(config.output_dir)
    # the baseline, LoRA-trained or not, is saved as its base's own class (trl_recipes/export.py)
    save_hub_ready(trainer, output_dir, recipe=recipe, base_model=base_name, training=training)
    history = trainer.state.log_history
    return TrainOutcome(output_dir, [h["loss"] for h in history if "loss" in h], report, history)


def make_parser() -> TrlParser:
    return TrlParser((RecipeArguments, MultiverseSFTConfig, MultiverseModelConfig), prog="multiverse train")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    recipe_args, config, model_args = parser.parse_args_and_config(sys.argv[1:] if argv is None else argv)
    if recipe_args.recipe == "grpo":  # reached as `python -m trl_recipes.train`; the dispatcher sends it to grpo.py
        parser.error("--recipe grpo has its own flags: run `multiverse train --recipe grpo` or `-m trl_recipes.cli`")
    given = (
        ("--model", model_args.model_name_or_path),
        ("--dataset", recipe_args.dataset_name),
        ("--output", config.output_dir),
    )
    missing = [flag for flag, value in given if not value]
    if missing:
        parser.error(f"missing {', '.join(missing)}")
    if not 0.0 <= recipe_args.ar_fraction <= 1.0:
        raise ValueError(f"--ar_fraction must be in [0, 1], got {recipe_args.ar_fraction}")
    outcome = train(recipe_args, config, model_args)
    report = outcome.report
    for _, reason in report.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    losses = ", ".join(f"{x:.4f}" for x in outcome.losses) or "none logged"
    print(
        f"{recipe_args.recipe}: trained on {report.examples - len(report.skipped)} of {report.examples} examples "
        f"({len(report.skipped)} skipped, {report.truncated} truncated) in {report.rows} rows; losses: {losses}; "
        f"precision {'bf16' if config.bf16 else 'fp16' if config.fp16 else 'fp32'} ({config.precision_reason}); "
        f"wrote {outcome.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
