"""`multiverse train`: runs the recipe that `--recipe` names, on the command line or in the `--config` YAML.

    multiverse train --recipe multiverse --model M --dataset D --output O   # SFT (train.py)
    multiverse train --recipe grpo --model M --dataset D --output O         # GRPO (grpo.py)
    accelerate launch --config_file trl_recipes/configs/accelerate/fsdp-2x8.yaml -m trl_recipes.cli --config C

The recipes have their own flags (TRL's SFTConfig or GRPOConfig), so the recipe is read before either parser.
Both recipe modules are imported only here, so neither imports the other.

Example:
    >>> requested_recipe(["--model", "m", "--recipe", "grpo"])
    'grpo'
"""

from __future__ import annotations

import sys
from pathlib import Path


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `flag` as `--flag value` or `--flag=value`, else None."""
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
    return None


def requested_recipe(argv: list[str]) -> str | None:
    """`--recipe` from the command line, else from the `--config` YAML, else None (the SFT parser's default).

    >>> requested_recipe(["--recipe=autoregressive"])
    'autoregressive'
    """
    recipe = _flag_value(argv, "--recipe")
    config = _flag_value(argv, "--config")
    if recipe is None and config is not None and Path(config).is_file():
        import yaml

        return (yaml.safe_load(Path(config).read_text()) or {}).get("recipe")
    return recipe


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if requested_recipe(argv) == "grpo":
        from .grpo import main as recipe_main
    else:
        from .train import main as recipe_main
    return recipe_main(argv)


if __name__ == "__main__":
    sys.exit(main())
