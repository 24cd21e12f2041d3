"""What both recipes (SFT in `train.py`, GRPO in `grpo.py`) do before training: check the paths, load the model.

Example:
    >>> check_paths("out/smollm2-multiverse", "train.jsonl", "out/sft", "multiverse")  # doctest: +SKIP
    >>> model_args = MultiverseModelConfig(model_name_or_path="out/smollm2-multiverse")
    >>> model, tokenizer = load_model(model_args, "multiverse")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from modeling_multiverse import MultiverseForCausalLM
from runtime.paths import model_config, multiverse_config, same_path

from .config import MultiverseModelConfig
from .data import check_source


def load_model(model_args: MultiverseModelConfig, recipe: str):
    """(model, tokenizer) for a recipe. The Multiverse recipes need a converted model (tags in its tokenizer);
    the autoregressive one takes any causal LM."""
    name, dtype = model_args.model_name_or_path, model_args.dtype
    kwargs = {"dtype": torch.float32 if dtype is None else dtype if dtype == "auto" else getattr(torch, dtype)}
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
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


def hub_base(name: str) -> str:
    """The Hub id a converted folder came from (`multiverse convert` records it), else `name` itself."""
    record = Path(name) / "multiverse_conversion.json"
    return json.loads(record.read_text()).get("base_model", name) if record.is_file() else name


def check_paths(model, dataset, output_dir, recipe: str) -> None:
    """Refuse before loading anything: a missing or unconverted model, bad data, an output that would overwrite
    an input. `model` and `dataset` are checked where they are paths (a loaded model or dataset is not)."""
    if isinstance(model, str):
        (multiverse_config if recipe == "multiverse" else model_config)(model, "--model")
        if same_path(model, output_dir):
            raise ValueError(
                f"--output {output_dir} would overwrite the model it trains (--model {model}); pick another folder"
            )
    if isinstance(dataset, (str, Path)):
        check_source(str(dataset))
        if same_path(dataset, output_dir):
            raise ValueError(
                f"--output {output_dir} would overwrite the training data (--dataset {dataset}); pick another folder"
            )
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise NotADirectoryError(f"--output {output_dir}: is a file, expected a folder")
