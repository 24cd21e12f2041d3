"""MultiverseForCausalLM on real model code (tiny random Qwen2 and Llama bases, fp32).

The defining property: a path's logits do not depend on its sibling paths. Then: the model equals the
base model run with the reference mask and positions; batching, explicit masks and every attention
implementation agree; a saved checkpoint loads with trust_remote_code where this repo is not importable;
and the tags enter the vocabulary as SPEC.md §2 says.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from reference import branch_view, path_units, reference_additive_mask, reference_allowed, reference_positions
from strategies import kinds_of, response_prefixes, responses_with_blocks
from tiny import example_response, tiny_model, tiny_tokenizer
from transformers import LlamaConfig, Qwen2Config

from modeling_multiverse import TAGS, MissingTagsError, MultiverseConfig, MultiverseForCausalLM, add_multiverse_tokens
from modeling_multiverse.structure import tag_ids_from_tokenizer

ATOL = 1e-4
MODEL_EXAMPLES = settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_and_tokenizer(request):
    return tiny_model(request.param)


def ids_of(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def base_logits(model, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """The independent implementation: the base model called directly, then the LM head."""
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return model.lm_head(hidden.last_hidden_state)


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# The defining property


@MODEL_EXAMPLES
@given(text=responses_with_blocks(max_depth=2, max_paths=3))
@torch.no_grad()
def test_a_path_sees_nothing_of_its_siblings(model_and_tokenizer, text):
    """Every token of every path unit (nested ones included) has the same logits on the full sequence
    and on the branch's own view of it: the prefix, the enclosing paths and itself, siblings removed."""
    model, tokenizer = model_and_tokenizer
    input_ids = ids_of(tokenizer, text)
    kinds = kinds_of(text)
    full = model(input_ids).logits[0]
    units = path_units(kinds)
    assert units
    for block_number, unit_number in units:
        kept, unit_tokens = branch_view(kinds, block_number, unit_number)
        reduced = model(input_ids[:, kept]).logits[0]
        where = [kept.index(t) for t in unit_tokens]
        assert_close(reduced[where], full[unit_tokens])
        prefix = [t for t in kept if t < unit_tokens[0]]
        assert_close(reduced[: len(prefix)], full[prefix])


@MODEL_EXAMPLES
@given(text=response_prefixes(max_depth=2, max_paths=3))
@torch.no_grad()
def test_the_model_equals_the_base_model_with_the_reference_mask_and_positions(model_and_tokenizer, text):
    model, tokenizer = model_and_tokenizer
    if not text:
        return
    input_ids = ids_of(tokenizer, text)
    kinds = kinds_of(text)
    mask = reference_additive_mask(reference_allowed(kinds))
    positions = torch.tensor([reference_positions(kinds)])
    assert_close(model(input_ids).logits, base_logits(model, input_ids, mask, positions))


@torch.no_grad()
def test_the_nested_example_differs_from_plain_causal_attention(model_and_tokenizer):
    """Guards the tests above against a model that ignores structure altogether."""
    model, tokenizer = model_and_tokenizer
    input_ids = ids_of(tokenizer, example_response())
    causal = base_logits(model, input_ids, None, None)
    assert (model(input_ids).logits - causal).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Batches and explicit inputs


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_a_padded_batch_equals_each_sequence_alone(model_and_tokenizer, side):
    model, tokenizer = model_and_tokenizer
    texts = [example_response(), "<Think>\nno blocks\n</Think>ok", example_response()[:120]]
    tokenizer.padding_side = side
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    logits = model(**batch).logits
    for b, text in enumerate(texts):
        real = batch["attention_mask"][b].bool()
        alone = model(ids_of(tokenizer, text)).logits[0]
        assert_close(logits[b, real], alone)


@torch.no_grad()
def test_an_explicit_4d_mask_and_position_ids_pass_through_unchanged(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    input_ids = ids_of(tokenizer, example_response())
    n = input_ids.shape[1]
    torch.manual_seed(1)
    allowed = torch.ones(n, n).tril().bool() & (torch.rand(n, n) > 0.3)
    allowed |= torch.eye(n, dtype=torch.bool)
    mask = reference_additive_mask(allowed)
    positions = torch.randint(0, 2 * n, (1, n))
    assert_close(model(input_ids, attention_mask=mask, position_ids=positions).logits,
                 base_logits(model, input_ids, mask, positions))  # fmt: skip


@torch.no_grad()
def test_explicit_position_ids_win_over_the_structure_positions(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    input_ids = ids_of(tokenizer, example_response())
    kinds = kinds_of(example_response())
    positions = torch.arange(input_ids.shape[1])[None]
    mask = reference_additive_mask(reference_allowed(kinds))
    assert_close(model(input_ids, position_ids=positions).logits, base_logits(model, input_ids, mask, positions))


@torch.no_grad()
def test_multiverse_attention_can_be_turned_off(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    plain = copy.deepcopy(model)
    plain.config.multiverse_attention = False
    input_ids = ids_of(tokenizer, example_response())
    assert_close(plain(input_ids).logits, base_logits(model, input_ids, None, None))


def with_implementation(model, implementation: str):
    other = copy.deepcopy(model)
    other.set_attn_implementation(implementation)
    assert other.config._attn_implementation == implementation
    assert other.model.config._attn_implementation == implementation
    return other


@torch.no_grad()
def test_eager_attention_equals_sdpa(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    input_ids = ids_of(tokenizer, example_response())
    assert model.config._attn_implementation == "sdpa"
    assert_close(with_implementation(model, "eager")(input_ids).logits, model(input_ids).logits)


@pytest.mark.slow  # flex_attention compiles on first use: about 20 s per model on CPU
@torch.no_grad()
def test_flex_attention_equals_sdpa(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer(
        [example_response(), example_response()[:150]], add_special_tokens=False, padding=True, return_tensors="pt"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = with_implementation(model, "flex_attention")(**batch).logits
    real = batch["attention_mask"].bool()
    assert_close(flex[real], model(**batch).logits[real])


# ---------------------------------------------------------------------------------------------
# Remote code: a saved checkpoint loads where this repository cannot be imported

LOADER = textwrap.dedent(
    """
    import importlib.util, json, sys
    sys.path[:0] = json.loads(sys.argv[1])  # torch, transformers and their dependencies only
    assert importlib.util.find_spec("modeling_multiverse") is None, "the repository is importable"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(sys.argv[2], trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert "modeling_multiverse" not in sys.modules
    input_ids = torch.tensor([tokenizer(sys.argv[3], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.save({"input_ids": input_ids, "logits": model(input_ids).logits}, sys.argv[4])
    """
)


def _site_dirs() -> list[str]:
    """Where torch, transformers and their dependencies are installed: never this repository."""
    import site

    dirs = [d for d in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(d)]
    return [
        d
        for d in dirs
        if not os.path.realpath(d).startswith(os.path.realpath(os.path.dirname(os.path.dirname(__file__))))
    ]


def test_a_saved_checkpoint_loads_with_remote_code_alone(tmp_path):
    model, tokenizer = tiny_model("qwen2")
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    assert {"modeling_multiverse.py", "attention.py", "structure.py", "configuration_multiverse.py"} <= {
        p.name for p in checkpoint.glob("*.py")
    }
    out = tmp_path / "out.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, "-S", "-c", LOADER, json.dumps(_site_dirs()), str(checkpoint), example_response(), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = torch.load(out)
    assert torch.equal(loaded["input_ids"], ids_of(tokenizer, example_response()))
    with torch.no_grad():
        assert_close(loaded["logits"], model(loaded["input_ids"]).logits)


def test_the_remote_code_check_really_hides_the_repository(tmp_path):
    """The loader's first assertion holds only because of `-S` and the filtered paths: without `-S`
    the editable install makes the repository importable again."""
    probe = "import importlib.util; print(importlib.util.find_spec('modeling_multiverse') is None)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    hidden = subprocess.run([sys.executable, "-S", "-c",
                             f"import sys, json; sys.path[:0] = json.loads(sys.argv[1]); {probe}",
                             json.dumps(_site_dirs())],
                            cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    visible = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert hidden.stdout.strip() == "True", hidden.stderr
    assert visible.stdout.strip() == "False", "expected the editable install to expose the repository"


# ---------------------------------------------------------------------------------------------
# The tags in the vocabulary (SPEC.md §2)


def untagged_model(tokenizer, family: str = "llama", tie: bool = False) -> MultiverseForCausalLM:
    torch.manual_seed(0)
    base = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
    text_config = base(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie)  # fmt: skip
    return MultiverseForCausalLM(MultiverseConfig(text_config=text_config.to_dict())).eval()


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_new_tags_are_single_special_tokens_initialised_from_their_name_pieces(tie):
    tokenizer = tiny_tokenizer()
    model = untagged_model(tokenizer, tie=tie)
    old_vocab = len(tokenizer)
    pieces = {tag: tokenizer(tag[1:-1], add_special_tokens=False)["input_ids"] for tag in TAGS}
    input_before = model.get_input_embeddings().weight.detach().clone()
    output_before = model.get_output_embeddings().weight.detach().clone()

    tag_ids = add_multiverse_tokens(model, tokenizer)

    assert list(tag_ids) == list(TAGS) and len(set(tag_ids.values())) == 12
    assert len(tokenizer) == old_vocab + 12 and min(tag_ids.values()) >= old_vocab
    assert model.config.tag_token_ids == tag_ids
    for tag, token_id in tag_ids.items():
        assert tokenizer(f"a{tag}b", add_special_tokens=False)["input_ids"][1] == token_id
        assert tokenizer.convert_ids_to_tokens(token_id) == tag
    inputs = model.get_input_embeddings().weight
    outputs = model.get_output_embeddings().weight
    assert inputs.shape[0] >= len(tokenizer) and outputs.shape[0] == inputs.shape[0]
    assert torch.equal(inputs[:old_vocab], input_before)
    for tag, token_id in tag_ids.items():
        torch.testing.assert_close(inputs[token_id], input_before[pieces[tag]].mean(0))
        torch.testing.assert_close(outputs[token_id], output_before[pieces[tag]].mean(0))
    if tie:
        assert outputs.data_ptr() == inputs.data_ptr()
    else:
        assert not torch.equal(input_before[pieces["<Path>"]].mean(0), output_before[pieces["<Path>"]].mean(0))


def test_a_tokenizer_that_has_the_tags_is_left_untouched():
    model, tokenizer = tiny_model("llama")
    vocab = dict(tokenizer.get_vocab())
    inputs = model.get_input_embeddings().weight.detach().clone()
    outputs = model.get_output_embeddings().weight.detach().clone()
    assert add_multiverse_tokens(model, tokenizer) == tag_ids_from_tokenizer(tokenizer)
    assert tokenizer.get_vocab() == vocab
    assert torch.equal(model.get_input_embeddings().weight, inputs)
    assert torch.equal(model.get_output_embeddings().weight, outputs)


def test_tags_already_present_keep_their_rows_while_the_missing_ones_are_added():
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"extra_special_tokens": ["<Think>", "</Think>"]}, replace_extra_special_tokens=False)
    model, _ = tiny_model("llama", tokenizer=tiny_tokenizer())
    model.resize_token_embeddings(len(tokenizer))
    model.config.tag_token_ids = None
    think = tokenizer.convert_tokens_to_ids("<Think>")
    with torch.no_grad():
        model.get_input_embeddings().weight[think] = 7.0  # as if trained
    path_pieces = tokenizer("Path", add_special_tokens=False)["input_ids"]
    tag_ids = add_multiverse_tokens(model, tokenizer)
    weight = model.get_input_embeddings().weight
    assert tag_ids["<Think>"] == think and torch.all(weight[think] == 7.0)
    torch.testing.assert_close(weight[tag_ids["<Path>"]], weight[path_pieces].mean(0))


@pytest.mark.parametrize("present", [0, 5])
def test_a_tokenizer_lacking_tags_is_refused_with_the_missing_tags_named(present):
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"extra_special_tokens": list(TAGS[:present])}, replace_extra_special_tokens=False)
    with pytest.raises(MissingTagsError) as caught:
        tag_ids_from_tokenizer(tokenizer)
    message = str(caught.value)
    assert all(tag in message for tag in TAGS[present:])
    assert f"lacks {12 - present} " in message
    for tag in TAGS[:present]:
        assert f" {tag}," not in message and not message.endswith(tag)
