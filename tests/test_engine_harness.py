"""Any generate-based evaluation harness works (issue 23): `model.generate()` driven as lm-evaluation-harness
drives a Hugging Face model gives, before any stop, the texts `multiverse eval` gives for the same prompts.

The harness side, as such harnesses do it: prompts sorted longest first, left-padded batches,
`max_length` (prompt width + generation budget) instead of `max_new_tokens`, its own stop-sequence
criterion with per-row state (written below as lm-evaluation-harness writes it), `pad_token_id`,
`do_sample=False`, `sequences[:, input_len:]` decoded and cut at the first stop string.
"""

from __future__ import annotations

import re

from test_engine_criteria import BODIES, QUESTIONS, PromptSkeletons
from tiny import tiny_model
from transformers import AutoModelForCausalLM, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from evaluation.evaluate import encode_prompts, evaluate

BUDGET = 400
HARNESS_BATCH = 4


class MultiTokenEOSCriteria(StoppingCriteria):
    """A harness's stop-sequence criterion: a `done` flag per row of the batch, a look back over the last
    tokens after the prompt, and one bool for the whole batch (every row has seen the stop)."""

    def __init__(self, sequence: str, tokenizer, initial_decoder_input_length: int, batch_size: int):
        self.initial_decoder_input_length = initial_decoder_input_length
        self.done_tracker = [False] * batch_size
        self.sequence = sequence
        self.sequence_id_len = len(tokenizer.encode(sequence, add_special_tokens=False)) + 2
        self.tokenizer = tokenizer
        self.row_counts: set[int] = set()

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        self.row_counts.add(input_ids.shape[0])
        lookback_ids_batch = input_ids[:, self.initial_decoder_input_length :][:, -self.sequence_id_len :]
        lookback_tokens_batch = self.tokenizer.batch_decode(lookback_ids_batch)
        for i, done in enumerate(self.done_tracker):
            if not done:
                self.done_tracker[i] = self.sequence in lookback_tokens_batch[i]
        return False not in self.done_tracker


def harness_generate_until(model, tokenizer, records: list[dict], until: list[str]) -> dict[str, str]:
    """Texts per question, generated and cut the way a generate-based harness does it."""
    ordered = sorted(records, key=lambda r: -len(encode_prompts(tokenizer, [r], True, "cpu")["input_ids"][0]))
    texts, criteria = {}, []
    for first in range(0, len(ordered), HARNESS_BATCH):
        batch = ordered[first : first + HARNESS_BATCH]
        enc = encode_prompts(tokenizer, batch, True, "cpu")  # left-padded
        width = enc["input_ids"].shape[1]
        stops = [MultiTokenEOSCriteria(s, tokenizer, width, len(batch)) for s in until]
        criteria += stops
        out = model.generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            max_length=width + BUDGET,
            stopping_criteria=StoppingCriteriaList(stops),
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            do_sample=False,
        )
        for record, continuation in zip(batch, out[:, width:].tolist()):
            text = tokenizer.decode(continuation)
            for term in until:
                text = text.split(term)[0]
            texts[record["question"]] = text
    assert {n for c in criteria for n in c.row_counts} <= {HARNESS_BATCH, len(ordered) % HARNESS_BATCH or HARNESS_BATCH}
    return texts


def path_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"<Path>.*?</Path>", text, re.S)]


def stop_first_seen_in_a_path(texts: list[str]) -> str:
    """Two characters of free text whose first occurrence in some response lies inside a path, and that some
    other response never writes: that row is cut in a path, another runs to its end."""
    for text in texts:
        for start, end in path_spans(text):
            body = text[start:end]
            for j in range(body.index(":") + 1, len(body) - 1):
                stop = body[j : j + 2]
                if re.search(r"[<>\n:0-9]", stop):
                    continue
                first = text.index(stop)
                inside = any(s <= first < e for s, e in path_spans(text))
                if inside and any(stop not in other for other in texts):
                    return stop
    raise AssertionError("no stop string found inside a path")


def test_a_harness_driving_generate_gets_multiverse_evals_texts(monkeypatch, tmp_path):
    built, tokenizer = tiny_model("llama", layers=2, seed=1)
    built.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    # as a harness loads it: the folder's remote code, the tokenizer found beside the weights
    model = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    records = [{"id": i, "question": q, "answer": "1", "kind": "math"} for i, q in enumerate(QUESTIONS)]
    processor = PromptSkeletons(tokenizer, dict(zip(QUESTIONS, BODIES)))
    decode = model.generate
    # the model writes each question's skeleton, whoever calls generate
    forced = LogitsProcessorList([processor])
    monkeypatch.setattr(model, "generate", lambda *args, **kwargs: decode(*args, logits_processor=forced, **kwargs))

    report = evaluate(model, tokenizer, records, "math", max_new_tokens=BUDGET, batch_size=3)
    eval_texts = {r["id"]: r["response"] for r in report["records"]}
    assert all(r["finished"] and r["well_formed"] for r in report["records"])
    assert sum(r["decode_steps"] < r["generated_tokens"] for r in report["records"]) >= 6  # forks happened
    eos = tokenizer.decode([tokenizer.eos_token_id])
    stop = stop_first_seen_in_a_path(list(eval_texts.values()))
    harness = harness_generate_until(model, tokenizer, records, until=[stop, eos])
    for record in records:
        expected = eval_texts[record["id"]].split(stop)[0]
        assert harness[record["question"]] == expected, record["question"]
    cut = [q for q in QUESTIONS if stop in eval_texts[QUESTIONS.index(q)]]
    assert cut and len(cut) < len(QUESTIONS), "some rows stop, others run to their eos"
