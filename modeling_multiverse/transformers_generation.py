"""The one place the engine touches transformers' private generation internals.

`generate()` prepares its config, special tokens and logits processors with `GenerationMixin` methods whose
names start with an underscore; the engine reuses them so that every `generate` argument means what it
means in transformers. A release that renames one breaks only this file. Tested on transformers 5.17 (the
floor, `tests/test_transformers_floor.py`) to 5.25 (the newest at the time of writing).

    >>> config, unused = prepare_generation_config(model, None, {"max_new_tokens": 8})  # doctest: +SKIP
    >>> eos_ids, pad_id = special_token_ids(config)  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessorList


def prepare_generation_config(
    model, generation_config: GenerationConfig | None, kwargs: dict
) -> tuple[GenerationConfig, dict]:
    """(the generation config `generate` would use, the keyword arguments that are not generation options)."""
    return model._prepare_generation_config(generation_config, **kwargs)


def prepare_special_tokens(model, generation_config: GenerationConfig, has_attention_mask: bool, device) -> None:
    """Fill the config's eos/pad/bos tensors (what `special_token_ids` reads) as `generate` does."""
    model._prepare_special_tokens(generation_config, has_attention_mask, device=device)


def logits_processors(
    model, generation_config: GenerationConfig, input_ids: torch.Tensor, extra: LogitsProcessorList | None, device
) -> LogitsProcessorList:
    """The processors and warpers `generate` would apply (temperature, top-k/p, penalties, ...), `extra` merged in."""
    return model._get_logits_processor(
        generation_config=generation_config,
        input_ids_seq_length=input_ids.shape[1],
        encoder_input_ids=input_ids,
        logits_processor=extra,
        device=device,
        model_kwargs={},
    )


def special_token_ids(generation_config) -> tuple[set[int], int]:
    """(eos token ids, pad token id) of a prepared config; pad falls back to the smallest eos id, else 0."""
    eos = generation_config._eos_token_tensor
    eos_ids = set() if eos is None else set(torch.atleast_1d(eos).tolist())
    pad = generation_config._pad_token_tensor
    return eos_ids, int(pad) if pad is not None else (min(eos_ids) if eos_ids else 0)


def attention_implementation(model) -> str:
    """The attention implementation the decoder runs (`config._attn_implementation`)."""
    return model.get_decoder().config._attn_implementation


def checkpoint_path(model) -> str:
    """The folder or Hub id the model was loaded from ("" when built in memory)."""
    return getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
