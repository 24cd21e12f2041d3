"""MultiverseForCausalLM: a Qwen2- or Llama-family causal LM that reads and writes the Multiverse format.

The weights are exactly the base model's (`model.*`, `lm_head`), so any Qwen2 or Llama checkpoint,
including the published Multiverse-32B, loads as is. What changes is attention and positions: given
token ids with tags and no explicit 4D mask, `forward` applies Multiverse Attention (SPEC 4) and the
SPEC 5 position ids by itself. An explicit 4D mask (or `BlockMask`) and `position_ids` pass through.

This file and its relative imports are what `save_pretrained` copies next to the weights, so a
checkpoint loads with `trust_remote_code=True` where only transformers and torch are installed.

Example:
    >>> model = AutoModelForCausalLM.from_pretrained("out/smollm2-multiverse", trust_remote_code=True)  # doctest: +SKIP
    >>> logits = model(input_ids).logits  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .attention import multiverse_attention_inputs
from .configuration_multiverse import MultiverseConfig
from .generation import multiverse_generate, write_custom_generate
from .kernel_attention import MULTIVERSE_KERNEL_ATTENTION, interval_inputs
from .structure import TAGS

# transformers 5.17-5.23 name the KV cache `past_key_values` in forward arguments and outputs, 5.24 `cache`
_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class MultiversePreTrainedModel(PreTrainedModel):
    config_class = MultiverseConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "Qwen2DecoderLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False


class MultiverseForCausalLM(MultiversePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MultiverseConfig):
        super().__init__(config)
        self.model = AutoModel.from_config(config.text_config)
        self.vocab_size = config.text_config.vocab_size
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @property
    def tag_token_ids(self) -> dict[str, int] | None:
        return self.config.tag_token_ids

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def _applies_multiverse_attention(self, input_ids, attention_mask, cache) -> bool:
        """Structure is derived from the ids only for a fresh sequence whose mask is absent or 2D."""
        if not self.config.multiverse_attention or not self.config.tag_token_ids or input_ids is None:
            return False
        if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
            return False
        if cache is not None and cache.get_seq_length() > 0:
            return False
        return bool((input_ids == self.config.tag_token_ids[TAGS[2]]).any())  # a <Parallel> somewhere

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if cache is None and "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        if self._applies_multiverse_attention(input_ids, attention_mask, cache):
            if self.config._attn_implementation == MULTIVERSE_KERNEL_ATTENTION:  # opted in: kernel_attention.py
                # The kernel reads the O(S) intervals (padding folded in): no S x S mask is built.
                kwargs["multiverse_intervals"], structure_positions = interval_inputs(
                    input_ids, self.config.tag_token_ids, attention_mask
                )
                attention_mask = None
            else:
                attention_mask, structure_positions = multiverse_attention_inputs(
                    input_ids,
                    self.config.tag_token_ids,
                    attention_mask,
                    implementation=self.config._attn_implementation,
                    dtype=self.dtype,
                )
            if position_ids is None:
                position_ids = structure_positions
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{_CACHE: cache},
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{_CACHE: getattr(outputs, _CACHE)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def generate(self, *args, multiverse: bool = True, **kwargs):
        """Fork/merge decoding (SPEC 6, `generation.multiverse_generate`); `multiverse=False` decodes plainly.

        Engine options (`max_depth`, `max_branches`, `max_branch_tokens`) are keyword arguments or
        `generation_config` attributes. Pass `tokenizer=` unless the model was loaded from a folder with one.

        >>> out = model.generate(input_ids, tokenizer=tok, max_new_tokens=128, return_dict_in_generate=True)  # doctest: +SKIP
        """
        if not multiverse or kwargs.get("custom_generate") is not None:
            return super().generate(*args, **kwargs)
        return multiverse_generate(self, *args, **kwargs)

    def init_continuous_batching(self, *args, **kwargs):
        raise NotImplementedError(
            "Multiverse models fork and merge inside generate(); continuous batching (paged attention) "
            "cannot: call generate(), or serve with `multiverse serve`"
        )

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual, plus the engine as `custom_generate/` (transformers does not copy that folder)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        write_custom_generate(save_directory)
        return result


MultiverseConfig.register_for_auto_class()
MultiverseForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["MultiverseForCausalLM", "MultiversePreTrainedModel"]
