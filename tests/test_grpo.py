"""The GRPO recipe on tiny random models: rollout/loss log-probability exactness, rewards, a training step
that moves the weights, and `multiverse train --recipe grpo` end to end (save, reload with remote code, fork)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from tiny import tiny_model
from trl.trainer.utils import pad

import trl_recipes.rollout as rollout_module
from curator.synth import synthesize, write_jsonl
from modeling_multiverse import tag_ids_from_tokenizer
from modeling_multiverse.generation import ENGINE_DEFAULTS
from trl_recipes.cli import main
from trl_recipes.grpo import GRPORecipeArguments, MultiverseGRPOConfig, reward_functions
from trl_recipes.rewards import correctness_reward, format_reward, parallel_reward
from trl_recipes.rollout import MultiverseGRPOTrainer, multiverse_rollout, resolve_engine_options

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
CPU = dict(report_to="none", save_strategy="no", use_cpu=True, logging_steps=1)


def tag_happy_model():
    """A tiny random model whose head favours the tags, so that its samples fork (and nest) by themselves."""
    model, tokenizer = tiny_model("llama", seed=3)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[list(tag_ids_from_tokenizer(tokenizer).values())] = 3.0
    model.lm_head = head
    return model, tokenizer


def problems(n: int = 4) -> Dataset:
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Add {i} and {i}."}], "answer": str(2 * i)} for i in range(n)]
    )


def blocks_reward(completions, multiverse_text, **kwargs):
    """Varies between rollouts of the tag-happy model, so advantages (and the loss) are not zero."""
    return [float(text.count("<Parallel>")) for text in multiverse_text]


def make_trainer(tmp_path, rewards, **config):
    model, tokenizer = tag_happy_model()
    args = MultiverseGRPOConfig(
        output_dir=str(tmp_path / "out"), num_generations=2, per_device_train_batch_size=4, max_completion_length=90,
        temperature=1.0, learning_rate=1e-2, **CPU, **config,
    )
    return MultiverseGRPOTrainer(
        model=model, reward_funcs=rewards, args=args, train_dataset=problems(), processing_class=tokenizer,
        engine_options=resolve_engine_options(max_branches=8, max_depth=2),
    )


def test_loss_logprobs_equal_the_engines_sampled_logprobs(tmp_path):
    """GRPO's ratio is exact: the loss scores each sampled token as the engine did, forced tokens out of the loss."""
    trainer = make_trainer(tmp_path, [blocks_reward])
    prompts = [row["prompt"] for row in problems(3)]
    torch.manual_seed(0)
    rollout = multiverse_rollout(prompts, trainer)
    nested = [t for t in rollout["multiverse_text"] if t.count("<Parallel>") >= 2]
    assert nested and any("<Parallel>" in t for t in rollout["multiverse_text"])
    logps, entropies, completion_mask = loss_logprobs(trainer, rollout)
    assert torch.isfinite(logps[completion_mask.bool()]).all() and torch.isfinite(entropies).all()
    worst, compared = compare_to_engine(rollout, logps)
    assert compared > 100 and worst < 1e-4, worst


def loss_logprobs(trainer, rollout):
    """The loss's per-token log-probabilities of the rollout's completions (and entropies, completion mask)."""
    prompt_ids = pad(
        [torch.tensor(p) for p in rollout["prompt_ids"]],
        padding_value=trainer.processing_class.pad_token_id,
        padding_side="left",
    )
    prompt_mask = pad(
        [torch.ones(len(p), dtype=torch.long) for p in rollout["prompt_ids"]], padding_value=0, padding_side="left"
    )
    completion_ids = pad(
        [torch.tensor(c) for c in rollout["completion_ids"]], padding_value=trainer.processing_class.pad_token_id
    )
    completion_mask = pad([torch.ones(len(c), dtype=torch.long) for c in rollout["completion_ids"]], padding_value=0)
    with torch.no_grad():
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1),
            completion_ids.shape[1], compute_entropy=True,
        )
    return logps, entropies, completion_mask


def compare_to_engine(rollout, logps) -> tuple[float, int]:
    """(largest |loss - engine| log-probability over the sampled tokens, how many were compared)."""
    worst, compared = 0.0, 0
    for row, (engine, sampled) in enumerate(zip(rollout["logprobs"], rollout["env_mask"])):
        engine, sampled = torch.tensor(engine), torch.tensor(sampled, dtype=torch.bool)
        assert bool(torch.isnan(engine[~sampled]).all()) and bool(torch.isfinite(engine[sampled]).all())
        worst = max(worst, float((logps[row, : len(engine)][sampled] - engine[sampled]).abs().max()))
        compared += int(sampled.sum())
    return worst, compared


def test_rollouts_and_loss_read_one_engine_options_object(tmp_path, monkeypatch):
    """One options dict per run: the rollouts and the loss's grammar read the same object, so changing an option
    changes both, and the ratio stays exact under the new limit."""
    options = resolve_engine_options(max_branches=8, max_depth=2)
    assert options == {**ENGINE_DEFAULTS, "max_branches": 8, "max_depth": 2}
    model, tokenizer = tag_happy_model()
    args = MultiverseGRPOConfig(
        output_dir=str(tmp_path / "out"), num_generations=2, per_device_train_batch_size=4, max_completion_length=90,
        temperature=1.0, **CPU,
    )
    trainer = MultiverseGRPOTrainer(
        model=model, reward_funcs=[blocks_reward], args=args, train_dataset=problems(), processing_class=tokenizer,
        engine_options=options,
    )
    assert trainer.engine_options is options
    engine_calls, grammar_calls = [], []
    generate = trainer.model.generate
    monkeypatch.setattr(trainer.model, "generate", lambda **kw: engine_calls.append(kw) or generate(**kw))
    constraints = rollout_module.tag_constraints
    monkeypatch.setattr(rollout_module, "tag_constraints", lambda *a: grammar_calls.append(a[3]) or constraints(*a))
    options["max_branches"] = 1
    torch.manual_seed(0)
    rollout = multiverse_rollout([row["prompt"] for row in problems(3)], trainer)
    logps, _, _ = loss_logprobs(trainer, rollout)
    assert {k: engine_calls[0][k] for k in options} == options and engine_calls[0]["max_branches"] == 1
    assert grammar_calls and set(grammar_calls) == {1}
    goals = [goal for text in rollout["multiverse_text"] for goal in text.split("<Goal>")[1:]]
    assert goals and all(goal.split("</Goal>")[0].count("<Outline>") <= 1 for goal in goals)
    worst, compared = compare_to_engine(rollout, logps)
    assert compared > 50 and worst < 1e-4, worst
    with pytest.raises(ValueError, match="engine_options lacks"):
        MultiverseGRPOTrainer(
            model=model, reward_funcs=[blocks_reward], args=args, train_dataset=problems(),
            processing_class=tokenizer, engine_options={"max_branches": 8},
        )


def test_rewards_alone():
    right = (
        "<Think>\n<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n<Outline>2: b</Outline>\n</Goal>\n"
        "<Path>\n1: 3</Path>\n<Path>\n2: 4</Path>\n<Conclusion>\nmost is 4</Conclusion>\n</Parallel>\n</Think>\n"
        "So the answer is \\boxed{4}."
    )
    wrong = right.replace("\\boxed{4}", "\\boxed{5}")
    cut = right.split("</Think>")[0]
    completions = [[{"role": "assistant", "content": t}] for t in (right, wrong, cut)]
    texts = [right, wrong, cut]
    assert correctness_reward(completions[:2], ["4"] * 2, multiverse_text=texts[:2]) == [1.0, 0.0]
    assert correctness_reward(completions[:2], ["4"] * 2) == [1.0, 0.0]  # from TRL's decoded text alone
    assert format_reward(
        completions, multiverse_text=texts, forced_closing_tags=[0, 2, 0], forced_penalty=0.5
    ) == [1.0, 0.5, 0.0]
    # 30 tokens in 20 steps saves a third; the wrong answer is not paid for its parallelism
    paid = parallel_reward(
        completions,
        ["4", "4", "7"],
        multiverse_text=texts,
        generated_tokens=[30, 30, 30],
        decode_steps=[20, 10, 10],
        cap=0.6,
    )
    assert paid == pytest.approx([1 / 3, 0.0, 0.0])
    assert (
        parallel_reward(
            completions, ["4"] * 3, multiverse_text=texts, generated_tokens=[30] * 3, decode_steps=[3] * 3, cap=0.6
        )[0]
        == 0.6
    )
    critical = parallel_reward(
        completions,
        ["4"] * 3,
        multiverse_text=texts,
        generated_tokens=[30] * 3,
        decode_steps=[30] * 3,
        critical_path=[24] * 3,
        measure="critical_path",
    )
    assert critical[0] == pytest.approx(0.2)
    names = [f.__name__ for f in reward_functions(GRPORecipeArguments(rewards=["parallel", "correctness"]))]
    assert names == ["parallel", "correctness"]


def test_a_grpo_step_trains_through_the_multiverse_loss(tmp_path):
    trainer = make_trainer(tmp_path, [blocks_reward], max_steps=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    torch.manual_seed(1)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and math.isfinite(logged[0]["loss"]) and logged[0]["reward_std"] > 0
    assert logged[0]["multiverse/parallelism"] > 1.0  # the rollouts really forked
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert moved


def test_cli_two_steps_save_reload_and_fork(tmp_path):
    model, tokenizer = tiny_model("qwen2", seed=1)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    write_jsonl(synthesize(4, seed=0, k=(2, 2), bags=(2, 2), task="most"), tmp_path / "problems.jsonl")
    out = tmp_path / "grpo"
    code = main([
        "--recipe", "grpo", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "problems.jsonl"),
        "--output", str(out), "--max-steps", "2", "--num_generations", "2", "--per_device_train_batch_size", "2",
        "--max_completion_length", "16",
        "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true", "--logging_steps", "1",
    ])
    assert code == 0
    history = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(history) == 2
    for h in history:
        assert math.isfinite(h["loss"])
        assert all(f"rewards/{name}/mean" in h for name in ("correctness", "format", "parallel"))
    # a fresh interpreter that never imports the local package: the folder's remote code loads it and forks
    script = (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True); "
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "assert 'modeling_multiverse' not in sys.modules\n"
        "ids = t.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True, "
        "return_tensors='pt', return_dict=True).input_ids\n"
        "goal = t('<Think>\\n<Parallel>\\n<Goal>\\n<Outline>1: a</Outline>\\n"
        "<Outline>2: b</Outline>\\n</Goal>').input_ids\n"
        "def force(views, scores):  # write the goal, then decode freely\n"
        "    k = views.shape[1] - ids.shape[1]\n"
        "    if k < len(goal): scores[:] = -float('inf'); scores[:, goal[k]] = 0.0\n"
        "    return scores\n"
        "out = m.generate(ids, tokenizer=t, max_new_tokens=60, logits_processor=LogitsProcessorList([force]), "
        "return_dict_in_generate=True)\n"
        "assert out.blocks[0][0]['labels'] == ['1', '2'], out.blocks\n"
        "print('forked', out.parallelism[0])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "forked" in done.stdout


def test_cli_refuses_bad_data(tmp_path, capsys):
    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "2+2?"}) + "\n")
    from multiverse.cli import main as cli

    capsys.readouterr()  # the model's save progress
    code = cli([
        "train", "--recipe", "grpo", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "bad.jsonl"),
        "--output", str(tmp_path / "o"), "--use_cpu", "true", "--report_to", "none",
    ])
    err = capsys.readouterr().err
    last = err.strip().replace("\r", "\n").splitlines()[-1]  # after the datasets loader's progress bar
    assert code == 2 and last.startswith("multiverse train: ") and "needs `answer`" in last and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_the_sft_script_sends_grpo_to_the_dispatcher(capsys):
    """`python -m trl_recipes.train` is the SFT recipe alone: asked for grpo it says where GRPO runs."""
    from trl_recipes.train import main as sft_main

    with pytest.raises(SystemExit) as exited:
        sft_main(["--recipe", "grpo", "--model", "m", "--dataset", "d", "--output", "o"])
    assert exited.value.code == 2 and "multiverse train --recipe grpo" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["grpo-smollm2-cpu", "grpo-qwen2.5-7b-lora"])
def test_grpo_yaml_configs_parse(name):
    from pathlib import Path

    from trl import TrlParser

    from trl_recipes.cli import requested_recipe
    from trl_recipes.config import MultiverseModelConfig
    from trl_recipes.grpo import GRPORecipeArguments, MultiverseGRPOConfig

    config = Path(__file__).resolve().parents[1] / "trl_recipes" / "configs" / f"{name}.yaml"
    argv = ["--config", str(config), "--model", "m", "--dataset", "d", "--output", "o"]
    assert requested_recipe(argv) == "grpo"
    cpu = [] if torch.cuda.is_available() else ["--bf16", "false", "--gradient_checkpointing", "false"]
    parser = TrlParser((GRPORecipeArguments, MultiverseGRPOConfig, MultiverseModelConfig))
    recipe, grpo, model = parser.parse_args_and_config(argv + cpu)
    assert recipe.rewards == ["correctness", "format", "parallel"] and len(grpo.reward_weights) == 3
    assert grpo.scale_rewards == "none" and grpo.temperature == 1.0 and grpo.top_k == 0
    assert model.use_peft == (name == "grpo-qwen2.5-7b-lora")
