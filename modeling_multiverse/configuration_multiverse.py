"""MultiverseConfig: a Qwen2- or Llama-family base config plus the ids of the twelve Multiverse tags.

Example:
    >>> from transformers import LlamaConfig
    >>> config = MultiverseConfig(text_config=LlamaConfig(num_hidden_layers=2).to_dict())
    >>> config.text_config.model_type
    'llama'
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

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
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    tag_token_ids: dict | None = None
    multiverse_attention: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.text_config.model_type not in SUPPORTED_BASES:
            raise ValueError(
                f"unsupported base architecture {self.text_config.model_type!r}: Multiverse supports the "
                f"{' and '.join(SUPPORTED_BASES)} families (Qwen2/Qwen2.5, Llama/SmolLM2)"
            )
        # the base model decides whether input and output embeddings are tied
        self.tie_word_embeddings = bool(self.text_config.tie_word_embeddings)


__all__ = ["MultiverseConfig", "SUPPORTED_BASES"]
