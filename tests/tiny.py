"""Tiny real components for tests: a character-level tokenizer with a chat template, and small
randomly initialised Llama- and Qwen2-based Multiverse models built on the fly."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from modeling_multiverse import MultiverseConfig, MultiverseForCausalLM, add_multiverse_tokens

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character and newline; `<|end|>` is eos and pad."""
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {c: i for i, c in enumerate(chars)}
    for special in ("<unk>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<|end|>", pad_token="<|end|>"
    )
    tokenizer.add_special_tokens({"extra_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(family: str = "llama", tokenizer=None, seed: int = 0, layers: int = 2, tie: bool = False):
    """A small random MultiverseForCausalLM (fp32) with the tags added; returns (model, tokenizer)."""
    tokenizer = tokenizer or tiny_tokenizer()
    torch.manual_seed(seed)
    base = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
    text_config = base(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=tie,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = MultiverseForCausalLM(MultiverseConfig(text_config=text_config.to_dict()))
    add_multiverse_tokens(model, tokenizer)
    model.eval()
    return model, tokenizer


def example_response() -> str:
    """A valid response with a nested block and uneven paths."""
    return (
        "<Think>\nLet me split this.\n<Parallel>\n<Goal>\n<Outline>1: first</Outline>\n<Outline>2: second</Outline>\n"
        "</Goal>\n<Path>\n1: work on a<Parallel>\n<Goal>\n<Outline>1.1: x</Outline>\n<Outline>1.2: y</Outline>\n</Goal>"
        "\n<Path>\n1.1: xx</Path>\n<Path>\n1.2: yyyy</Path>\n<Conclusion>\nboth</Conclusion>\n</Parallel> done</Path>"
        "\n<Path>\n2: b is short</Path>\n<Conclusion>\nSo 3.</Conclusion>\n</Parallel>\nFinal.\n</Think>"
        "\nThe answer is 3."
    )
