"""The training configs build without a warning: as the demo builds them, from every YAML config, and from the
old checkpointing flag. Any warning raised while building them fails (`simplefilter("error")`)."""

import warnings
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from trl import TrlParser

from multiverse.demo import DemoSettings, sft_config
from trl_recipes import MultiverseModelConfig, MultiverseSFTConfig, RecipeArguments
from trl_recipes.grpo import GRPORecipeArguments, MultiverseGRPOConfig

CONFIGS = Path(__file__).resolve().parents[1] / "trl_recipes" / "configs"
CPU = [] if torch.cuda.is_available() else ["--bf16", "false"]  # the GPU configs ask for bf16
SFT, GRPO = (RecipeArguments, MultiverseSFTConfig), (GRPORecipeArguments, MultiverseGRPOConfig)


def checkpointing(config) -> tuple[bool, bool]:
    """(new name, old name) as the trainers read them: transformers mirrors the old name from the new one."""
    return config.activation_checkpointing, config.gradient_checkpointing


def test_the_demo_builds_its_training_config_without_a_warning(tmp_path):
    settings = DemoSettings.quick()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = sft_config(tmp_path, settings)  # what multiverse.demo._train trains with
    # off without a GPU (TRL's default is on), under both names
    assert checkpointing(config) == (torch.cuda.is_available(),) * 2
    # no pinned memory without a GPU: torch warns when a DataLoader asks for it there
    assert config.dataloader_pin_memory == torch.cuda.is_available()


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_yaml_config_parses_without_a_warning(name):
    parser = TrlParser((*(GRPO if name.startswith("grpo") else SFT), MultiverseModelConfig))
    argv = ["--config", str(CONFIGS / f"{name}.yaml"), "--model", "m", "--dataset", "d", "--output", "o", *CPU]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, config, _ = parser.parse_args_and_config(argv)
    expected = "activation_checkpointing: true" in (CONFIGS / f"{name}.yaml").read_text()
    assert checkpointing(config) == (expected, expected)


@pytest.mark.parametrize("classes", [SFT, GRPO])
@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--gradient_checkpointing", "true"], True),  # the old name, as configs for older releases write it
        (["--activation_checkpointing", "true"], True),
        (["--activation_checkpointing", "false", "--gradient_checkpointing", "true"], False),  # the new name wins
    ],
)
def test_either_checkpointing_flag_is_taken_without_a_warning(classes, flags, expected):
    parser = TrlParser((*classes, MultiverseModelConfig))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, config, _ = parser.parse_args_and_config(["--output", "o", "--use_cpu", "true", *CPU, *flags])
    assert checkpointing(config) == (expected, expected)


def test_both_checkpointing_names_are_fields_on_every_supported_release():
    """On 5.17 (no `activation_checkpointing` in TrainingArguments) the recipes add the new name themselves."""
    for config in (MultiverseSFTConfig, MultiverseGRPOConfig):
        assert {"activation_checkpointing", "gradient_checkpointing"} <= {f.name for f in fields(config)}
