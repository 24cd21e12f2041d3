"""Continuous batching (`serving.ContinuousEngine`): requests that join a running engine, staggered, with forced
fork/merge skeletons, give the tokens (and logprobs) of the request alone; cancellation; per-request parameters."""

from __future__ import annotations

import math

import pytest
import torch
from engine_skeleton import SkeletonProcessor, block, skeleton_template
from tiny import tiny_model
from transformers import LogitsProcessor, LogitsProcessorList

from modeling_multiverse.serving import ContinuousEngine

# each request forks and merges at its own times: flat, nested, two blocks, none, eight paths
SKELETONS = [
    [2, block(["1", "2"], [[3], [11]]), 2],
    [2, block(["1", "2", "3"], [[4], [2, block(["2.1", "2.2"], [[3], [6]]), 2], [7]]), 3],
    [1, block(["1", "2"], [[2], [5]]), 2, block(["1", "2", "3", "4"], [[1], [2], [3], [4]]), 1],
    [9],
    [1, block([str(i) for i in range(1, 9)], [[i % 4 + 1] for i in range(8)], outline=1), 1],
]
TEXTS = ["first question", "a much longer second prompt, with more words in it", "3", "plain", "eight paths"]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request):
    return tiny_model(request.param, layers=2, seed=1)


def prompt_ids(tokenizer, text: str) -> list[int]:
    chat = [{"role": "user", "content": text}]
    return list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])


def skeleton(tokenizer, k: int) -> LogitsProcessorList:
    return LogitsProcessorList([SkeletonProcessor(skeleton_template(tokenizer, SKELETONS[k]), tokenizer)])


def alone(model, tokenizer, ids: list[int], **kwargs) -> tuple[list[int], list[float]]:
    """(response, token logprobs) of `model.generate` on this prompt alone."""
    out = model.generate(
        input_ids=torch.tensor([ids]), tokenizer=tokenizer, return_dict_in_generate=True, output_scores=True, **kwargs
    )
    length = out.generated_tokens[0] + out.closing_tokens[0]
    return out.sequences[0, len(ids) : len(ids) + length].tolist(), out.token_logprobs[0, :length].tolist()


def assert_logprobs_close(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (math.isnan(g) and math.isnan(w)) or abs(g - w) <= 1e-5, (g, w)


class Recorder:
    """A streamer (put/end) that keeps what it got."""

    def __init__(self):
        self.puts: list[list[int]] = []
        self.ended = 0

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.reshape(-1).tolist())

    def end(self) -> None:
        self.ended += 1


def test_staggered_requests_decode_as_if_alone(tiny):
    model, tokenizer = tiny
    prompts = [prompt_ids(tokenizer, t) for t in TEXTS]
    engine = ContinuousEngine(model, tokenizer, max_running=3, output_scores=True)
    arrivals = {0: [0], 3: [1], 6: [2, 3], 11: [4]}  # 3 and 4 wait for room: finished rows are refilled
    requests, streamers, seen = {}, {}, []
    for step in range(2000):
        for k in arrivals.get(step, []):
            streamers[k] = Recorder()
            requests[k] = engine.add_request(
                prompts[k], max_new_tokens=400, logits_processor=skeleton(tokenizer, k), streamer=streamers[k]
            )
        if len(requests) == len(TEXTS) and not engine.running and not engine.waiting:
            break
        engine.step()
        seen.append(engine.stats())
    assert max(s["running"] for s in seen) == 3 and max(s["waiting"] for s in seen) >= 1
    for k, request in requests.items():
        processors = skeleton(tokenizer, k)
        tokens, logprobs = alone(model, tokenizer, prompts[k], logits_processor=processors, max_new_tokens=400)
        assert request.finished and request.response_ids == tokens, k
        assert_logprobs_close(request.token_logprobs, logprobs)
        # the stream contract of `generate(streamer=...)`: the prompt, then the canonical response, then end()
        puts = streamers[k].puts
        assert puts[0] == prompts[k] and [t for put in puts[1:] for t in put] == tokens and streamers[k].ended == 1
    assert seen[-1]["running"] == 0 and seen[-1]["peak_cache_columns"] >= seen[-1]["cache_columns"]


def test_columns_no_running_row_sees_are_compacted(tiny):
    model, tokenizer = tiny
    prompts = [prompt_ids(tokenizer, t) for t in TEXTS[:2]]
    engine = ContinuousEngine(model, tokenizer, max_running=2)
    long = engine.add_request(prompts[0], max_new_tokens=120, logits_processor=skeleton(tokenizer, 0))
    for _ in range(60):  # the first request writes alone for a while, then the second joins and outlives it
        engine.step()
    late = engine.add_request(prompts[1], max_new_tokens=200, logits_processor=skeleton(tokenizer, 1))
    widths = []
    while engine.running or engine.waiting:
        engine.step()
        widths.append(engine.stats()["cache_columns"])
    assert long.finished and late.finished
    assert min(widths[-5:]) < max(widths)  # the first request's columns were dropped once it left
    want, _ = alone(model, tokenizer, prompts[1], logits_processor=skeleton(tokenizer, 1), max_new_tokens=200)
    assert late.response_ids == want


def test_cancelled_requests_leave_and_the_others_are_unchanged(tiny):
    model, tokenizer = tiny
    prompts = [prompt_ids(tokenizer, t) for t in TEXTS[:3]]
    engine = ContinuousEngine(model, tokenizer, max_running=2)
    streamer = Recorder()
    doomed = engine.add_request(
        prompts[0], max_new_tokens=300, logits_processor=skeleton(tokenizer, 0), streamer=streamer
    )
    kept = engine.add_request(prompts[1], max_new_tokens=300, logits_processor=skeleton(tokenizer, 1))
    never = engine.add_request(prompts[2], max_new_tokens=300)  # waits, and is cancelled before it runs
    for _ in range(4):
        engine.step()
    engine.cancel(doomed)
    engine.cancel(never)
    finished = engine.step()
    assert doomed in finished and doomed.finished and streamer.ended == 1
    assert engine.stats()["running"] == 1  # its cache row is gone
    engine.run_until_done()
    assert never.finished and never.response_ids == []
    want, _ = alone(model, tokenizer, prompts[1], logits_processor=skeleton(tokenizer, 1), max_new_tokens=300)
    assert kept.response_ids == want


def test_per_request_sampling_and_stop_strings(tiny):
    model, tokenizer = tiny
    prompts = [prompt_ids(tokenizer, t) for t in TEXTS[:3]]
    free = skeleton_template(tokenizer, [40])

    def sampled(engine, seed):
        processors = LogitsProcessorList([SkeletonProcessor(free, tokenizer)])
        return engine.add_request(
            prompts[0], max_new_tokens=60, do_sample=True, temperature=0.7, top_p=0.9, seed=seed,
            logits_processor=processors,
        )

    solo = ContinuousEngine(model, tokenizer)
    one = sampled(solo, 5)
    solo.run_until_done()
    crowd = ContinuousEngine(model, tokenizer, max_running=4)
    greedy = crowd.add_request(prompts[1], max_new_tokens=60, logits_processor=skeleton(tokenizer, 2))
    same, other = sampled(crowd, 5), sampled(crowd, 6)
    crowd.run_until_done()
    assert same.response_ids == one.response_ids != other.response_ids  # a seed is the request's own
    want, _ = alone(model, tokenizer, prompts[1], logits_processor=skeleton(tokenizer, 2), max_new_tokens=60)
    assert greedy.response_ids == want
    # stop strings per request: as `generate(stop_strings=...)` on the prompt alone
    stop = tokenizer.decode(want[12:14])
    full = ContinuousEngine(model, tokenizer)
    stopped = full.add_request(
        prompts[1], max_new_tokens=60, logits_processor=skeleton(tokenizer, 2), stop_strings=stop
    )
    full.add_request(prompts[2], max_new_tokens=60)
    full.run_until_done()
    want_stopped, _ = alone(
        model, tokenizer, prompts[1], logits_processor=skeleton(tokenizer, 2), max_new_tokens=60, stop_strings=stop
    )
    assert stopped.response_ids == want_stopped and len(want_stopped) < len(want)


def test_bad_requests_are_refused_at_once(tiny):
    model, tokenizer = tiny
    engine = ContinuousEngine(model, tokenizer)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([])
    with pytest.raises(ValueError, match="top_p"):
        engine.add_request([1, 2], do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="inside a <Parallel>"):
        engine.add_request(tokenizer("<Parallel>", add_special_tokens=False)["input_ids"])
    assert not engine.waiting


def test_requests_with_one_prompt_share_its_prefill(tiny):
    """The `n` answers of one chat request: one prefill pass between them, each answer as if alone."""
    model, tokenizer = tiny
    prompt = prompt_ids(tokenizer, TEXTS[1])
    widths = []
    forward = model.forward

    def counting(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape)
        return forward(*args, **kwargs)

    def seeded(engine, seed):
        processors = LogitsProcessorList([SkeletonProcessor(skeleton_template(tokenizer, [30]), tokenizer)])
        return engine.add_request(prompt, max_new_tokens=30, do_sample=True, temperature=0.8, seed=seed,
                                  logits_processor=processors)

    solos = []
    for seed in (1, 2, 3):
        solo = ContinuousEngine(model, tokenizer)
        solos.append(seeded(solo, seed))
        solo.run_until_done()
    model.forward = counting
    try:
        for occupied in (False, True):  # into an idle engine, and beside a request already decoding
            engine = ContinuousEngine(model, tokenizer, max_running=4)
            if occupied:
                engine.add_request(prompt_ids(tokenizer, TEXTS[0]), max_new_tokens=40)
                engine.step()
            widths.clear()
            answers = [seeded(engine, seed) for seed in (1, 2, 3)]
            engine.step()
            assert widths[0] == (1, len(prompt) - 1), "one pass over the shared prompt"
            assert all(w[1] < len(prompt) - 1 for w in widths[1:]), widths
            engine.run_until_done()
            assert [a.response_ids for a in answers] == [s.response_ids for s in solos]
    finally:
        model.forward = forward
    assert len({tuple(s.response_ids) for s in solos}) > 1, "the seeds drew different answers"


def test_a_cancel_that_lands_during_a_step_leaves_at_the_next(tiny):
    """`cancel` comes from another thread, maybe while a step runs: the request must leave the engine's rows too."""
    model, tokenizer = tiny
    prompt = prompt_ids(tokenizer, TEXTS[0])
    engine = ContinuousEngine(model, tokenizer)
    mine = []

    class CancelMidStep(LogitsProcessor):
        def __call__(self, ids, scores):
            if ids.shape[1] == len(prompt) + 3:
                engine.cancel(mine[0])
            return scores

    mine.append(engine.add_request(prompt, max_new_tokens=50, logits_processor=LogitsProcessorList([CancelMidStep()])))
    engine.run_until_done()
    assert mine[0].finished and len(mine[0].response_ids) == 4
    assert engine.engine.rows == [] and engine.stats()["cache_columns"] == 0, "nothing left decoding for nobody"
