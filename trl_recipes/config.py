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

from dataclasses import dataclass, field

import torch
from trl import ModelConfig, SFTConfig

from .data import RECIPES


@dataclass
class RecipeArguments:
    """What to train on and how (the analogue of TRL's ScriptArguments)."""

    dataset_name: str = field(
        default=None,
        metadata={"help": "Local .jsonl/.json/.parquet, a save_to_disk folder, or a Hub dataset id.", "aliases": ["--dataset"]},
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
    columns kept for the collator, TRL's dataset preparation skipped: `prepare_dataset` did it), and bf16 /
    gradient checkpointing off on machines without a GPU (TRL turns both on by default; on CPU they only slow
    training down)."""

    output_dir: str | None = field(default=None, metadata={"help": "Where the trained model goes.", "aliases": ["--output"]})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the structure columns are not forward() arguments."}
    )
    dataset_kwargs: dict | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Must keep skip_prepare_dataset=True: rows come from `prepare_dataset`."},
    )
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; default: on when a GPU is present."})
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Gradient checkpointing; default: on when a GPU is present."}
    )

    def __post_init__(self):
        if self.bf16 is None and not torch.cuda.is_available():
            self.bf16 = False
        if self.gradient_checkpointing is None:
            self.gradient_checkpointing = torch.cuda.is_available()
        super().__post_init__()


@dataclass
class MultiverseModelConfig(ModelConfig):
    """TRL's ModelConfig with `--model` for `--model_name_or_path`."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A converted Multiverse model folder or Hub id (any causal LM for the AR recipe).", "aliases": ["--model"]},
    )
