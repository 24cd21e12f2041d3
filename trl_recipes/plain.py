"""The autoregressive baseline saved as its base's own class, so that any engine loads it as it is.

A baseline trained from a converted base is a `MultiverseForCausalLM` with Multiverse Attention off: a plain
causal LM of the base family with twelve added tokens. Saved as such it needs our remote code, which stock
servers (`transformers serve`, vLLM) refuse. `save_plain_baseline` rewrites its folder as the base family's
class (`LlamaForCausalLM` for SmolLM2, `Qwen2ForCausalLM` for Qwen2): same weights, same tokenizer with the
tags and the chat template, no `auto_map`, no modeling files, no `custom_generate/`, no `SPEC.md`. `multiverse
eval` and `multiverse generate` still decode it (its tokenizer has the tags, so it gets the prompt it was trained
on). A LoRA-trained baseline is merged first (`trl_recipes/export.py`), then saved the same way.

Example:
    >>> save_plain_baseline(trained_model, "out/autoregressive-model")  # doctest: +SKIP
    >>> AutoModelForCausalLM.from_pretrained("out/autoregressive-model").__class__.__name__  # doctest: +SKIP
    'LlamaForCausalLM'
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import AutoModelForCausalLM, PreTrainedModel

from modeling_multiverse import MultiverseForCausalLM
from modeling_multiverse.modeling_multiverse import SPEC_FILE

# What a Multiverse model's save_pretrained writes besides the tokenizer: replaced by the plain model's own files
_MULTIVERSE_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", SPEC_FILE
)


def plain_model(model: MultiverseForCausalLM) -> PreTrainedModel:
    """The base family's own causal LM holding `model`'s weights (a new module tree; `model` is left as it is).

    >>> plain_model(multiverse_model).config.model_type  # doctest: +SKIP
    'llama'
    """
    if not isinstance(model, MultiverseForCausalLM):
        raise TypeError(f"expected a MultiverseForCausalLM, got {type(model).__name__}")
    config = model.config.text_config.__class__.from_dict(model.config.text_config.to_dict())
    config.vocab_size = model.get_input_embeddings().weight.shape[0]
    config.tie_word_embeddings = bool(model.config.tie_word_embeddings)
    for name in ("auto_map", "architectures"):  # the plain class names itself when it saves
        if hasattr(config, name):
            delattr(config, name)
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"the baseline's weights do not fit {type(plain).__name__}: missing {missing}, unexpected {unexpected}"
        )
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    return plain.eval() if not model.training else plain


def save_plain_baseline(model: MultiverseForCausalLM, folder: str | Path) -> Path:
    """Replace the Multiverse weights, config and code of a saved baseline `folder` with the plain model's.

    The tokenizer, the model card and the trainer's files stay (an `adapter/` too). A folder with no Multiverse
    save in it yet gets the plain model's files alone. Returns the folder.
    """
    folder = Path(folder)
    plain = plain_model(model)
    for name in _MULTIVERSE_FILES:
        (folder / name).unlink(missing_ok=True)
    for path in folder.glob("model-*.safetensors"):
        path.unlink()
    for path in folder.glob("*.py"):  # the remote code save_pretrained copied next to the weights
        path.unlink()
    shutil.rmtree(folder / "custom_generate", ignore_errors=True)
    plain.save_pretrained(folder)
    return folder
