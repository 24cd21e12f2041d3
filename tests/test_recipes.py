"""The recipes end to end on tiny random models: training, the mask the trainer applies, reloading, LoRA,
the CLI with a YAML config, and a 2-process DDP run through `accelerate launch`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from tiny import example_response, tiny_model
from transformers import AutoModelForCausalLM

from modeling_multiverse import MultiverseForCausalLM, mask_for
from trl_recipes import (
    MultiverseDataCollator,
    MultiverseModelConfig,
    MultiverseSFTConfig,
    MultiverseSFTTrainer,
    RecipeArguments,
    prepare_dataset,
    train,
)
from trl_recipes.train import main

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1, report_to="none", save_strategy="no")


def records(n: int = 8) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": "q" * (1 + 7 * i)}],
            "completion": [{"role": "assistant", "content": example_response()}],
        }
        for i in range(n)
    ]


@pytest.fixture()
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records()))
    return path


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def logged_losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def test_multiverse_recipe_trains_and_reloads_with_remote_code(tmp_path):
    model, tokenizer = tiny_model()
    config = MultiverseSFTConfig(output_dir=str(tmp_path / "out"), max_steps=6, max_length=300, **FAST)
    outcome = train(RecipeArguments(), config, model=model, tokenizer=tokenizer, dataset=Dataset.from_list(records()))
    losses = logged_losses(outcome.output_dir)
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.3
    ids = tokenizer(example_response(), return_tensors="pt")["input_ids"]
    torch.save(ids, tmp_path / "ids.pt")
    # a fresh interpreter that never imports modeling_multiverse: only the folder's remote code can load it
    script = (
        "import sys, torch; from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "assert 'modeling_multiverse' not in sys.modules, 'the local package was imported'\n"
        "torch.save(m(torch.load(sys.argv[2])).logits, sys.argv[3])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(outcome.output_dir), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "logits.pt"), model.eval()(ids).logits, atol=1e-5)
    assert (outcome.output_dir / "README.md").exists()
    assert (outcome.output_dir / "custom_generate" / "generate.py").is_file()
    assert "<Path>" in (outcome.output_dir / "tokenizer.json").read_text()
    assert (outcome.output_dir / "SPEC.md").is_file()
    assert "[SPEC.md](SPEC.md)" in (outcome.output_dir / "README.md").read_text()


def test_trainer_loss_is_the_multiverse_attention_loss():
    """The trainer (fused head, backbone hook) gives the loss of the model's own Multiverse forward, not causal."""
    model, tokenizer = tiny_model()
    prepared, _ = prepare_dataset(Dataset.from_list(records(3)), tokenizer, max_length=None)
    config = MultiverseSFTConfig(output_dir="unused", **FAST)
    trainer = MultiverseSFTTrainer(model=model, args=config, train_dataset=prepared, processing_class=tokenizer)
    batch = {k: v.to(model.device) for k, v in trainer.data_collator(list(prepared)).items()}
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        reference = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
    model.config.multiverse_attention = False
    with torch.no_grad():
        causal = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
    assert torch.allclose(loss, reference, atol=1e-5)
    assert not torch.allclose(loss, causal, atol=1e-3)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"packing": True}, "packing"),
        ({"padding_free": True}, "padding_free"),
        ({"remove_unused_columns": True}, "remove_unused_columns"),
        ({"dataset_kwargs": {}}, "skip_prepare_dataset"),
    ],
)
def test_trainer_refuses_a_setting_that_loses_the_structure_and_leaves_the_config_alone(setting, named):
    model, tokenizer = tiny_model()
    prepared, _ = prepare_dataset(Dataset.from_list(records(2)), tokenizer, max_length=None)
    config = MultiverseSFTConfig(output_dir="unused", **FAST, **setting)
    before = config.to_dict()
    with pytest.raises(ValueError, match=named):
        MultiverseSFTTrainer(model=model, args=config, train_dataset=prepared, processing_class=tokenizer)
    assert config.to_dict() == before


def _loss_and_grads(model, batch, implementation):
    model.set_attn_implementation(implementation)
    model.zero_grad()
    mask = mask_for(batch["forbid_lo"], batch["forbid_hi"], implementation, model.dtype)
    loss = model(
        input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"], labels=batch["labels"]
    ).loss
    if torch.is_grad_enabled():
        loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention has no backward on CPU")
def test_dense_and_flex_attention_give_the_same_loss_and_gradients():
    model, tokenizer = tiny_model()
    model.cuda()
    prepared, _ = prepare_dataset(Dataset.from_list(records(3)), tokenizer, max_length=None)
    batch = {k: v.cuda() for k, v in MultiverseDataCollator(tokenizer.pad_token_id)(list(prepared)).items()}
    dense_loss, dense_grads = _loss_and_grads(model, batch, "sdpa")
    flex_loss, flex_grads = _loss_and_grads(model, batch, "flex_attention")
    assert torch.allclose(dense_loss, flex_loss, atol=1e-5)
    assert len(dense_grads) == len(flex_grads) > 0
    for a, b in zip(dense_grads, flex_grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_dense_and_flex_attention_give_the_same_loss_on_cpu():
    """CPU flex_attention compiles (about 20 s) and has no backward: the loss only."""
    model, tokenizer = tiny_model()
    prepared, _ = prepare_dataset(Dataset.from_list(records(3)), tokenizer, max_length=None)
    batch = MultiverseDataCollator(tokenizer.pad_token_id)(list(prepared))
    with torch.no_grad():
        dense_loss, _ = _loss_and_grads(model, batch, "sdpa")
        flex_loss, _ = _loss_and_grads(model, batch, "flex_attention")
    assert torch.allclose(dense_loss, flex_loss, atol=1e-5)


def test_autoregressive_recipe_from_the_cli_with_a_yaml_config(tmp_path, model_dir, data_file):
    config = tmp_path / "recipe.yaml"
    config.write_text(
        "recipe: autoregressive\nmax_length: 300\nper_device_train_batch_size: 4\nlearning_rate: 0.003\n"
        "logging_steps: 1\nreport_to: none\nsave_strategy: 'no'\npack_examples: true\n"
    )
    out = tmp_path / "ar"
    assert main([
        "--config", str(config), "--model", str(model_dir), "--dataset", str(data_file), "--output", str(out),
        "--max-steps", "3",
    ]) == 0
    losses = logged_losses(out)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    reloaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    # the baseline generates as a plain causal LM: saved as the base's own class (issue 27)
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    assert getattr(reloaded.config, "multiverse_attention", False) is False


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_lora_adapter_saves_reloads_and_merges(tmp_path, data_file, tie):
    model, tokenizer = tiny_model(tie=tie)  # untied: the tag rows train as PEFT trainable tokens
    model_dir = tmp_path / "base"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "lora"
    lora = MultiverseModelConfig(
        model_name_or_path=str(model_dir), use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
        lora_target_modules=["q_proj", "v_proj"],
    )
    config = MultiverseSFTConfig(output_dir=str(out), max_steps=3, max_length=300, **{**FAST, "learning_rate": 3e-2})
    outcome = train(RecipeArguments(dataset_name=str(data_file)), config, lora)
    assert (out / "adapter" / "adapter_config.json").exists() and all(math.isfinite(x) for x in outcome.losses)
    merged = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    base = MultiverseForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        before = base(ids).logits
        adapted = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload()
        after = adapted(ids).logits
        assert torch.allclose(merged(ids).logits, after, atol=1e-5)
    assert not torch.allclose(before, after, atol=1e-4)  # the adapter changed the model
    tags = sorted(merged.config.tag_token_ids.values())
    others = [i for i in range(merged.vocab_size) if i not in tags]
    original = MultiverseForCausalLM.from_pretrained(model_dir)  # `base` was merged in place
    trained, frozen = merged.get_input_embeddings().weight, original.get_input_embeddings().weight
    assert torch.equal(trained[others], frozen[others])
    assert torch.equal(trained[tags], frozen[tags]) == tie  # untied: the tag rows were trained too


def test_two_process_ddp_run_through_accelerate_launch(tmp_path, model_dir, data_file):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", "-m", "trl_recipes.train",
        "--model", str(model_dir), "--dataset", str(data_file), "--output", str(out), "--max-steps", "2",
        "--max-length", "300", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--report_to", "none",
        "--save_strategy", "no", "--use_cpu",  # multi-process CPU: DDP over gloo
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert state["epoch"] == 1.0  # 2 processes x 2 rows x 2 steps = the 8 examples (one process would be at 0.5)
    assert len(logged_losses(out)) == 2 and all(math.isfinite(x) for x in logged_losses(out))
    assert "trained on 8 of 8 examples" in done.stdout


@pytest.mark.parametrize("name", ["smollm2-135m-cpu", "qwen2.5-7b-lora", "qwen2.5-32b-fsdp"])
def test_yaml_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from trl import TrlParser

    from trl_recipes import MultiverseModelConfig, MultiverseSFTConfig, RecipeArguments

    parser = TrlParser((RecipeArguments, MultiverseSFTConfig, MultiverseModelConfig))
    config = ROOT / "trl_recipes" / "configs" / f"{name}.yaml"
    cpu = [] if torch.cuda.is_available() else ["--bf16", "false"]  # the GPU configs ask for bf16
    recipe, sft, model = parser.parse_args_and_config(
        ["--config", str(config), "--model", "m", "--dataset", "d", "--output", "o", *cpu]
    )
    assert recipe.recipe == "multiverse" and sft.max_length >= 1024 and model.model_name_or_path == "m"
    assert model.use_peft == (name == "qwen2.5-7b-lora")
    fsdp = load_config_from_file(str(ROOT / "trl_recipes" / "configs" / "accelerate" / "fsdp-2x8.yaml"))
    assert (fsdp.num_machines, fsdp.num_processes, fsdp.distributed_type.value) == (2, 16, "FSDP")
