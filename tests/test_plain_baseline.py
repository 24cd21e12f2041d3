"""The autoregressive baseline is saved as its base's own class: it loads without remote code, gives the
logits the trained model gave, and `multiverse eval` still evaluates it with the prompt it was trained on."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from tiny import example_response, tiny_model, tiny_tokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2ForCausalLM,
)

from curator.synth import synthesize, write_jsonl
from evaluation.cli import main as eval_main
from evaluation.evaluate import is_multiverse_tokenizer
from multiverse.cli import main as cli_main
from trl_recipes import MultiverseModelConfig, MultiverseSFTConfig, RecipeArguments, train
from trl_recipes.plain import plain_model

FAST = dict(per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1, report_to="none", save_strategy="no")


def _records(n: int = 8) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": "q" * (1 + 7 * i)}],
            "completion": [{"role": "assistant", "content": example_response()}],
        }
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("family", "tie", "cls"), [("llama", True, LlamaForCausalLM), ("qwen2", False, Qwen2ForCausalLM)]
)
def test_a_trained_baseline_loads_as_the_base_class_with_the_same_logits(tmp_path, family, tie, cls):
    model, tokenizer = tiny_model(family, tie=tie)
    out = tmp_path / "ar"
    config = MultiverseSFTConfig(output_dir=str(out), max_steps=2, max_length=300, use_cpu=True, **FAST)
    data = Dataset.from_list(_records())
    train(RecipeArguments(recipe="autoregressive"), config, model=model, tokenizer=tokenizer, dataset=data)
    ids = tokenizer("<Think>\n<Parallel> 12 + 3 = 15", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.eval()(ids).logits  # the trained model, before it was saved

    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == family and saved["architectures"] == [cls.__name__] and "auto_map" not in saved
    assert not list(out.glob("*.py")) and not (out / "custom_generate").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # no trust_remote_code
    assert type(reloaded) is cls
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
    assert is_multiverse_tokenizer(reloaded_tokenizer) and reloaded_tokenizer.chat_template == tokenizer.chat_template
    assert reloaded.generation_config.eos_token_id == tokenizer.eos_token_id


def test_a_lora_trained_baseline_is_merged_and_saved_as_the_base_class(tmp_path):
    model, tokenizer = tiny_model(tie=True)  # SmolLM2's case: tied embeddings
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    out = tmp_path / "ar-lora"
    config = MultiverseSFTConfig(output_dir=str(out), max_steps=2, max_length=300, use_cpu=True, **FAST)
    lora = MultiverseModelConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])
    data = Dataset.from_list(_records())
    train(RecipeArguments(recipe="autoregressive"), config, lora, model=model, tokenizer=tokenizer, dataset=data)
    merged = model.model.layers[0].self_attn.q_proj  # PEFT wrapped `model` in place; the save merged it back
    assert isinstance(merged, torch.nn.Linear) and not torch.equal(merged.weight, before)  # the adapter is in
    ids = tokenizer("<Think>\n<Parallel> 12 + 3 = 15", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.eval()(ids).logits

    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in saved
    assert not list(out.glob("*.py")) and not (out / "custom_generate").exists() and not (out / "SPEC.md").exists()
    assert (out / "adapter" / "adapter_config.json").is_file()  # kept for PEFT users, beside the merged weights
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # no trust_remote_code, no peft
    assert type(reloaded) is LlamaForCausalLM
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "trust_remote_code" not in card and "autoregressive baseline" in card


def test_multiverse_eval_evaluates_a_plain_baseline_with_its_training_prompt(tmp_path, capsys):
    model, tokenizer = tiny_model()
    model.config.multiverse_attention = False
    plain = plain_model(model)
    folder = tmp_path / "baseline"
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data = tmp_path / "held_out.jsonl"
    write_jsonl(synthesize(2, seed=1, k=(2, 2), bags=(2, 2), task="most"), data)
    report_path = tmp_path / "report.json"
    argv = ["--model", str(folder), "--data", str(data), "--max-new-tokens", "8", "--output", str(report_path)]
    argv += ["--device", "cpu"]
    assert eval_main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["parallel_prompt"] is True  # trained on the parallel instruction, as the Multiverse model
    assert report["step_counts"]["step_units"] > 0 and 0.0 <= report["step_accuracy"] <= 1.0
    assert report["parallelism"] == 1.0  # a plain model decodes one token per step
    assert "step accuracy" in capsys.readouterr().out


def test_plain_model_refuses_a_plain_model():
    model, _ = tiny_model()
    with pytest.raises(TypeError, match="MultiverseForCausalLM"):
        plain_model(plain_model(model))


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_the_plain_baseline_decodes_through_the_engine_with_the_same_tokens(tie):
    from evaluation.baseline import engine_model
    from modeling_multiverse import MultiverseForCausalLM

    model, tokenizer = tiny_model(tie=tie, seed=3)
    model.config.multiverse_attention = False
    plain = plain_model(model)
    wrapped = engine_model(plain, tokenizer)
    assert isinstance(wrapped, MultiverseForCausalLM) and wrapped.config.multiverse_attention is False
    assert engine_model(wrapped, tokenizer) is wrapped
    ids = tokenizer(["Tom has 2 bags", "a + b"], return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        assert torch.allclose(wrapped(**ids).logits, plain(**ids).logits, atol=1e-5)
        kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        engine = wrapped.generate(**ids, tokenizer=tokenizer, **kwargs)
        stock = plain.generate(**ids, **kwargs)
    assert torch.equal(engine, stock)


def _baseline_folder(tmp_path, tie: bool = True):
    """A plain baseline folder as `save_plain_baseline` leaves it: the base's class, the tokenizer with the tags."""
    model, tokenizer = tiny_model(tie=tie, seed=5)
    model.config.multiverse_attention = False
    folder = tmp_path / "baseline"
    plain_model(model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_multiverse_generate_answers_with_a_plain_baseline_as_stock_generate_would(tmp_path, capsys, tie):
    from modeling_multiverse import prompt_ids

    folder = _baseline_folder(tmp_path, tie=tie)
    prompt = "What is 2 + 2?"
    argv = ["generate", "--model", str(folder), "--prompt", prompt, "--max-new-tokens", "8", "--precision", "fp32"]
    capsys.readouterr()
    assert cli_main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parallelism"] == 1.0 and out["blocks"] == []  # one token per step, as the baseline decodes

    plain, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([prompt_ids(tokenizer, prompt, parallel=True)])
    with torch.no_grad():
        stock = plain.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(stock[0, ids.shape[1] :]).removesuffix(tokenizer.eos_token)
    assert out["response"] == expected and out["generated_tokens"] == stock.shape[1] - ids.shape[1]


def test_multiverse_generate_refuses_a_plain_model_without_the_tags_in_one_line(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
    )
    folder = tmp_path / "random-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    capsys.readouterr()  # the save's progress bars
    assert cli_main(["generate", "--model", str(folder), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "without the Multiverse tags" in err and "multiverse convert" in err
