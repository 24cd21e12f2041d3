"""Multiverse Attention (SPEC.md §4) and position ids (SPEC.md §5): every mask form and the positions equal the
brute-force reference of tests/reference.py, over random nested structures, truncated ones included."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_allowed, reference_positions
from strategies import kinds_of, response_prefixes, responses_with_blocks
from tiny import example_response, tiny_tokenizer

from modeling_multiverse import (
    StructureError,
    add_tag_tokens,
    batch_intervals,
    block_mask,
    dense_mask,
    mask_for,
    pack,
    stack,
    structure_of_ids,
)

FAST = settings(max_examples=50, deadline=None)
TOKENIZER = tiny_tokenizer()
TAG_IDS = add_tag_tokens(TOKENIZER)


def ids_of(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


def allowed_of(mask: torch.Tensor) -> torch.Tensor:
    """Bool view of an additive mask."""
    return mask == 0


def evaluate_block_mask(mask, batch_index: int = 0) -> torch.Tensor:
    """The bool [Q, K] matrix a BlockMask stands for: full blocks all True, partial blocks by `mask_mod`,
    blocks listed in neither table all False."""
    q_len, kv_len = mask.seq_lengths
    size_q, size_kv = mask.BLOCK_SIZE
    allowed = torch.zeros(q_len, kv_len, dtype=torch.bool)
    b = torch.tensor(batch_index)
    h = torch.tensor(0)
    for qb in range(mask.kv_num_blocks.shape[-1]):
        rows = slice(qb * size_q, min((qb + 1) * size_q, q_len))
        for i in range(int(mask.full_kv_num_blocks[batch_index, 0, qb])):
            kb = int(mask.full_kv_indices[batch_index, 0, qb, i])
            allowed[rows, kb * size_kv : (kb + 1) * size_kv] = True
        for i in range(int(mask.kv_num_blocks[batch_index, 0, qb])):
            kb = int(mask.kv_indices[batch_index, 0, qb, i])
            q_idx = torch.arange(rows.start, rows.stop)[:, None]
            kv_idx = torch.arange(kb * size_kv, min((kb + 1) * size_kv, kv_len))[None, :]
            allowed[rows, kb * size_kv : (kb + 1) * size_kv] = mask.mask_mod(b, h, q_idx, kv_idx)
    return allowed


# ---------------------------------------------------------------------------------------------
# One sequence


@FAST
@given(response_prefixes())
def test_positions_and_dense_mask_equal_the_reference(text):
    kinds = kinds_of(text)
    structure = structure_of_ids(ids_of(text), TAG_IDS)
    assert structure.position_ids.tolist() == reference_positions(kinds)
    position_ids, lo, hi = stack([structure], [0], len(kinds))
    assert torch.equal(allowed_of(dense_mask(lo, hi))[0, 0], reference_allowed(kinds))


@FAST
@given(response_prefixes(), st.sampled_from([4, 8, 16, 128]))
def test_block_mask_stands_for_the_same_mask_as_the_reference(text, block_size):
    kinds = kinds_of(text)
    _, lo, hi = stack([structure_of_ids(ids_of(text), TAG_IDS)], [0], len(kinds))
    mask = block_mask(lo, hi, block_size=block_size)
    assert torch.equal(evaluate_block_mask(mask), reference_allowed(kinds))


@FAST
@given(responses_with_blocks(), st.sampled_from([4, 8, 16]))
def test_block_mask_calls_mask_mod_only_on_mixed_blocks(text, block_size):
    """Tight classification: a block is 'partial' only if it holds both visible and hidden keys."""
    kinds = kinds_of(text)
    _, lo, hi = stack([structure_of_ids(ids_of(text), TAG_IDS)], [0], len(kinds))
    mask = block_mask(lo, hi, block_size=block_size)
    allowed = reference_allowed(kinds)
    for qb in range(mask.kv_num_blocks.shape[-1]):
        for i in range(int(mask.kv_num_blocks[0, 0, qb])):
            kb = int(mask.kv_indices[0, 0, qb, i])
            tile = allowed[qb * block_size : (qb + 1) * block_size, kb * block_size : (kb + 1) * block_size]
            assert tile.any() and not tile.all(), (qb, kb)


def test_block_mask_through_flex_attention_equals_sdpa_with_the_dense_mask():
    from torch.nn.attention.flex_attention import flex_attention

    text = example_response().replace("<Think>", "").replace("</Think>", "")
    ids = ids_of(text * 3)
    _, lo, hi = stack([structure_of_ids(ids, TAG_IDS)], [0], len(ids))
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, len(ids), 16) for _ in range(3))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flex = flex_attention(q, k, v, block_mask=block_mask(lo, hi, block_size=128))
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(lo, hi))
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


def test_critical_path_is_the_positional_extent():
    ids = ids_of(example_response())
    structure = structure_of_ids(ids, TAG_IDS)
    assert structure.critical_path_tokens() == max(reference_positions(kinds_of(example_response()))) + 1
    assert structure.critical_path_tokens() < len(ids)


def test_a_sequence_without_blocks_is_causal_with_sequential_positions():
    ids = ids_of("<Think>\nno parallel here\n</Think>\nok")
    structure = structure_of_ids(ids, TAG_IDS)
    assert structure.position_ids.tolist() == list(range(len(ids)))
    _, lo, hi = stack([structure], [0], len(ids))
    assert torch.equal(allowed_of(dense_mask(lo, hi))[0, 0], torch.ones(len(ids), len(ids)).tril().bool())


def test_a_stray_tag_without_any_block_is_still_reported():
    with pytest.raises(StructureError, match="found </Path>"):
        structure_of_ids(ids_of("text</Path>"), TAG_IDS)


# ---------------------------------------------------------------------------------------------
# Batches: padding and packing


def padded_batch(texts: list[str], side: str):
    rows = [ids_of(t) for t in texts]
    length = max(map(len, rows))
    input_ids = torch.full((len(rows), length), TOKENIZER.pad_token_id)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    spans = []
    for b, row in enumerate(rows):
        start = length - len(row) if side == "left" else 0
        input_ids[b, start : start + len(row)] = torch.tensor(row)
        attention_mask[b, start : start + len(row)] = 1
        spans.append((start, start + len(row)))
    return input_ids, attention_mask, spans


@settings(max_examples=25, deadline=None)
@given(st.lists(response_prefixes(), min_size=1, max_size=3), st.sampled_from(["left", "right"]))
def test_a_padded_batch_gives_each_row_its_own_mask_and_positions(texts, side):
    input_ids, attention_mask, spans = padded_batch(texts, side)
    position_ids, lo, hi = batch_intervals(input_ids, TAG_IDS, attention_mask)
    mask, flex = mask_for(lo, hi, "sdpa"), mask_for(lo, hi, "flex_attention")
    for b, ((start, end), text) in enumerate(zip(spans, texts)):
        allowed = allowed_of(mask[b, 0])
        assert torch.equal(evaluate_block_mask(flex, b), allowed)
        assert position_ids[b, start:end].tolist() == reference_positions(kinds_of(text))
        assert torch.equal(allowed[start:end, start:end], reference_allowed(kinds_of(text)))
        assert not allowed[start:end, :start].any() and not allowed[start:end, end:].any(), "real tokens see padding"
        assert allowed.any(-1).all(), "every query row, padding included, attends somewhere (no NaN rows)"


def test_an_attention_mask_with_holes_is_refused():
    input_ids, attention_mask, _ = padded_batch(["abc", "abcdef"], "right")
    attention_mask[1, 2] = 0
    with pytest.raises(ValueError, match="holes"):
        batch_intervals(input_ids, TAG_IDS, attention_mask)


@settings(max_examples=10, deadline=None)
@given(st.lists(responses_with_blocks(max_depth=2, max_paths=2), min_size=1, max_size=3))
def test_packed_documents_see_only_themselves_and_restart_positions(texts):
    structures = [structure_of_ids(ids_of(t), TAG_IDS) for t in texts]
    packed = pack(structures)
    total = packed.length
    position_ids, lo, hi = stack([packed], [0], total)
    allowed = allowed_of(dense_mask(lo, hi))[0, 0]
    expected = torch.zeros(total, total, dtype=torch.bool)
    expected_positions = []
    at = 0
    for text in texts:
        kinds = kinds_of(text)
        expected[at : at + len(kinds), at : at + len(kinds)] = reference_allowed(kinds)
        expected_positions += reference_positions(kinds)
        at += len(kinds)
    assert torch.equal(allowed, expected)
    assert position_ids[0].tolist() == expected_positions
    assert torch.equal(evaluate_block_mask(block_mask(lo, hi, block_size=16)), expected)


def test_packed_rows_can_be_padded_and_batched():
    texts = [example_response(), "<Think>\nshort\n</Think>x"]
    packed = pack([structure_of_ids(ids_of(t), TAG_IDS) for t in texts])
    single = structure_of_ids(ids_of(texts[0]), TAG_IDS)
    length = packed.length + 3
    position_ids, lo, hi = stack([packed, single], [3, 0], length)
    allowed = allowed_of(dense_mask(lo, hi))
    n0 = len(ids_of(texts[0]))
    first_doc = slice(3, 3 + n0)
    second_doc = slice(3 + n0, length)
    assert torch.equal(allowed[0, 0, first_doc, first_doc], reference_allowed(kinds_of(texts[0])))
    assert not allowed[0, 0, second_doc, :3 + n0].any(), "the second packed document sees neither padding nor the first"
    assert torch.equal(allowed[1, 0, :n0, :n0], reference_allowed(kinds_of(texts[0])))
