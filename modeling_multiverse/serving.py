"""Continuous batching: requests join a running Multiverse Engine and leave it as they finish (issue 22).

`ContinuousEngine` keeps one `MultiverseEngine` running. `add_request` queues a prompt with its own
generation parameters and returns a `Request`; `step()` admits waiting requests (up to `max_running`),
runs one forward pass over every running row, and retires finished or cancelled requests. One thread
drives `step()` (or `run_until_done()`); `add_request` and `cancel` may be called from any thread.

A request joins as a new cache row whose earlier columns it cannot see, its prompt prefilled at the next
step with positions 0..P-1 (in a pass of its own, then spliced into its row): its result does not depend
on what else runs (in fp32 with greedy decoding, the same tokens as `model.generate` on it alone).
Per request:
- `max_new_tokens`, `stop_strings` (a stop ends it as in `generate`), `logits_processor` (its own list);
- greedy (`do_sample=False`) or sampled with its own `temperature`, `top_p` and `seed` (a torch.Generator
  of its own, so a seeded request draws the same tokens whatever runs beside it);
- `streamer` (transformers' put/end: the prompt, then the canonical response as it becomes final, then
  `end()` when the request finishes or is cancelled) and `branch_callback` (`streaming.BranchEvent`s,
  `row` 0). eos comes from the engine's generation config.

Requests admitted at the same step with the same prompt (the `n` answers of one chat request) share its
prefill: one forward pass, its keys and values spliced into each of their rows.

Memory: a finished row's cache row is dropped at once; cache columns that no running row sees any more
(what the oldest requests wrote) are compacted away once they are an eighth of the cache; an idle engine frees
its buffers. `stats()` reports running and waiting requests, cache columns and the tokens still seen.

Only torch and transformers, like the rest of the core.

Example:
    >>> engine = ContinuousEngine(model, tokenizer, max_running=8)  # doctest: +SKIP
    >>> a = engine.add_request(ids_a, max_new_tokens=256)  # greedy  # doctest: +SKIP
    >>> b = engine.add_request(ids_b, do_sample=True, temperature=0.7, top_p=0.9, seed=1)  # doctest: +SKIP
    >>> engine.run_until_done()  # doctest: +SKIP
    >>> tokenizer.decode(a.response_ids), b.finished  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import (
    LogitsProcessorList,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import StopStringCriteria

from .decode_attention import engine_attention
from .engine import MultiverseEngine
from .engine_state import _Sequence
from .generation import ENGINE_DEFAULTS, block_stats, resolve_engine_options
from .streaming import GenerationStream
from .transformers_generation import prepare_generation_config, prepare_special_tokens


@dataclass(eq=False)
class Request:
    """One request: its prompt, parameters, and (once finished) its response.

    `response_ids` is the canonical response (prompt excluded, closing tags included); `token_logprobs`
    (with `output_scores=True`) aligns with it as in `generate` (NaN where the engine forced a token).
    """

    id: int
    prompt: list[int]
    max_new_tokens: int
    seq: _Sequence  # the engine's sequence: its parameters, stream and (as it runs) branches
    finished: bool = False
    cancelled: bool = False
    stats: dict = field(default_factory=dict)

    @property
    def response_ids(self) -> list[int]:
        return self.seq.root.view[self.seq.prompt_length :]

    @property
    def token_logprobs(self) -> list[float]:
        return self.seq.root.logprobs[self.seq.prompt_length :]


class ContinuousEngine:
    """A running Multiverse Engine that requests join and leave between steps (see the module docstring).

    `generation_config`/`generation_kwargs` give what every request shares (eos, pad, `output_scores`);
    `engine_options` are those of `generation.ENGINE_DEFAULTS`. What differs per request (sampling, budget,
    stop strings, logits processors) is refused here: `add_request` takes it.
    """

    PER_REQUEST = ("max_new_tokens", "do_sample", "temperature", "top_p", "stop_strings", "logits_processor",
                   "stopping_criteria", "streamer", "branch_callback")

    def __init__(self, model, tokenizer, max_running: int = 8, generation_config=None, **kwargs):
        if max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        per_request = sorted(k for k in self.PER_REQUEST if kwargs.get(k) is not None)
        if per_request:
            raise ValueError(f"{', '.join(per_request)}: a per-request setting, pass it to add_request")
        options = resolve_engine_options(model, generation_config, **{k: kwargs.pop(k, None) for k in ENGINE_DEFAULTS})
        config, unused = prepare_generation_config(model, generation_config, {"do_sample": False, **kwargs})
        unused = sorted(k for k, v in unused.items() if v is not None)
        if unused:
            raise ValueError(f"unexpected arguments to the continuous engine: {', '.join(unused)}")
        prepare_special_tokens(model, config, True, model.device)
        self.model, self.tokenizer, self.max_running = model, tokenizer, max_running
        self.engine = MultiverseEngine(model, tokenizer, config, LogitsProcessorList(), StoppingCriteriaList(), options)
        self.engine.compact = True
        self.engine.share_prefill = True
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        # guards `waiting` and what `step` reads of the requests (add_request and cancel may run on another thread);
        # re-entrant, so that a caller may hold it around add_request/cancel (`runtime.distributed.LockstepEngine`)
        self.lock = threading.RLock()
        self.ids = itertools.count()

    def add_request(
        self,
        input_ids,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_strings: str | list[str] | None = None,
        logits_processor: LogitsProcessorList | None = None,
        streamer=None,
        branch_callback=None,
    ) -> Request:
        """Queue a prompt (a list of ids or a `[P]`/`[1, P]` tensor, no padding); it joins at a later `step()`.

        `temperature`/`top_p` apply when `do_sample` (after `logits_processor`); `seed` makes it reproducible.
        """
        prompt = torch.as_tensor(input_ids).reshape(-1).tolist()
        if not prompt:
            raise ValueError("the prompt is empty: the engine needs at least one prompt token to start from")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        processors = LogitsProcessorList(logits_processor or [])
        generator = None
        if do_sample:
            if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
                raise ValueError(f"temperature must be a finite number > 0 when sampling, got {temperature}")
            if top_p is not None and not (0 < top_p <= 1):
                raise ValueError(f"top_p must be in (0, 1], got {top_p}")
            if temperature is not None and temperature != 1.0:
                processors.append(TemperatureLogitsWarper(temperature))
            if top_p is not None and top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p))
            generator = torch.Generator(self.model.device)
            generator.manual_seed(seed if seed is not None else torch.seed())
        stopping = None
        if stop_strings:
            stopping = StoppingCriteriaList([StopStringCriteria(tokenizer=self.tokenizer, stop_strings=stop_strings)])
        with self.lock:
            request_id = next(self.ids)
        seq = self.engine.sequence(prompt, request_id, max_new_tokens)  # a prompt that breaks the grammar: raised here
        seq.processors, seq.stopping = processors or None, stopping
        seq.do_sample, seq.generator = do_sample, generator
        seq.stream, seq.stream_row = GenerationStream(streamer, branch_callback), 0  # its own stream, one prompt
        seq.stream.prompt(torch.tensor([prompt]))
        request = Request(request_id, prompt, max_new_tokens, seq)
        with self.lock:
            self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> bool:
        """A waiting request leaves at once (True: it is finished now, its stream ended); a running one at the
        next step (its stream ends there, `step()` returns it); a finished one is left as it is."""
        with self.lock:
            request.cancelled = True
            waiting = request in self.waiting
            if waiting:
                self.waiting.remove(request)
                request.finished = True
        if waiting:
            request.seq.stream.end()
        return waiting

    def step(self, boundary: Callable[[], None] | None = None) -> list[Request]:
        """Admit waiting requests, run one forward pass, retire: the requests that finished (or left) now.

        `boundary` (optional) is called first, holding `lock`, which is held until admissions and cancels are
        read: what it does to the queue is exactly what this step sees (tensor parallelism: every process applies
        rank 0's adds and cancels there, `runtime.distributed.LockstepEngine`). Nothing running: no forward pass.
        """
        with self.lock:
            if boundary is not None:
                boundary()
            self._admit()
            for request in self.running:
                request.seq.cancelled = request.cancelled
        with torch.no_grad(), engine_attention(self.model):
            stepped = self.engine.step()
        # what the engine saw, not `request.cancelled`: a cancel that lands during the step leaves at the next one
        if not stepped and any(not (r.seq.cancelled or r.seq.done) for r in self.running):
            raise RuntimeError("internal error: running requests with nothing to feed")
        finished = [r for r in self.running if r.seq.cancelled or r.seq.done]
        for request in finished:
            request.finished = True
            seq = request.seq
            request.stats = {"generated_tokens": seq.generated, "closing_tokens": seq.closing_tokens,
                             "decode_steps": seq.steps, "parallelism": seq.generated / max(seq.steps, 1),
                             "blocks": block_stats(self.engine, seq)}
            seq.stream.end()
        self.running = [r for r in self.running if not r.finished]
        return finished

    def run_until_done(self) -> None:
        """Step until no request runs or waits."""
        while self.running or self.waiting:
            self.step()

    def stats(self) -> dict:
        """Running and waiting requests with the engine's cache use (`MultiverseEngine.stats`)."""
        return {"running": len(self.running), "waiting": len(self.waiting), **self.engine.stats()}

    def _admit(self) -> None:
        """Waiting requests join in arrival order while there is room (a cancelled one left the queue at once)."""
        with self.lock:
            while self.waiting and len(self.running) < self.max_running:
                request = self.waiting[0]
                if request.seq.prompt_structure is not None and self.running:
                    return  # a prompt that holds blocks joins an idle engine (its SPEC.md §4 prefill)
                self.waiting.popleft()
                self.engine.admit(request.seq)
                self.running.append(request)


__all__ = ["ContinuousEngine", "Request"]
