"""MultiverseForCausalLM: a Qwen2- or Llama-family causal LM that reads and writes the Multiverse format.

The weights are exactly the base model's (`model.*`, `lm_head`), so any Qwen2 or Llama checkpoint,
including the published Multiverse-32B, loads as is. What changes is attention and positions: given
token ids with tags and no explicit 4D mask, `forward` applies Multiverse Attention (SPEC.md §4) and the
SPEC.md §5 position ids by itself. An explicit 4D mask (or `BlockMask`) and `position_ids` pass through.

This file and its relative imports are what `save_pretrained` copies next to the weights, so a
checkpoint loads with `trust_remote_code=True` where only transformers and torch are installed.

Example:
    >>> model = AutoModelForCausalLM.from_pretrained("out/smollm2-multiverse", trust_remote_code=True)  # doctest: +SKIP
    >>> logits = model(input_ids).logits  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .attention import batch_intervals, mask_for
from .configuration_multiverse import MultiverseConfig
from .generation import multiverse_generate, write_custom_generate
from .kernel_attention import MULTIVERSE_KERNEL_ATTENTION  # also ships the opt-in kernel path with the model
from .structure import PARALLEL, TAGS


def create_multiverse_mask(
    config: MultiverseConfig,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    cache,
    dtype: torch.dtype,
):
    """Multiverse Attention inputs for `forward`, as `create_causal_mask` builds the causal ones in
    transformers' modeling files: `(attention_mask, position_ids, intervals)`, or None where the
    model stays causal.

    Structure is derived from the ids only for a fresh sequence with a `<Parallel>` whose mask is
    absent or 2D (padding): an explicit 4D mask or `BlockMask` passes through, and cached decoding
    (the engine) brings its own. The mask is what `config._attn_implementation` takes; the kernel
    path gets no mask but the O(S) `intervals (forbid_lo, forbid_hi)`, padding folded in.
    """
    if not config.multiverse_attention or not config.tag_token_ids or input_ids is None:
        return None
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
        return None
    if cache is not None and cache.get_seq_length() > 0:
        return None
    if not bool((input_ids == config.tag_token_ids[TAGS[PARALLEL]]).any()):
        return None
    position_ids, forbid_lo, forbid_hi = batch_intervals(input_ids, config.tag_token_ids, attention_mask)
    if config._attn_implementation == MULTIVERSE_KERNEL_ATTENTION:  # opted in: kernel_attention.py
        return None, position_ids, (forbid_lo, forbid_hi)
    return mask_for(forbid_lo, forbid_hi, config._attn_implementation, dtype), position_ids, None

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
    # tensor parallelism (`from_pretrained(..., distributed_config=DistributedConfig(tp_size=N))` under torchrun):
    # the base model brings its config's `base_model_tp_plan`; the head is split over the vocabulary, then gathered,
    # as in Qwen2ForCausalLM and LlamaForCausalLM, so every rank holds the same full logits and samples the same token
    _tp_plan = {"lm_head": "colwise_gather_output"}

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
        multiverse = create_multiverse_mask(self.config, input_ids, attention_mask, cache, self.dtype)
        if multiverse is not None:
            attention_mask, structure_positions, intervals = multiverse
            if intervals is not None:
                kwargs["multiverse_intervals"] = intervals
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
        """Fork/merge decoding (SPEC.md §6, `generation.multiverse_generate`); `multiverse=False` decodes plainly.

        Engine options (`max_depth`, `max_branches`, `max_branch_tokens`, `merge`) are keyword arguments or
        `generation_config` attributes. Pass `tokenizer=` unless the model was loaded from a folder with one.

        >>> out = model.generate(  # doctest: +SKIP
        ...     input_ids, tokenizer=tok, max_new_tokens=128, return_dict_in_generate=True
        ... )
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
        """Save as usual, plus the engine as `custom_generate/` and the spec as `SPEC.md` (transformers copies
        neither)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        write_custom_generate(save_directory)
        write_spec(save_directory, getattr(self.config, "_name_or_path", None))
        return result


SPEC_FILE = "SPEC.md"
"""The specification that the code's "SPEC.md §n" comments cite (section n); it ships beside the remote code."""


def write_spec(save_directory: str | Path, loaded_from: str | Path | None = None) -> Path | None:
    """Copy `SPEC.md` into a saved model folder: from this package, else from the folder the model was loaded
    from (remote code runs from a cache that holds only the `.py` files). None where neither has it."""
    target = Path(save_directory) / SPEC_FILE
    for folder in (Path(__file__).resolve().parent, loaded_from):
        source = Path(folder) / SPEC_FILE if folder else None
        if source is not None and source.is_file():
            if not (target.exists() and target.samefile(source)):
                shutil.copyfile(source, target)
            return target
    return None


MultiverseConfig.register_for_auto_class()
MultiverseForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["MultiverseForCausalLM", "MultiversePreTrainedModel"]
