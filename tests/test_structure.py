"""The parser (SPEC.md §3): what it accepts, what it rejects and how it says so, and that it is linear."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import path_ancestry
from strategies import kinds_of, response_prefixes, responses, responses_with_blocks, tokens_of
from tiny import example_response, tiny_tokenizer

from modeling_multiverse import (
    CONCLUSION_SEED,
    TAGS,
    StructureError,
    StructureParser,
    add_tag_tokens,
    format_parallel,
    format_response,
    parse_ids,
    parse_kinds,
    parse_text,
    path_seed,
    remove_tags,
    split_tags,
    tag_ids_from_tokenizer,
)
from modeling_multiverse.structure import CONCLUSION, PARALLEL, PATH, PATH_END, TEXT, tag_kind

FAST = settings(max_examples=60, deadline=None)

GOAL_2 = "<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n<Outline>2: b</Outline>\n</Goal>"
PATH_1 = "\n<Path>\n1: x</Path>"
PATH_2 = "\n<Path>\n2: y</Path>"
CLOSE = "\n<Conclusion>\nz</Conclusion>\n</Parallel>"
FLAT = f"<Think>\nplan\n{GOAL_2}{PATH_1}{PATH_2}{CLOSE}\n</Think>\nanswer"


TOKENIZER = tiny_tokenizer()
add_tag_tokens(TOKENIZER)


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny tokenizer of tests/tiny.py (one token per character) with the twelve tags added."""
    return TOKENIZER


def parse_with_tokenizer(text: str, tokenizer, **kwargs):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return parse_ids(ids, tag_ids_from_tokenizer(tokenizer), decode=tokenizer.decode, **kwargs), ids


def unit_token_sets(structure) -> list[set[int]]:
    """The items of every path unit the parser found, in order of their first item."""
    units = [set(range(unit.start, unit.end or structure.length)) for b in structure.iter_blocks() for unit in b.paths]
    return sorted(units, key=min)


def reference_unit_token_sets(kinds: list[int]) -> list[set[int]]:
    units: dict[tuple[int, int], set[int]] = {}
    for t, chain in enumerate(path_ancestry(kinds)):
        for unit in chain:
            units.setdefault(unit, set()).add(t)
    return sorted(units.values(), key=min)


# ---------------------------------------------------------------------------------------------
# Valid responses


def test_a_flat_block_parses_into_its_outlines_paths_and_conclusion():
    structure = parse_text(FLAT, require_think=True)
    items = split_tags(FLAT)
    (block,) = structure.blocks
    assert structure.complete and structure.max_depth == 1 and structure.max_paths == 2
    assert block.labels == ["1", "2"] == [unit.label for unit in block.paths]
    assert items[block.paths[0].start] == "\n" and items[block.paths[0].open] == "<Path>"
    assert items[block.conclusion_start] == "\n" and items[block.conclusion_open] == "<Conclusion>"
    assert items[block.close] == "</Parallel>"
    assert items[structure.think_open] == "<Think>" and items[structure.think_close] == "</Think>"


def test_a_nested_block_belongs_to_its_enclosing_path(tokenizer):
    structure, ids = parse_with_tokenizer(example_response(), tokenizer, require_think=True)
    outer, inner = structure.iter_blocks()
    assert structure.max_depth == 2 and inner.depth == 1
    assert outer.paths[0].blocks == [inner] and outer.paths[1].blocks == []
    assert [u.label for u in inner.paths] == ["1.1", "1.2"]
    assert outer.paths[0].start < inner.open < inner.close < outer.paths[0].close


def test_text_and_token_ids_give_the_same_tree_shape(tokenizer):
    from_text = parse_text(example_response())
    from_ids, _ = parse_with_tokenizer(example_response(), tokenizer)
    shape = lambda s: [(b.depth, b.labels, [u.label for u in b.paths]) for b in s.iter_blocks()]  # noqa: E731
    assert shape(from_text) == shape(from_ids)


def test_the_format_writers_write_what_the_parser_reads():
    inner = format_parallel([("1.1", "x"), ("1.2", "y")], ["xx", "yyyy"], "both")
    outer = format_parallel([("1", "first"), ("2", "second")], [f"work on a {inner} done", "b is short"], "So 3.")
    text = format_response(f"Let me split this. {outer}", "3")
    structure = parse_text(text, require_think=True)
    outer_block, inner_block = structure.iter_blocks()
    assert [u.label for u in outer_block.paths] == ["1", "2"] and [u.label for u in inner_block.paths] == ["1.1", "1.2"]
    items = split_tags(text)
    for block in (outer_block, inner_block):
        for unit, label in zip(block.paths, block.labels):
            assert "".join(items[unit.start : unit.open + 2]).startswith(path_seed(label))
        assert "".join(items[block.conclusion_start :]).startswith(CONCLUSION_SEED)
    assert "<" not in remove_tags(text) and "So 3." in remove_tags(text)


@FAST
@given(responses())
def test_random_valid_responses_parse_with_full_checks(text):
    structure, ids = parse_with_tokenizer(text, TOKENIZER, require_think=True)
    assert structure.complete and structure.length == len(ids) == len(tokens_of(text))
    assert structure.max_depth == max((b.depth + 1 for b in structure.iter_blocks()), default=0)
    assert parse_text(text, require_think=True).complete


@FAST
@given(response_prefixes())
def test_path_units_are_exactly_the_reference_units_including_their_separator(text):
    kinds = kinds_of(text)
    structure = parse_kinds(kinds, partial=True)
    assert unit_token_sets(structure) == reference_unit_token_sets(kinds)


@FAST
@given(response_prefixes())
def test_partial_mode_accepts_every_prefix_of_a_valid_response(text):
    structure, _ = parse_with_tokenizer(text, TOKENIZER, partial=True)
    assert structure.length == len(tokens_of(text))


def test_every_prefix_of_the_example_is_partial_and_incomplete_until_think_closes(tokenizer):
    ids = tokenizer(example_response(), add_special_tokens=False)["input_ids"]
    tag_ids, decode = tag_ids_from_tokenizer(tokenizer), tokenizer.decode
    think_close = ids.index(tag_ids["</Think>"])
    for cut in range(1, len(ids) + 1):
        structure = parse_ids(ids[:cut], tag_ids, decode=decode, partial=True, require_think=True)
        assert structure.length == cut
        if cut <= think_close:
            assert not structure.complete
            with pytest.raises(StructureError, match="found the end"):
                parse_ids(ids[:cut], tag_ids, decode=decode, require_think=True)
        else:
            assert parse_ids(ids[:cut], tag_ids, decode=decode, require_think=True).complete


def test_the_incremental_parser_signals_the_fork_right_after_the_goal_closes():
    parser = StructureParser(partial=True)
    items = split_tags(FLAT)
    fork_at = []
    for i, piece in enumerate(items):
        parser.feed(tag_kind(piece), i)
        if parser.expects_fork:
            fork_at.append(piece)
            branch = parser.copy()
            branch.feed(tag_kind("<Path>"), i + 1)
            assert branch.stack[-1].kind == PATH and parser.stack[-1].kind != PATH and branch.depth == parser.depth == 1
    assert fork_at == ["</Goal>"]
    assert parser.finish().complete


# ---------------------------------------------------------------------------------------------
# Malformed responses: the message names the place, what was found and what was expected


def _outline(label):
    return f"<Outline>{label}: t</Outline>"


MALFORMED = {
    # name: (text, the piece at the offending place, words the message must contain)
    "unclosed block": (f"<Think>\n{GOAL_2}{PATH_1}{PATH_2}", None, ["found the end", "<Parallel>", "unclosed"]),
    "unclosed path": (f"{GOAL_2}{PATH_1}\n<Path>\n2: y", None, ["found the end", "<Path>", "unclosed"]),
    "</Path> outside a path": ("<Think>\nhello</Path>", "</Path>", ["found </Path>", "expected"]),
    "<Path> before </Goal>": (
        "<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n<Path>",
        "<Path>",
        ["found <Path>", "</Goal>"],
    ),
    "more paths than outlines": (
        f"{GOAL_2}{PATH_1}{PATH_2}\n<Path>\n3: w</Path>{CLOSE}",
        "<Path>\n3",
        ["found <Path>", "2 outline"],
    ),
    "fewer paths at <Conclusion>": (
        f"{GOAL_2}{PATH_1}{CLOSE}",
        "<Conclusion>",
        ["found <Conclusion>", "expected <Path>", "1 of 2"],
    ),
    "path label differs from its outline": (
        f"{GOAL_2}{PATH_1}\n<Path>\n7: y</Path>{CLOSE}",
        "<Path>\n7",
        ["'7'", "expected '2'"],
    ),
    "duplicate outline labels": (
        f"<Parallel>\n<Goal>\n{_outline(1)}\n{_outline(1)}\n</Goal>",
        "</Goal>",
        ["duplicate", "'1'", "expected distinct"],
    ),
    "non-numeric outline label": (
        "<Parallel>\n<Goal>\n<Outline>a: t</Outline>",
        "a: t",
        ["'a: t'", "expected a label"],
    ),
    "non-numeric path label": (f"{GOAL_2}\n<Path>\nfirst: x</Path>", "\nfirst", ["'first: x'", "expected a label"]),
    "text between </Goal> and <Path>": (f"{GOAL_2}\nhello{PATH_1}", "\nhello", ["'hello'", "expected only whitespace"]),
    "text between </Path> and <Path>": (f"{GOAL_2}{PATH_1} and{PATH_2}", " and", ["'and'", "expected only whitespace"]),
    "text before <Conclusion>": (f"{GOAL_2}{PATH_1}{PATH_2} so{CLOSE}", " so", ["'so'", "expected only whitespace"]),
    "<Goal> without outlines": ("<Parallel>\n<Goal>\n</Goal>", "</Goal>", ["found </Goal>", "at least one <Outline>"]),
    "<Think> nested in a path": (f"<Think>\n{GOAL_2}\n<Path>\n1: <Think>", "<Think>", ["found <Think>", "</Path>"]),
    "a second <Think>": ("<Think>\na</Think>\n<Think>", "<Think>", ["found <Think>", "single"]),
    "<Conclusion> outside a block": ("<Think>\n<Conclusion>", "<Conclusion>", ["found <Conclusion>", "expected"]),
    "</Parallel> before the conclusion": (
        f"{GOAL_2}{PATH_1}{PATH_2}\n</Parallel>",
        "</Parallel>",
        ["found </Parallel>", "<Conclusion>"],
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_each_malformation_is_reported_at_its_character_offset(name):
    text, piece, words = MALFORMED[name]
    with pytest.raises(StructureError) as caught:
        parse_text(text)
    message = str(caught.value)
    where = len(text) if piece is None else text.rindex(piece)
    assert caught.value.index == where, message
    assert f"char {where}" in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("name", list(MALFORMED))
def test_each_malformation_is_reported_at_its_token_index(name, tokenizer):
    text, piece, words = MALFORMED[name]
    with pytest.raises(StructureError) as caught:
        parse_with_tokenizer(text, tokenizer)
    index = caught.value.index
    tokens = tokens_of(text)
    where = len(text) if piece is None else text.rindex(piece)
    assert index == len(tokens_of(text[:where])), str(caught.value)
    assert f"token {index}" in str(caught.value)
    if piece is not None:
        assert "".join(tokens[index:]).startswith(piece)


def test_a_response_without_think_is_rejected_only_when_think_is_required():
    text = f"plan\n{GOAL_2}{PATH_1}{PATH_2}{CLOSE}"
    assert parse_text(text).complete
    with pytest.raises(StructureError, match="found no <Think>.*expected"):
        parse_text(text, require_think=True)
    with pytest.raises(StructureError, match="expected </Think>"):
        parse_text("<Think>\nplan", require_think=True)


def test_a_required_think_admits_no_text_before_it_and_no_block_after_it():
    block = f"{GOAL_2}{PATH_1}{PATH_2}{CLOSE}"
    assert parse_text(f"\n<Think>\n{block}\n</Think>\nanswer", require_think=True).complete
    with pytest.raises(StructureError, match="char 0: found text 'preamble' before <Think>"):
        parse_text(f"preamble<Think>\n{block}\n</Think>", require_think=True)
    with pytest.raises(StructureError, match="found <Parallel>, expected text: the answer after </Think>"):
        parse_text(f"<Think>\nplan\n</Think>\n{block}", require_think=True)
    assert parse_text(f"<Think>\nplan\n</Think>\n{block}").complete  # only a response is held to this


@given(st.sampled_from(sorted(MALFORMED)), st.data())
@settings(max_examples=20, deadline=None)
def test_partial_mode_still_rejects_malformations_that_no_continuation_can_fix(name, data):
    text, piece, _ = MALFORMED[name]
    if piece is None:  # an unclosed element is exactly what partial mode allows
        assert not parse_text(text, partial=True).complete
    else:
        with pytest.raises(StructureError):
            parse_text(text, partial=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(range(-1, 12)), max_size=40), st.booleans())
def test_any_tag_soup_is_either_parsed_or_refused_with_a_structure_error(kinds, partial):
    try:
        structure = parse_kinds(kinds, partial=partial)
    except StructureError as err:
        assert 0 <= err.index <= len(kinds)
        return
    assert structure.length == len(kinds)
    structure.arrays()  # whatever the parser accepts has per-token arrays


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(list(TAGS) + ["\n", "1:", "2: a", "1.1:", "x"]), max_size=40), st.booleans())
def test_any_text_soup_is_either_parsed_or_refused_with_a_structure_error(pieces, partial):
    text = "".join(pieces)
    try:
        parse_text(text, partial=partial, require_think=partial)
    except StructureError as err:
        assert 0 <= err.index <= len(text)


@FAST
@given(responses_with_blocks(), st.data())
def test_a_response_with_one_tag_deleted_or_repeated_is_refused_or_still_consistent(text, data):
    from reference import reference_positions

    tokens = tokens_of(text)
    tags = [i for i, token in enumerate(tokens) if token.startswith("<") and len(token) > 1]
    at = data.draw(st.sampled_from(tags))
    mutated = tokens[:at] + tokens[at + 1 :] if data.draw(st.booleans()) else tokens[:at] + [tokens[at]] + tokens[at:]
    try:
        structure = parse_text("".join(mutated), partial=True)
    except StructureError as err:
        assert 0 <= err.index <= len("".join(mutated))
        return
    kinds = kinds_of("".join(mutated))
    assert parse_kinds(kinds, partial=True).arrays().position_ids.tolist() == reference_positions(kinds)
    assert structure.length >= 1


# ---------------------------------------------------------------------------------------------
# Linear time


def long_response_text(target_tokens: int) -> str:
    """A complete response of about `target_tokens` tiny-tokenizer tokens: many blocks, each with a nested one."""
    block = (
        "<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n<Outline>2: b</Outline>\n</Goal>"
        "\n<Path>\n1: " + "w" * 40 + GOAL_2 + PATH_1 + PATH_2 + CLOSE + "</Path>"
        "\n<Path>\n2: " + "v" * 60 + "</Path>" + CLOSE + "\ntext between blocks\n"
    )
    return "<Think>\n" + block * (target_tokens // len(tokens_of(block))) + "\n</Think>\nanswer"


def test_a_200k_token_sequence_parses_in_well_under_two_seconds(tokenizer):
    import torch

    kinds = torch.tensor(kinds_of(long_response_text(200_000)))
    start = time.perf_counter()
    structure = parse_kinds(kinds, require_think=True)
    arrays = structure.arrays()
    elapsed = time.perf_counter() - start
    assert structure.length == len(kinds) and arrays.length == len(kinds)
    assert len(list(structure.iter_blocks())) > 1000
    assert elapsed < 2.0, f"parse + arrays of {len(kinds)} tokens took {elapsed:.2f}s"


def test_a_200k_token_sequence_parses_with_label_and_whitespace_checks_in_a_few_seconds(tokenizer):
    ids = tokenizer(long_response_text(200_000), add_special_tokens=False)["input_ids"]
    start = time.perf_counter()
    structure = parse_ids(ids, tag_ids_from_tokenizer(tokenizer), decode=tokenizer.decode, require_think=True)
    elapsed = time.perf_counter() - start
    assert structure.complete and structure.length == len(ids) > 190_000
    assert elapsed < 4.0, f"parse_ids with decode of {len(ids)} tokens took {elapsed:.2f}s"


NESTED = f"<Think>\nq{GOAL_2}\n<Path>\n1: x{GOAL_2}{PATH_1}{PATH_2}{CLOSE}</Path>{PATH_2}{CLOSE}\n</Think>\nok"


def test_allowed_next_is_exactly_what_feed_accepts():
    """The grammar has one source: `allowed_next` answers for `feed` at every prefix, for every tag."""
    from modeling_multiverse.structure import StructureError, StructureParser, read_label

    kinds = [tag_kind(piece) for piece in split_tags(NESTED)]
    parser = StructureParser(partial=True)
    for index, kind in enumerate(kinds + [None]):
        for candidate in range(len(TAGS)):
            trial = parser.copy()
            try:
                trial.feed(candidate, index)
                accepted = True
            except StructureError as err:
                accepted = False
                assert "expected" in str(err)
            assert accepted == (candidate in parser.allowed_next()), (index, TAGS[candidate])
        if kind is None:
            break
        parser.feed(kind, index)
    assert read_label("\n2.1: b", strict=True) == "2.1" and read_label("step one: b", strict=True) is None
    assert read_label("step one: b", strict=False) == "step one" and read_label("no colon", strict=False) is None


@pytest.mark.parametrize("cut", range(1, 40))
def test_closing_items_close_every_prefix(cut):
    """Feeding `closing_items` (text as text) is always legal and leaves a fork point, a path's end, or nothing open."""
    from modeling_multiverse.structure import StructureParser

    pieces = split_tags(NESTED)[:cut]
    parser = StructureParser(partial=True)
    for index, piece in enumerate(pieces):
        parser.feed(tag_kind(piece), index)
    index = len(pieces)
    for _ in range(4):  # closing, then writing the paths a fork needs, until nothing is open
        for item in parser.closing_items():
            parser.feed(TEXT if isinstance(item, str) else item, index)
            index += 1
        if len(parser.stack) == 1:
            break
        assert parser.expects_fork or parser.stack[-1].kind == PARALLEL
        block = parser.current_block
        for k in range(len(block.paths), len(block.outlines)):
            for kind in (PATH, TEXT, PATH_END):
                parser.feed(kind, index)
                index += 1
        parser.feed(CONCLUSION, index)
        index += 1
    assert len(parser.stack) == 1
