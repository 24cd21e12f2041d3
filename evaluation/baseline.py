"""A plain baseline decoded through the fork/merge engine, as the Multiverse model is: a like-for-like timing.

The autoregressive baseline is saved as its base's own class (`trl_recipes/plain.py`), so that any engine
loads it. Evaluating it, `multiverse eval` and the demo wrap it back into a `MultiverseForCausalLM` with
Multiverse Attention off (the same weights, the same forward): then both models decode through the same
engine, in the same batches, and the speedup compares the formats, not two decoding loops. A baseline
writes no blocks, so the engine decodes it one token per step, exactly as `generate` would.
`multiverse generate` loads a baseline folder straight into that form (`engine_config`), so tensor parallel
slices it as it slices a Multiverse model.

Example:
    >>> plain = AutoModelForCausalLM.from_pretrained("runs/demo/autoregressive-model")  # doctest: +SKIP
    >>> model = engine_model(plain, tokenizer)  # doctest: +SKIP
    >>> model.config.multiverse_attention  # doctest: +SKIP
    False
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modeling_multiverse import (
    SUPPORTED_BASES,
    MissingTagsError,
    MultiverseConfig,
    MultiverseForCausalLM,
    tag_ids_from_tokenizer,
)

# Keys a saved plain config carries about its own class and file, not about the network
_OWN_KEYS = ("architectures", "auto_map", "_name_or_path", "transformers_version", "dtype", "torch_dtype")


def require_baseline_tokenizer(model_type: str, tokenizer, name: str, flag: str) -> None:
    """Refuse (ValueError) a plain model whose tokenizer lacks the twelve tags: it is a base to convert first,
    not a trained baseline (the baseline keeps the tags and the chat template of its Multiverse twin).

    >>> require_baseline_tokenizer("llama", AutoTokenizer.from_pretrained(folder), folder, "--model")  # doctest: +SKIP
    """
    try:
        tag_ids_from_tokenizer(tokenizer)
    except MissingTagsError:
        raise ValueError(
            f"{flag} {name} is a plain {model_type!r} model without the Multiverse tags: convert it "
            f"first with `multiverse convert --base {name} --out DIR` and use DIR"
        ) from None


def engine_config(config: Mapping[str, Any], tokenizer) -> MultiverseConfig:
    """The `MultiverseConfig` (Multiverse Attention off, the tokenizer's tags) that decodes a plain baseline of
    config `config` (its config.json as a dict) through the engine: pass it to `MultiverseForCausalLM.from_pretrained`
    with the baseline's folder, whose weights then load as they are.

    >>> model = MultiverseForCausalLM.from_pretrained(folder, config=engine_config(config, tokenizer))  # doctest: +SKIP
    >>> model.config.multiverse_attention  # doctest: +SKIP
    False
    """
    if config.get("model_type") not in SUPPORTED_BASES:
        raise ValueError(
            f"a {config.get('model_type')!r} model cannot decode through the engine: it decodes the "
            f"{' and '.join(SUPPORTED_BASES)} families (Qwen2/Qwen2.5, Llama/SmolLM2)"
        )
    text_config = {key: value for key, value in config.items() if key not in _OWN_KEYS}
    return MultiverseConfig(
        text_config=text_config, tag_token_ids=dict(tag_ids_from_tokenizer(tokenizer)), multiverse_attention=False
    )


def engine_model(model, tokenizer):
    """`model` itself if it is a Multiverse model or not of a supported family, else the same weights as a
    `MultiverseForCausalLM` with Multiverse Attention off and the tokenizer's tags (MissingTagsError without).

    >>> engine_model(multiverse_model, tokenizer) is multiverse_model  # doctest: +SKIP
    True
    """
    if isinstance(model, MultiverseForCausalLM) or model.config.model_type not in SUPPORTED_BASES:
        return model
    config = engine_config(model.config.to_dict(), tokenizer)
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
