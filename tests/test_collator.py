"""Data preparation and collation against the core's reference masks and positions (real tokenizer, real files)."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from tiny import example_response, tiny_model

from modeling_multiverse import (
    StructureError,
    batch_intervals,
    dense_mask,
    parse_text,
    remove_tags,
    tag_ids_from_tokenizer,
)
from trl_recipes import ExampleError, MultiverseDataCollator, load_sft_dataset, prepare_dataset
from trl_recipes.data import autoregressive_rows

SHORT = (
    "<Think>\nok\n<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n<Outline>2: b</Outline>\n</Goal>"
    "\n<Path>\n1: aa</Path>\n<Path>\n2: bbbbbb</Path>\n<Conclusion>\nab</Conclusion>\n</Parallel>\n</Think>\nX"
)


@pytest.fixture(scope="module")
def tokenizer():
    _, tok = tiny_model()
    return tok


def rows(responses, prompt="What is 1+2?"):
    return [
        {"prompt": [{"role": "user", "content": f"{prompt} {i}"}], "completion": [{"role": "assistant", "content": r}]}
        for i, r in enumerate(responses)
    ]


def reference(batch, tokenizer):
    """The core's mask and positions for the collated ids and padding mask."""
    positions, lo, hi = batch_intervals(batch["input_ids"], tag_ids_from_tokenizer(tokenizer), batch["attention_mask"])
    return dense_mask(lo, hi), positions


def test_collated_masks_and_positions_equal_the_core_reference(tokenizer):
    prepared, report = prepare_dataset(
        Dataset.from_list(rows([example_response(), SHORT, "plain answer"])), tokenizer, max_length=None
    )
    batch = MultiverseDataCollator(tokenizer.pad_token_id)(list(prepared))
    assert batch["attention_mask"].sum(1).tolist() == prepared["length"]
    assert len(set(prepared["length"])) == 3  # padding is exercised
    mask, positions = reference(batch, tokenizer)
    real = batch["attention_mask"].bool()
    assert torch.equal(batch["position_ids"][real], positions[real])
    ours = dense_mask(batch["forbid_lo"], batch["forbid_hi"])
    assert torch.equal(ours, mask)
    # the structure matters: a path token does not see its sibling
    assert (ours != dense_mask(torch.zeros_like(batch["forbid_lo"]), torch.zeros_like(batch["forbid_hi"]))).any()


def test_truncation_inside_a_block_keeps_masks_consistent(tokenizer):
    full, _ = prepare_dataset(Dataset.from_list(rows([example_response()])), tokenizer, max_length=None)
    ids = full[0]["input_ids"]
    path_end = tag_ids_from_tokenizer(tokenizer)["</Path>"]
    cut = ids.index(path_end) + 3  # inside the outer block, one path closed
    prepared, report = prepare_dataset(Dataset.from_list(rows([example_response()])), tokenizer, max_length=cut)
    assert report.truncated == 1 and prepared[0]["length"] == cut
    batch = MultiverseDataCollator(tokenizer.pad_token_id)(list(prepared))
    mask, positions = reference(batch, tokenizer)
    assert torch.equal(dense_mask(batch["forbid_lo"], batch["forbid_hi"]), mask)
    assert torch.equal(batch["position_ids"], positions)
    # truncation keeps the prefix of the untruncated arrays
    assert prepared[0]["position_ids"] == full[0]["position_ids"][:cut]


def test_labels_cover_exactly_the_completion(tokenizer):
    prepared, _ = prepare_dataset(Dataset.from_list(rows([SHORT])), tokenizer, max_length=None)
    labels = prepared[0]["labels"]
    first = next(i for i, t in enumerate(labels) if t != -100)
    assert all(t == -100 for t in labels[:first]) and all(t != -100 for t in labels[first:])
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 1+2? 0"}], add_generation_prompt=True, tokenize=False
    )
    assert tokenizer.decode(prepared[0]["input_ids"][:first]) == prompt_text
    assert tokenizer.decode(labels[first:]).startswith(SHORT)


def test_autoregressive_recipe_flattens_and_has_plain_causal_attention(tokenizer):
    prepared, report = prepare_dataset(
        Dataset.from_list(rows([example_response(), SHORT])), tokenizer, recipe="autoregressive", max_length=None
    )
    assert report.autoregressive == 2
    tags = set(tag_ids_from_tokenizer(tokenizer).values())
    assert not tags & {t for r in prepared["input_ids"] for t in r}
    first = next(i for i, t in enumerate(prepared[0]["labels"]) if t != -100)
    assert tokenizer.decode(prepared[0]["labels"][first:]).startswith(remove_tags(example_response()))
    batch = MultiverseDataCollator(tokenizer.pad_token_id)(list(prepared))
    assert "forbid_lo" not in batch  # the batch stays on the plain causal path
    for row, n in zip(batch["position_ids"], prepared["length"]):
        assert row[:n].tolist() == list(range(n))


def test_packed_documents_never_see_each_other(tokenizer):
    dataset = Dataset.from_list(rows([SHORT, SHORT, "plain", example_response()]))
    single, _ = prepare_dataset(dataset, tokenizer, max_length=None)
    packed, report = prepare_dataset(dataset, tokenizer, max_length=max(single["length"]) + 60, packing=True)
    assert report.rows < len(dataset) and sum(packed["length"]) == sum(single["length"])
    batch = MultiverseDataCollator(tokenizer.pad_token_id)(list(packed))
    allowed = dense_mask(batch["forbid_lo"], batch["forbid_hi"])[:, 0] == 0
    starts = {}
    for b in range(len(packed)):
        # documents restart their positions at 0: find their starts from the packed positions
        pos = batch["position_ids"][b, : packed[b]["length"]]
        doc_starts = [i for i in range(len(pos)) if pos[i] == 0] + [len(pos)]
        for s, e in zip(doc_starts, doc_starts[1:]):
            assert not allowed[b, s:e, :s].any()  # nothing before the document
            one = batch["input_ids"][b, s:e][None]
            positions, lo, hi = batch_intervals(one, tag_ids_from_tokenizer(tokenizer))
            mask = dense_mask(lo, hi)
            assert torch.equal(allowed[b, s:e, s:e], mask[0, 0] == 0)
            assert torch.equal(pos[s:e], positions[0])
            starts[(b, s)] = e - s
    assert sorted(starts.values()) == sorted(single["length"])


def test_malformed_response_names_the_example_and_the_position(tokenizer):
    bad = SHORT.replace("<Path>\n2:", "<Path>\n3:")
    with pytest.raises(StructureError) as expected:
        parse_text(bad)
    data = Dataset.from_list(rows([SHORT, SHORT, bad]))
    with pytest.raises(ExampleError, match=rf"example 2: .* at char {expected.value.index}") as err:
        prepare_dataset(data, tokenizer)
    assert (err.value.index, err.value.position) == (2, expected.value.index)
    prepared, report = prepare_dataset(data, tokenizer, skip_invalid=True)
    assert len(prepared) == 2 and [i for i, _ in report.skipped] == [2]
    # the baseline skips the same examples, so both recipes train on the same data
    _, ar_report = prepare_dataset(data, tokenizer, recipe="autoregressive", skip_invalid=True)
    assert [i for i, _ in ar_report.skipped] == [2]


def test_missing_columns_list_the_columns_found(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "p", "response": "r"}) + "\n")
    with pytest.raises(ValueError, match=r"found columns \['problem', 'response'\]"):
        load_sft_dataset(str(path))


def test_loads_jsonl_parquet_save_to_disk_and_messages(tmp_path, tokenizer):
    records = rows([SHORT, example_response()])
    Dataset.from_list(records).to_json(tmp_path / "d.jsonl")
    Dataset.from_list(records).to_parquet(tmp_path / "d.parquet")
    Dataset.from_list(records).save_to_disk(tmp_path / "folder")
    messages = Dataset.from_list([{"messages": r["prompt"] + r["completion"]} for r in records])
    reference_ids = prepare_dataset(Dataset.from_list(records), tokenizer)[0]["input_ids"]
    for source in (tmp_path / "d.jsonl", tmp_path / "d.parquet", tmp_path / "folder", messages):
        dataset = load_sft_dataset(source if isinstance(source, Dataset) else str(source))
        assert prepare_dataset(dataset, tokenizer)[0]["input_ids"] == reference_ids


def test_mixture_flattens_a_seeded_share_and_puts_it_first(tokenizer):
    data = Dataset.from_list(rows([SHORT] * 10))
    prepared, report = prepare_dataset(data, tokenizer, ar_fraction=0.3, seed=1)
    assert report.autoregressive == 3
    tags = set(tag_ids_from_tokenizer(tokenizer).values())
    has_tags = [bool(tags & set(r)) for r in prepared["input_ids"]]
    assert has_tags == [False] * 3 + [True] * 7
    assert autoregressive_rows(10, "multiverse", 0.3, 1) == autoregressive_rows(10, "multiverse", 0.3, 1)
    with pytest.raises(ValueError, match="ar_fraction"):
        prepare_dataset(data, tokenizer, ar_fraction=1.5)


def test_examples_whose_prompt_fills_max_length_are_skipped(tokenizer):
    data = Dataset.from_list(rows([SHORT, SHORT], prompt="a long prompt " * 5) + rows([SHORT], prompt="?"))
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "? 2"}], add_generation_prompt=True, tokenize=False
    )
    prompt_length = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    prepared, report = prepare_dataset(data, tokenizer, max_length=prompt_length + 5)
    assert [i for i, _ in report.skipped] == [0, 1] and "max_length" in report.skipped[0][1]
    assert prepared["length"] == [prompt_length + 5] and report.truncated == 1
    with pytest.raises(ValueError, match="no example left"):
        prepare_dataset(data, tokenizer, max_length=3)
