"""Streaming fork/merge generation through the public API: `generate(streamer=...)` and `branch_callback`.

The contract: the streamed text, concatenated, is `tokenizer.decode` of the canonical response, and each
token is streamed as soon as its place in canonical order is final (trunk live, path 1 live, path k when
paths 1..k-1 are done, then the conclusion). Skeletons are forced with a logits processor.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from engine_skeleton import SkeletonProcessor, block, skeleton_template
from tiny import tiny_model
from transformers import LogitsProcessorList, TextIteratorStreamer, TextStreamer

from modeling_multiverse import TAGS
from modeling_multiverse.structure import PATH, PATH_END

SKELETONS = {
    "flat_path1_longest": ([2, block(["1", "2", "3"], [[12], [2], [5]]), 2], {}),
    "flat_path1_shortest": ([1, block(["1", "2"], [[2], [11]]), 2], {}),
    "nested": ([2, block(["1", "2", "3"], [[9], [2, block(["2.1", "2.2"], [[6], [3]]), 2], [4]]), 3], {}),
    "nested_sequential": (
        [2, block(["1", "2"], [[3, block(["1.1", "1.2"], [[2], [5]]), 1], [8]]), 2], {"max_depth": 1}
    ),
    "two_blocks": ([1, block(["1", "2"], [[6], [2]]), 2, block(["1", "2", "3"], [[1], [4], [2]]), 1], {}),
}


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", layers=2, seed=1)


def prompt(tokenizer, text: str = "What is 2+2?"):
    chat = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)


def forced(tokenizer, skeleton) -> LogitsProcessorList:
    return LogitsProcessorList([SkeletonProcessor(skeleton_template(tokenizer, skeleton), tokenizer)])


class Recorder:
    """A put/end streamer that records what it gets in one log shared with the branch events."""

    def __init__(self, log: list):
        self.log = log
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.log.append(("put", value.tolist()))

    def end(self) -> None:
        self.ended = True


def generate(model, tokenizer, skeleton, options=None, **kwargs):
    enc = prompt(tokenizer)
    out = model.generate(
        **enc,
        tokenizer=tokenizer,
        logits_processor=forced(tokenizer, skeleton),
        do_sample=False,
        max_new_tokens=400,
        return_dict_in_generate=True,
        **(options or {}),
        **kwargs,
    )
    return enc, out, out.sequences[0, enc["input_ids"].shape[1] :].tolist()


class Fork(NamedTuple):
    block: int  # of its branch, 0-based
    paths: int


def final_length(nodes: dict, index: tuple = ()) -> tuple[int, bool]:
    """Oracle: how many tokens under `index` are final in canonical order, and whether all of them are."""
    node = nodes[index]
    count = 0
    for item in node["items"]:
        if not isinstance(item, Fork):
            count += 1
            continue
        for k in range(item.paths):
            child = index + ((item.block, k),)
            if child not in nodes:
                return count, False
            n, complete = final_length(nodes, child)
            count += n
            if not complete:
                return count, False
    return count, node["done"]


def rebuild(nodes: dict, index: tuple = ()) -> list[int]:
    """The canonical response from branch events: each branch's tokens with its paths, in label order."""
    tokens = []
    for item in nodes[index]["items"]:
        if not isinstance(item, Fork):
            tokens.append(item)
        else:
            for k in range(item.paths):
                tokens.extend(rebuild(nodes, index + ((item.block, k),)))
    return tokens


def replay(events) -> dict:
    nodes = {(): {"items": [], "done": False}}
    for event in events:
        node = nodes.setdefault(event.index, {"items": [], "done": False})
        if event.kind == "tokens":
            node["items"].extend(event.token_ids)
        elif event.kind == "fork":
            node["items"].append(Fork(sum(isinstance(i, Fork) for i in node["items"]), len(event.labels)))
        else:
            node["done"] = True
    return nodes


class PrintingRecorder(TextStreamer):
    """transformers' `TextStreamer` that also records each `put` in a log shared with the branch events."""

    def __init__(self, tokenizer, log: list):
        super().__init__(tokenizer, skip_prompt=True)
        self.log = log
        self.printed: list[str] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.log.append(("put", value.tolist()))
        super().put(value)

    def end(self) -> None:
        super().end()
        self.ended = True

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.printed.append(text)


@pytest.mark.parametrize("name", list(SKELETONS))
def test_each_token_is_streamed_as_soon_as_its_place_is_final(tiny, name):
    model, tokenizer = tiny
    skeleton, options = SKELETONS[name]
    log: list = []
    streamer = PrintingRecorder(tokenizer, log)
    enc, out, response = generate(model, tokenizer, skeleton, options, streamer=streamer, branch_callback=log.append)
    assert response.count(tokenizer.convert_tokens_to_ids(TAGS[PATH])) >= 2, "the skeleton forked"
    assert "".join(streamer.printed) == tokenizer.decode(response) and streamer.ended
    puts = [value for kind, value in (e for e in log if isinstance(e, tuple))]
    assert puts[0] == enc["input_ids"].tolist(), "the prompt comes first, as in transformers"
    assert all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in puts[1:])
    assert [t for v in puts[1:] for t in v] == response

    events, streamed = [], 0
    for entry in log[1:]:
        if isinstance(entry, tuple):
            streamed += len(entry[1])
            continue
        events.append(entry)
        expected, _ = final_length(replay(events))
        assert streamed == expected, f"after {entry.kind} of path {entry.path}: streamed {streamed}, final {expected}"
    assert len(events) > len(response) // 2
    assert rebuild(replay(events)) == response


def test_iterator_streamer_and_plain_generate_agree(tiny):
    model, tokenizer = tiny
    skeleton, options = SKELETONS["nested_sequential"]
    iterator = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    _, streamed, response = generate(model, tokenizer, skeleton, options, streamer=iterator)
    _, plain, _ = generate(model, tokenizer, skeleton, options)
    assert torch.equal(streamed.sequences, plain.sequences), "streaming changes nothing in the output"
    assert "".join(iterator) == tokenizer.decode(response, skip_special_tokens=True)


def test_a_later_path_waits_for_the_earlier_ones_then_arrives_whole(tiny):
    model, tokenizer = tiny
    skeleton, _ = SKELETONS["flat_path1_longest"]
    log: list = []
    _, _, response = generate(model, tokenizer, skeleton, streamer=Recorder(log), branch_callback=log.append)
    text = ""
    path2_done_at = path1_done_at = None
    for entry in log[1:]:
        if isinstance(entry, tuple):
            text += tokenizer.decode(entry[1])
        elif entry.kind == "done" and entry.path == ("2",):
            path2_done_at = text
        elif entry.kind == "done" and entry.path == ("1",):
            path1_done_at = text
    path2 = "\n" + TAGS[PATH] + "\n2:"
    assert path2_done_at is not None and path1_done_at is not None
    assert path2 not in path2_done_at, "path 2 finished first, but nothing of it is shown before path 1 ends"
    # paths 2 and 3 are shorter than path 1: when path 1 ends, both arrive whole, in label order
    assert path1_done_at.endswith(TAGS[PATH_END]) and path1_done_at.count(TAGS[PATH_END]) == 3
    assert path1_done_at.index(path2) < path1_done_at.index("\n" + TAGS[PATH] + "\n3:")
    assert text == tokenizer.decode(response)


def test_branch_events_report_paths_labels_and_counters_for_a_batch(tiny):
    model, tokenizer = tiny
    skeleton, _ = SKELETONS["nested"]
    tokenizer.padding_side = "left"
    chats = [[{"role": "user", "content": t}] for t in ("hi", "a longer question")]
    enc = tokenizer.apply_chat_template(
        chats, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
    )
    events = []
    out = model.generate(
        **enc, tokenizer=tokenizer, logits_processor=forced(tokenizer, skeleton), max_new_tokens=400,
        return_dict_in_generate=True, branch_callback=events.append,
    )
    width = enc["input_ids"].shape[1]
    for row in (0, 1):
        mine = [e for e in events if e.row == row]
        response = out.sequences[row, width : width + out.generated_tokens[row] + out.closing_tokens[row]].tolist()
        assert rebuild(replay(mine)) == response
        assert {e.path for e in mine} == {(), ("1",), ("2",), ("3",), ("2", "2.1"), ("2", "2.2")}
        forks = [e for e in mine if e.kind == "fork"]
        assert [(f.path, f.labels, f.parallel) for f in forks] == [
            ((), ("1", "2", "3"), True),
            (("2",), ("2.1", "2.2"), True),
        ]
        assert sorted(e.path for e in mine if e.kind == "done") == [("1",), ("2",), ("2", "2.1"), ("2", "2.2"), ("3",)]
        steps = [e.decode_steps for e in mine]
        assert steps == sorted(steps) and mine[-1].generated_tokens == out.generated_tokens[row]
        tokens_at_step = {}
        for e in mine:
            if e.kind == "tokens" and len(e.token_ids) == 1:
                tokens_at_step.setdefault(e.decode_steps, set()).add(e.path)
        assert max(len(paths) for paths in tokens_at_step.values()) >= 3, "paths advance in the same step"


def test_serving_streamer_gets_the_text_and_a_cancel_ends_it(tiny):
    """The streamer `multiverse serve` gives each request of its continuous engine: text deltas that concatenate
    to the response, and nothing more once the request is cancelled."""
    from modeling_multiverse.serving import ContinuousEngine
    from multiverse.serve import TextStream

    model, tokenizer = tiny
    skeleton, _ = SKELETONS["nested"]
    ids = prompt(tokenizer)["input_ids"]
    skip = set(tokenizer.all_special_ids)
    engine = ContinuousEngine(model, tokenizer, max_running=2, eos_token_id=tokenizer.eos_token_id)
    whole, cut = [], []
    streamers = [TextStream(tokenizer, skip, whole.append), TextStream(tokenizer, skip, cut.append)]
    requests = [
        engine.add_request(ids, max_new_tokens=400, logits_processor=forced(tokenizer, skeleton), streamer=streamer)
        for streamer in streamers
    ]
    for _ in range(12):
        engine.step()
    engine.cancel(requests[1])
    sent_before_cancel = "".join(cut)
    engine.run_until_done()
    response = requests[0].response_ids
    assert len(whole) > 3, "the text arrives in several deltas"
    assert "".join(whole) == tokenizer.decode(response, skip_special_tokens=True)
    assert streamers[0].ids == [t for t in response if t not in skip]
    assert "".join(cut).startswith(sent_before_cancel) and len("".join(cut)) < len("".join(whole))
    assert requests[1].cancelled and requests[1].finished


def test_a_streamer_takes_one_prompt(tiny):
    model, tokenizer = tiny
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with pytest.raises(ValueError, match="one prompt"):
        model.generate(ids, tokenizer=tokenizer, streamer=Recorder([]))


def test_continuous_batching_says_it_cannot_fork(tiny):
    model, _ = tiny
    with pytest.raises(NotImplementedError, match="continuous batching"):
        model.init_continuous_batching()
