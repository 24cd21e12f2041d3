"""TRL recipes: SFT a converted base into a Multiverse model, and the autoregressive baseline on the same data."""

from .collator import MultiverseDataCollator
from .config import MultiverseModelConfig, MultiverseSFTConfig, RecipeArguments
from .data import ExampleError, load_sft_dataset
from .preparation import PreparationReport, prepare_dataset
from .train import TrainOutcome, train
from .trainer import MultiverseSFTTrainer

__all__ = [
    "ExampleError",
    "MultiverseDataCollator",
    "MultiverseModelConfig",
    "MultiverseSFTConfig",
    "MultiverseSFTTrainer",
    "PreparationReport",
    "RecipeArguments",
    "TrainOutcome",
    "load_sft_dataset",
    "prepare_dataset",
    "train",
]
