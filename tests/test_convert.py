"""`multiverse convert`: base folders of both families become Hub-ready Multiverse folders."""

import json

import pytest
import torch
from tiny import tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, Qwen2Config

from modeling_multiverse import TAGS, MultiverseForCausalLM, tag_ids_from_tokenizer
from multiverse.convert import convert, main


def save_base(folder, family: str, tie: bool = False):
    tokenizer = tiny_tokenizer()
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


@pytest.mark.parametrize("family,tie", [("llama", True), ("qwen2", False)])
def test_convert_keeps_the_base_model_and_adds_the_tags(tmp_path, family, tie):
    base, tokenizer = save_base(tmp_path / "base", family, tie)
    out = convert(str(tmp_path / "base"), tmp_path / "mv")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_multiverse.py", "configuration_multiverse.py",
            "structure.py", "attention.py", "tokenizer.json", "tokenizer_config.json"} <= files
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_multiverse.MultiverseForCausalLM"
    assert config["text_config"]["model_type"] == family

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    converted_tokenizer = AutoTokenizer.from_pretrained(out)
    tag_ids = tag_ids_from_tokenizer(converted_tokenizer)
    assert model.config.tag_token_ids == tag_ids
    assert converted_tokenizer.chat_template == tokenizer.chat_template
    # every tag is one token, and text without tags gives the base model's logits
    for tag in TAGS:
        assert converted_tokenizer.tokenize(f"a{tag}b") == ["a", tag, "b"]
    ids = torch.tensor([tokenizer("hello world")["input_ids"]])
    with torch.no_grad():
        expected = base(ids).logits
        got = model(ids).logits[..., : expected.shape[-1]]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_convert_of_a_tagged_checkpoint_leaves_tags_and_embeddings_alone(tmp_path):
    save_base(tmp_path / "base", "qwen2")
    first = convert(str(tmp_path / "base"), tmp_path / "mv1")
    again = convert(str(first), tmp_path / "mv2")
    a = MultiverseForCausalLM.from_pretrained(first)
    b = MultiverseForCausalLM.from_pretrained(again)
    assert a.config.tag_token_ids == b.config.tag_token_ids
    assert a.get_input_embeddings().weight.shape == b.get_input_embeddings().weight.shape
    torch.testing.assert_close(a.get_input_embeddings().weight, b.get_input_embeddings().weight)


def test_unsupported_architecture_names_the_families_and_writes_nothing(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    tiny_tokenizer().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="llama and qwen2"):
        convert(str(tmp_path / "gpt2"), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]


def test_bad_base_and_existing_output_are_refused(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="--base"):
        main(["--base", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    (tmp_path / "out").mkdir()
    save_base(tmp_path / "base", "llama")
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["--base", str(tmp_path / "base"), "--out", str(tmp_path / "out")])
    assert main(["--base", str(tmp_path / "base"), "--out", str(tmp_path / "out"), "--overwrite"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # the card, and the engine that the model's save_pretrained writes
    assert {"README.md", "multiverse_conversion.json", "custom_generate"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }
    assert (tmp_path / "out" / "custom_generate" / "generate.py").is_file()
