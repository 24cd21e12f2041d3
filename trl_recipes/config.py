"""Arguments of `multiverse train`: the recipe and data, TRL's SFTConfig, and TRL's ModelConfig.

Short aliases for the common flags: `--model` (model_name_or_path), `--dataset` (dataset_name), `--output`
(output_dir). Every SFTConfig and ModelConfig flag works as in `trl sft`, also from a YAML file (`--config`).

Example:
    >>> from trl import TrlParser
    >>> parser = TrlParser((RecipeArguments, MultiverseSFTConfig, MultiverseModelConfig))
    >>> recipe, config, model = parser.parse_args_and_config(["--model", "m", "--dataset", "d.jsonl", "--output", "o"])
    >>> recipe.recipe, config.output_dir, model.model_name_or_path
    ('multiverse', 'o', 'm')
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import TrainingArguments
from trl import ModelConfig, SFTConfig

from runtime.precision import PRECISIONS, choose_precision

from .data import RECIPES

HAS_ACTIVATION_CHECKPOINTING = "activation_checkpointing" in {f.name for f in fields(TrainingArguments)}
"""Whether the installed transformers names checkpointing `activation_checkpointing` (newer 5.x releases; setting
the old `gradient_checkpointing` there warns that it is deprecated). 5.17, the floor, has only the old name."""

CHECKPOINTING_HELP = "Activation (gradient) checkpointing; default: on when a GPU is present."
OLD_CHECKPOINTING_HELP = "Old name of --activation_checkpointing, taken by every supported transformers."


def settle_checkpointing(config: Any) -> None:
    """Settles a config's checkpointing under the name the installed transformers reads, before its `__post_init__`.

    Either name may be given (configs and flags written for old or new releases); `activation_checkpointing`
    wins. Unset, it is on where a GPU is present (TRL turns it on everywhere; on CPU it only slows training).

    >>> config = MultiverseSFTConfig(output_dir="o", gradient_checkpointing=False)  # calls settle_checkpointing
    >>> config.activation_checkpointing, config.gradient_checkpointing
    (False, False)
    """
    value = config.activation_checkpointing
    if value is None:
        value = config.gradient_checkpointing
    if value is None:
        value = torch.cuda.is_available()
    config.activation_checkpointing = value
    # transformers warns when the old name is set on a release that has the new one (it mirrors it back after)
    config.gradient_checkpointing = None if HAS_ACTIVATION_CHECKPOINTING else value


@dataclass
class RecipeArguments:
    """What to train on and how (the analogue of TRL's ScriptArguments)."""

    dataset_name: str = field(
        default=None,
        metadata={
            "help": "Local .jsonl/.json/.parquet, a save_to_disk folder, or a Hub dataset id.",
            "aliases": ["--dataset"],
        },
    )
    recipe: str = field(
        default="multiverse",
        metadata={
            "help": "multiverse: train the structure; autoregressive: the same data flattened; grpo: RL with "
            "fork/merge rollouts (trl_recipes/grpo.py, its own flags).",
            "choices": [*RECIPES, "grpo"],
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    ar_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Multiverse recipe: share of examples given flattened (AR format), the paper's mixture. They come "
            "first in the rows: `--train_sampling_strategy sequential` trains them first (a curriculum)."
        },
    )
    skip_invalid: bool = field(
        default=False, metadata={"help": "Skip and count malformed responses instead of stopping at the first one."}
    )
    pack_examples: bool = field(
        default=False,
        metadata={
            "help": "Pack several examples into each row of max_length tokens; the mask keeps them apart. "
            "(TRL's own --packing flattens rows padding-free, which loses the structure: the trainer refuses it.)"
        },
    )


@dataclass
class MultiverseSFTConfig(SFTConfig):
    """SFTConfig with `--output` for `--output_dir`, the defaults `MultiverseSFTTrainer` needs (the structure
    columns kept for the collator, TRL's dataset preparation skipped: `prepare_dataset` did it), `--precision`
    choosing bf16 by the hardware, and activation checkpointing off on machines without a GPU (`settle_checkpointing`).

    `--precision auto` (the default) trains in bf16 mixed precision only where the device runs bf16 natively
    (a CUDA GPU with bf16, or a CPU where oneDNN reports bf16) and in fp32 elsewhere: emulated bf16 is tens of
    times slower than fp32. An explicit `--bf16 true|false` wins over `auto`. `precision_reason` records why.
    """

    output_dir: str | None = field(
        default=None, metadata={"help": "Where the trained model goes.", "aliases": ["--output"]}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the structure columns are not forward() arguments."}
    )
    dataset_kwargs: dict | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Must keep skip_prepare_dataset=True: rows come from `prepare_dataset`."},
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 where the hardware runs it natively, else fp32; or fp32 / bf16.",
            "choices": list(PRECISIONS),
        },
    )
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; default: from --precision."})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": OLD_CHECKPOINTING_HELP})
    if not HAS_ACTIVATION_CHECKPOINTING:  # transformers 5.17: take the new name too, so one config fits all releases
        activation_checkpointing: bool | None = field(default=None, metadata={"help": CHECKPOINTING_HELP})
    precision_reason: str = field(default="", init=False, metadata={"help": "Why training runs in this precision."})

    def __post_init__(self):
        device = "cpu" if self.use_cpu or not torch.cuda.is_available() else "cuda"
        if self.bf16 is None and self.fp16:
            self.bf16, self.precision_reason = False, "fp16 asked for with --fp16"
        elif self.bf16 is None:
            choice = choose_precision(self.precision, device)
            self.bf16, self.precision_reason = choice.bf16, choice.reason
        elif self.precision != "auto" and self.bf16 != (self.precision == "bf16"):
            raise ValueError(f"--precision {self.precision} contradicts --bf16 {self.bf16}; give one of them")
        else:
            self.precision_reason = f"asked for with --bf16 {self.bf16}"
        if device == "cpu":
            self.dataloader_pin_memory = False  # pinning only speeds copies to a GPU; torch warns without one
        if self.bf16 and device == "cpu" and not torch.backends.mps.is_available():
            self.use_cpu = True  # transformers takes bf16 without a GPU only with use_cpu; it trains on the CPU anyway
        settle_checkpointing(self)
        super().__post_init__()


@dataclass
class MultiverseModelConfig(ModelConfig):
    """TRL's ModelConfig with `--model` for `--model_name_or_path`."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A converted Multiverse model folder or Hub id (any causal LM for the AR recipe).",
            "aliases": ["--model"],
        },
    )
