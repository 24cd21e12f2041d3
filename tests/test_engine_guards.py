"""generate() refuses what it would otherwise decode wrongly, never prompts, and allocates by use (issue 12)."""

from __future__ import annotations

import builtins
import json

import pytest
import torch
from tiny import tiny_model
from transformers import LogitsProcessor, LogitsProcessorList

from modeling_multiverse.generation import MultiverseEngine


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", seed=4)


class EosAfter(LogitsProcessor):
    """Forces eos once a row holds `length` tokens."""

    def __init__(self, eos: int, length: int):
        self.eos, self.length = eos, length

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        done = input_ids.shape[1] >= self.length
        if done:
            scores[:] = -float("inf")
            scores[:, self.eos] = 0.0
        return scores


def prompt(tokenizer, text="hello"):
    return tokenizer(text, return_tensors="pt")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": float("nan"), "do_sample": True}, "temperature must be a finite number"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"temperature": -1.0, "do_sample": True}, "temperature must be a finite number"),
        ({"top_p": 5.0, "do_sample": True}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 0.0, "do_sample": True}, r"top_p must be in \(0, 1\]"),
        ({"num_return_sequences": 2}, "num_return_sequences"),  # transformers' own check, or the engine's
        ({"max_new_tokens": -3}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer >= 0"),
    ],
)
def test_bad_sampling_arguments_are_refused(tiny, kwargs, message):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=message):
        model.generate(**prompt(tokenizer), tokenizer=tokenizer, **{"max_new_tokens": 4, **kwargs})


def test_num_return_sequences_samples_that_many_per_prompt(tiny):
    model, tokenizer = tiny
    enc = tokenizer(["ab", "cd"], return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**enc, tokenizer=tokenizer, do_sample=True, num_return_sequences=3, max_new_tokens=6)
    assert out.shape[0] == 6
    assert out[:3, :2].tolist() == [enc["input_ids"][0].tolist()] * 3
    assert out[3:, :2].tolist() == [enc["input_ids"][1].tolist()] * 3
    assert len({tuple(row) for row in out[:3].tolist()}) > 1, "three samples of one prompt should differ"


def test_an_all_zero_attention_mask_is_named(tiny):
    model, tokenizer = tiny
    enc = tokenizer(["ab", "cd"], return_tensors="pt")
    enc["attention_mask"][1] = 0
    with pytest.raises(ValueError, match="prompt 1 is empty: its attention_mask is all zeros"):
        model.generate(**enc, tokenizer=tokenizer, max_new_tokens=4)


def test_without_tokenizer_remote_code_is_never_run_nor_asked_for(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    tokenizer.save_pretrained(tmp_path)
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "CustomTokenizer"
    config["auto_map"] = {"AutoTokenizer": ["custom_tokenizer.CustomTokenizer", None]}
    config_file.write_text(json.dumps(config))
    (tmp_path / "custom_tokenizer.py").write_text("raise RuntimeError('remote code ran')\n")

    def no_prompt(*args, **kwargs):
        raise AssertionError("generate() asked a question on the terminal")

    monkeypatch.setattr(builtins, "input", no_prompt)
    monkeypatch.setattr(model.config, "_name_or_path", str(tmp_path))
    with pytest.raises(ValueError, match=r"without remote code .*pass generate\(\.\.\., tokenizer=tokenizer\)"):
        model.generate(**prompt(tokenizer), max_new_tokens=4)


@pytest.mark.parametrize("budget", [10**9, 1e9])
def test_memory_follows_use_not_max_new_tokens(tiny, monkeypatch, budget):
    model, tokenizer = tiny
    engines = []
    run = MultiverseEngine.run

    def spy(self, *args):
        engines.append(self)
        return run(self, *args)

    monkeypatch.setattr(MultiverseEngine, "run", spy)
    enc = prompt(tokenizer)
    stop = LogitsProcessorList([EosAfter(tokenizer.eos_token_id, enc["input_ids"].shape[1] + 5)])
    out = model.generate(
        **enc, tokenizer=tokenizer, max_new_tokens=budget, logits_processor=stop, return_dict_in_generate=True
    )
    assert out.generated_tokens[0] == 6 and out.sequences[0, -1] == tokenizer.eos_token_id
    engine = engines[0]
    assert engine.cache.capacity <= enc["input_ids"].shape[1] + 512
    assert engine.visibility.visible.numel() <= 16 * 1024


def test_engine_options_resolve_once_the_way_generate_reads_them(tiny, monkeypatch):
    from types import SimpleNamespace

    from modeling_multiverse.generation import ENGINE_DEFAULTS, resolve_engine_options

    model, tokenizer = tiny
    assert ENGINE_DEFAULTS == {"max_depth": 2, "max_branches": 16, "max_branch_tokens": 2048, "merge": "exact"}
    assert resolve_engine_options() == ENGINE_DEFAULTS
    given = SimpleNamespace(max_depth=1, max_branches=None)
    monkeypatch.setattr(model.generation_config, "max_branch_tokens", 99, raising=False)
    monkeypatch.setattr(model.generation_config, "max_depth", 3, raising=False)
    # keyword arguments, else the given generation_config, else the model's, else the defaults
    options = resolve_engine_options(model, given, max_branches=5)
    assert options == {"max_depth": 1, "max_branches": 5, "max_branch_tokens": 99, "merge": "exact"}
    with pytest.raises(ValueError, match="unknown engine options max_paths"):
        resolve_engine_options(model, max_paths=3)
    seen = []
    start = MultiverseEngine.__init__

    def spy(self, *args):
        seen.append(args[5])
        start(self, *args)

    monkeypatch.setattr(MultiverseEngine, "__init__", spy)
    model.generate(**prompt(tokenizer), tokenizer=tokenizer, max_new_tokens=2, generation_config=None, max_branches=5)
    assert seen == [resolve_engine_options(model, max_branches=5)]
