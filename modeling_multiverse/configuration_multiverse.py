"""MultiverseConfig: a Qwen2- or Llama-family base config plus the ids of the twelve Multiverse tags.

Example:
    >>> from transformers import LlamaConfig
    >>> config = MultiverseConfig(text_config=LlamaConfig(num_hidden_layers=2).to_dict())
    >>> config.text_config.model_type
    'llama'
"""

from __future__ import annotations

import re

import transformers

MIN_TRANSFORMERS = (5, 17)
"""Oldest transformers minor release this code runs on (also `pyproject.toml`'s floor)."""


def _check_transformers_version() -> None:
    """One clear line instead of an obscure failure further down on a transformers that is too old."""
    found = transformers.__version__
    if tuple(int(part) for part in re.findall(r"\d+", found)[:2]) < MIN_TRANSFORMERS:
        floor = ".".join(map(str, MIN_TRANSFORMERS))
        raise ImportError(
            f"multiverse needs transformers>={floor} (found {found}): pip install -U 'transformers>={floor}'"
        )


_check_transformers_version()

from huggingface_hub.dataclasses import strict  # noqa: E402
from transformers import AutoConfig, PreTrainedConfig  # noqa: E402
from transformers.models.auto.configuration_auto import CONFIG_MAPPING  # noqa: E402

try:  # transformers >= 5.20 declares sub-configs with a spec, older 5.x with a class
    from transformers.configuration_utils import SubConfigSpec
except ImportError:
    SubConfigSpec = None

SUPPORTED_BASES = ("llama", "qwen2")
"""Model types of the base families a Multiverse model can be built on."""


@strict
class MultiverseConfig(PreTrainedConfig):
    """Configuration of a `MultiverseForCausalLM`.

    Args:
        text_config: the base model's config (a `LlamaConfig` or `Qwen2Config`, or its dict).
        tag_token_ids: `{tag: token id}` for the twelve tags; set by `add_multiverse_tokens`.
        multiverse_attention: apply Multiverse Attention and positions automatically in `forward`
            when no explicit 4D mask is given (turn off to use the model as a plain causal LM).
    """

    model_type = "multiverse"
    if SubConfigSpec is not None:
        sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}
    else:
        sub_configs = {"text_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    tag_token_ids: dict | None = None
    multiverse_attention: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # built here, not by the base class: transformers < 5.20 leaves sub-configs to the subclass
        if self.text_config is None:
            self.text_config = AutoConfig.for_model("llama")
        elif isinstance(self.text_config, dict):
            fields = dict(self.text_config)
            self.text_config = AutoConfig.for_model(fields.pop("model_type", "llama"), **fields)
        super().__post_init__(**kwargs)
        if self.text_config.model_type not in SUPPORTED_BASES:
            raise ValueError(
                f"unsupported base architecture {self.text_config.model_type!r}: Multiverse supports the "
                f"{' and '.join(SUPPORTED_BASES)} families (Qwen2/Qwen2.5, Llama/SmolLM2)"
            )
        # the base model decides whether input and output embeddings are tied
        self.tie_word_embeddings = bool(self.text_config.tie_word_embeddings)


# Registered on import, as remote code too: AutoTokenizer reads config.json before tokenizer_config.json, so
# once a Multiverse model is loaded, `AutoTokenizer.from_pretrained(folder)` finds the type without a prompt.
# A registration already made stays: remote code loaded into a process that imported this package must not
# swap the package's config class for its own copy, which the package's AutoModel mapping does not know.
if MultiverseConfig.model_type not in CONFIG_MAPPING:
    AutoConfig.register(MultiverseConfig.model_type, MultiverseConfig)

__all__ = ["MultiverseConfig", "SUPPORTED_BASES"]
