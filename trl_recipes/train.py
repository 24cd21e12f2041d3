"""`multiverse train`: SFT a converted base into a Multiverse model, or train the autoregressive baseline.

    multiverse train --recipe multiverse --model out/smollm2-multiverse --dataset train.jsonl --output out/sft \\
        --max-steps 4 --max-length 512
    multiverse train --config trl_recipes/configs/smollm2-135m-cpu.yaml --dataset train.jsonl --output out/sft
    accelerate launch --config_file trl_recipes/configs/accelerate/fsdp-2x8.yaml -m trl_recipes.train \\
        --config trl_recipes/configs/qwen2.5-32b-fsdp.yaml

Every SFTConfig / ModelConfig flag of `trl sft` works too (`--use_peft`, `--learning_rate`, `--packing`, ...).
From Python, `train(...)` does the same:

Example:
    >>> outcome = train("out/smollm2-multiverse", "train.jsonl", "out/sft", recipe="autoregressive", max_steps=4)  # doctest: +SKIP
    >>> outcome.losses[-1] < outcome.losses[0]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl import TrlParser, get_peft_config

from modeling_multiverse import MultiverseForCausalLM, tag_ids_from_tokenizer

from .config import MultiverseModelConfig, MultiverseSFTConfig, RecipeArguments
from .data import load_sft_dataset
from .export import save_hub_ready
from .preparation import PreparationReport, prepare_dataset
from .trainer import MultiverseSFTTrainer


@dataclass
class TrainOutcome:
    """Where the model went, the logged training losses, and what data preparation kept and skipped."""

    output_dir: Path
    losses: list[float]
    report: PreparationReport
    log_history: list[dict] = field(repr=False, default_factory=list)


def load_model(name: str, recipe: str, *, dtype: str | None = None, attn_implementation: str | None = None):
    """(model, tokenizer) for a recipe. The Multiverse recipe needs a converted model (tags in its tokenizer);
    the autoregressive one takes any causal LM."""
    kwargs = {"dtype": torch.float32 if dtype is None else dtype if dtype == "auto" else getattr(torch, dtype)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    config = AutoConfig.from_pretrained(name)
    if config.model_type == "multiverse":
        model = MultiverseForCausalLM.from_pretrained(name, **kwargs)
    elif recipe == "multiverse":
        raise ValueError(
            f"--model {name} is a plain {config.model_type!r} model: convert it first with "
            f"`multiverse convert --base {name} --out DIR` and train DIR"
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name)
    return model, tokenizer


def _hub_base(name: str) -> str:
    """The Hub id a converted folder came from (`multiverse convert` records it), else `name` itself."""
    record = Path(name) / "multiverse_conversion.json"
    return json.loads(record.read_text()).get("base_model", name) if record.is_file() else name


def train(
    model: str | PreTrainedModel,
    dataset: str | Dataset,
    output_dir: str | Path,
    *,
    recipe: str = "multiverse",
    tokenizer=None,
    peft_config: PeftConfig | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    ar_fraction: float = 0.0,
    ar_curriculum: bool = False,
    skip_invalid: bool = False,
    dtype: str | None = None,
    attn_implementation: str | None = None,
    args: MultiverseSFTConfig | None = None,
    **config_kwargs,
) -> TrainOutcome:
    """Train `model` on `dataset` with one recipe and write a Hub-ready folder to `output_dir`.

    `model` is a path/Hub id or a loaded model (then pass `tokenizer`); `config_kwargs` are SFTConfig fields
    (`max_steps`, `max_length`, `packing`, `learning_rate`, ...), or pass a whole `args`.
    """
    if args is not None and config_kwargs:
        raise ValueError(f"pass SFTConfig fields either in args= or as keywords, not both (got {sorted(config_kwargs)})")
    args = args or MultiverseSFTConfig(output_dir=str(output_dir), **config_kwargs)
    args.output_dir = str(output_dir)
    if isinstance(model, str):
        base_name = _hub_base(model)
        model, tokenizer = load_model(model, recipe, dtype=dtype, attn_implementation=attn_implementation)
    elif tokenizer is None:
        raise ValueError("train(model=<loaded model>) needs tokenizer=")
    else:
        base_name = model.config.name_or_path or None
    if recipe == "autoregressive" and isinstance(model, MultiverseForCausalLM):
        model.config.multiverse_attention = False  # the baseline is a plain causal LM, also when it generates
    if peft_config is not None and recipe == "multiverse" and not model.config.tie_word_embeddings:
        # LoRA leaves embeddings frozen: train the tag rows, which start as mean embeddings (SPEC 2). Not with
        # tied embeddings: PEFT then wraps lm_head too, and TRL's fused head cannot read the wrapped weight.
        tag_rows = sorted(tag_ids_from_tokenizer(tokenizer).values())
        peft_config.trainable_token_indices = {"embed_tokens": tag_rows}

    source = dataset if isinstance(dataset, Dataset) else str(dataset)
    prepared, report = prepare_dataset(
        load_sft_dataset(source, config=dataset_config, split=dataset_split),
        tokenizer,
        recipe=recipe,
        max_length=args.max_length,
        ar_fraction=ar_fraction,
        skip_invalid=skip_invalid,
        packing=args.packing,
        seed=args.seed,
    )
    if ar_curriculum:
        args.train_sampling_strategy = "sequential"  # prepared rows put the AR-format share first
    trainer = MultiverseSFTTrainer(
        model=model, args=args, train_dataset=prepared, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    training = {
        "examples": report.examples,
        "skipped": len(report.skipped),
        "autoregressive-format examples": report.autoregressive,
        "truncated": report.truncated,
        "max_length": args.max_length,
        "steps": trainer.state.global_step,
        "packing": args.packing,
        "lora": peft_config is not None,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "precision_reason": getattr(args, "precision_reason", ""),
    }
    save_hub_ready(trainer, output_dir, recipe=recipe, base_model=base_name, training=training)
    history = trainer.state.log_history
    return TrainOutcome(Path(output_dir), [h["loss"] for h in history if "loss" in h], report, history)


def main(argv: list[str] | None = None) -> int:
    parser = TrlParser((RecipeArguments, MultiverseSFTConfig, MultiverseModelConfig), prog="multiverse train")
    recipe_args, config, model_args = parser.parse_args_and_config(sys.argv[1:] if argv is None else argv)
    missing = [flag for flag, value in (("--model", model_args.model_name_or_path), ("--dataset", recipe_args.dataset_name), ("--output", config.output_dir)) if not value]
    if missing:
        parser.error(f"missing {', '.join(missing)}")
    outcome = train(
        model_args.model_name_or_path,
        recipe_args.dataset_name,
        config.output_dir,
        recipe=recipe_args.recipe,
        peft_config=get_peft_config(model_args),
        dataset_config=recipe_args.dataset_config,
        dataset_split=recipe_args.dataset_train_split,
        ar_fraction=recipe_args.ar_fraction,
        ar_curriculum=recipe_args.ar_curriculum,
        skip_invalid=recipe_args.skip_invalid,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        args=config,
    )
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
