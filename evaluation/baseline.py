"""A plain baseline decoded through the fork/merge engine, as the Multiverse model is: a like-for-like timing.

The autoregressive baseline is saved as its base's own class (`trl_recipes/plain.py`), so that any engine
loads it. Evaluating it, `multiverse eval` and the demo wrap it back into a `MultiverseForCausalLM` with
Multiverse Attention off (the same weights, the same forward): then both models decode through the same
engine, in the same batches, and the speedup compares the formats, not two decoding loops. A baseline
writes no blocks, so the engine decodes it one token per step, exactly as `generate` would.

Example:
    >>> plain = AutoModelForCausalLM.from_pretrained("runs/demo/autoregressive-model")  # doctest: +SKIP
    >>> model = engine_model(plain, tokenizer)  # doctest: +SKIP
    >>> model.config.multiverse_attention  # doctest: +SKIP
    False
"""

from __future__ import annotations

from modeling_multiverse import SUPPORTED_BASES, MultiverseConfig, MultiverseForCausalLM, tag_ids_from_tokenizer


def engine_model(model, tokenizer):
    """`model` itself if it is a Multiverse model or not of a supported family, else the same weights as a
    `MultiverseForCausalLM` with Multiverse Attention off and the tokenizer's tags (MissingTagsError without).

    >>> engine_model(multiverse_model, tokenizer) is multiverse_model  # doctest: +SKIP
    True
    """
    if isinstance(model, MultiverseForCausalLM) or model.config.model_type not in SUPPORTED_BASES:
        return model
    text_config = model.config.to_dict()
    for key in ("architectures", "auto_map", "_name_or_path", "transformers_version", "dtype"):
        text_config.pop(key, None)
    config = MultiverseConfig(
        text_config=text_config, tag_token_ids=dict(tag_ids_from_tokenizer(tokenizer)), multiverse_attention=False
    )
    wrapped = MultiverseForCausalLM(config).to(dtype=model.dtype, device=model.device)
    missing, unexpected = wrapped.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        name = type(model).__name__
        raise ValueError(f"cannot decode {name} through the engine: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        wrapped.tie_weights()
    wrapped.generation_config = model.generation_config
    return wrapped.eval() if not model.training else wrapped
