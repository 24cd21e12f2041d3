"""`multiverse serve --model DIR`: an OpenAI-compatible chat server that decodes with fork/merge.

`POST /v1/chat/completions` (streamed as server-sent events, or one JSON object), `GET /v1/models`,
`GET /health`. Every request goes through `model.generate()` (the Multiverse engine); a streamed answer
is the canonical response as it becomes final (`modeling_multiverse/streaming.py`), so its chunks
concatenate to the text a non-streamed request returns.

Admission (`Scheduler`): at most `--max-running` requests are decoded at once, as the rows of one batched
`generate()` call; at most `--max-waiting` more wait, and past that a request is refused at once with 503 and
`Retry-After`. Waiting requests with the same generation parameters (greedy or unseeded sampling, same
budget and stop strings) form the next batch, oldest first. A batch is static until the engine admits
requests into a running batch (issue 22): a request that arrives while a batch decodes waits for it to end.
A client that disconnects while waiting leaves the queue at once; one that disconnects while its row decodes
gets nothing more, and the batch stops at the next decode step once every row's client has left.
`GET /health` reports the counts, recent tokens/s, the last batch's cache length, RSS and the precision.

The content is the response with its tags (`<Think>`, `<Parallel>`, `<Path>`, ...), eos removed. The
non-streamed answer, and the last chunk of a streamed one, also carry the engine's numbers under
`"multiverse"`: decode steps, degree of parallelism, blocks.

Why not `transformers serve`: its loader looks the architecture up by name in the `transformers`
package (`getattr(transformers, config.architectures[0])`), which fails for any remote-code model
such as `MultiverseForCausalLM`, with or without `--trust-remote-code`.

Example:
    $ pip install -e '.[serve]'
    $ multiverse serve --model runs/demo/multiverse-model --port 8000
    >>> from openai import OpenAI  # doctest: +SKIP
    >>> OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none").chat.completions.create(
    ...     model="multiverse", messages=[{"role": "user", "content": "2+2?"}])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


class Cancelled(Exception):
    """Raised inside `generate()` (from the streamer) when the client went away."""


class QueueStreamer:
    """put/end streamer that turns the canonical token stream into text deltas on an asyncio queue."""

    def __init__(self, tokenizer, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, skip_ids: set[int]):
        self.tokenizer = tokenizer
        self.loop = loop
        self.queue = queue
        self.skip_ids = skip_ids
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False
        self.cancelled = threading.Event()

    def put(self, value) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        if not self.prompt_seen:  # the first put is the prompt
            self.prompt_seen = True
            return
        self.ids.extend(t for t in value.reshape(-1).tolist() if t not in self.skip_ids)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return  # an incomplete UTF-8 character: wait for the rest of it
        if len(text) > len(self.sent):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, text[len(self.sent) :])
            self.sent = text

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids)
        if len(text) > len(self.sent):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, text[len(self.sent) :])
            self.sent = text


class BadRequest(ValueError):
    pass


class Overloaded(Exception):
    """The waiting queue is full: answer 503 with `Retry-After: retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def check_body(body: object) -> dict:
    """The request body as a dict, its sampling fields checked; `BadRequest` with one line otherwise.

    What `generate()` would refuse only once its batch runs is refused here, so one bad request never
    fails the others decoded beside it.
    """
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for name in ("max_tokens", "max_completion_tokens", "seed", "n"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadRequest(f"'{name}' must be an integer, got {value!r}")
        if value is not None and name != "seed" and value < 1:
            raise BadRequest(f"'{name}' must be a positive integer, got {value!r}")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise BadRequest(f"'{name}' must be a number, got {value!r}")
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if temperature is not None and not (math.isfinite(temperature) and 0 <= temperature <= 100):
        raise BadRequest(f"'temperature' must be a finite number in [0, 100], got {temperature!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise BadRequest(f"'top_p' must be in (0, 1], got {top_p!r}")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(x, str) and x for x in stop))
    ):
        raise BadRequest("'stop' must be a string or a list of non-empty strings")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("'stream' must be true or false")
    return body


def batch_key(kwargs: dict, token: object) -> tuple:
    """Requests with equal keys may share one batched `generate()` call.

    A seeded request (`token`: something unique to it) is decoded alone, so its seed reproduces it.
    """
    if kwargs.get("seed") is not None:
        return ("alone", id(token))
    stop = tuple(kwargs.get("stop_strings") or ())
    return (kwargs["max_new_tokens"], kwargs["do_sample"], kwargs.get("temperature"), kwargs.get("top_p"), stop)


class _Node:
    """A branch of one row, for putting `branch_callback` events back into canonical order."""

    __slots__ = ("blocks", "cursor", "done", "items")

    def __init__(self):
        self.items: list = []  # token ids and _Block markers, in the branch's own order
        self.blocks: list[_Block] = []
        self.cursor = 0
        self.done = False


class _Block:
    __slots__ = ("children", "cursor", "expected")

    def __init__(self, expected: int):
        self.children: list[_Node] = []
        self.expected = expected
        self.cursor = 0


def _drain(node: _Node, out: list[int]) -> bool:
    """Append to `out` what became final under `node` (paths in label order); True once it is all out."""
    while node.cursor < len(node.items):
        item = node.items[node.cursor]
        if isinstance(item, _Block):
            while item.cursor < len(item.children) and _drain(item.children[item.cursor], out):
                item.cursor += 1
            if item.cursor < item.expected:
                return False
        else:
            out.append(item)
        node.cursor += 1
    return node.done


class RowStream:
    """One row of a batched `generate()`: its `BranchEvent`s in, its canonical text out as deltas.

    The same order as `streamer=` gives a single prompt (`modeling_multiverse/streaming.py`): the trunk
    live, path k once paths 1..k-1 are done, the conclusion after the last path; so the deltas concatenate
    to the row's final text. `emit(text)` receives each delta.
    """

    def __init__(self, tokenizer, skip_ids: set[int], emit: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.skip_ids = skip_ids
        self.emit = emit
        self.root = _Node()
        self.nodes: dict[tuple, _Node] = {(): self.root}
        self.ids: list[int] = []
        self.sent = ""

    def _node(self, index: tuple) -> _Node:
        node = self.nodes.get(index)
        if node is None:  # the first event of a path: place it (and any earlier sibling not started yet)
            parent = self._node(index[:-1])
            block_number, position = index[-1]
            block = parent.blocks[block_number]
            while len(block.children) <= position:
                child = _Node()
                self.nodes[index[:-1] + ((block_number, len(block.children)),)] = child
                block.children.append(child)
            node = self.nodes[index]
        return node

    def event(self, event) -> None:
        node = self._node(event.index)
        if event.kind == "fork":
            block = _Block(len(event.labels))
            node.items.append(block)
            node.blocks.append(block)
        elif event.kind == "tokens":
            node.items.extend(event.token_ids)
        elif event.kind == "done":
            node.done = True
        self._flush()

    def _flush(self) -> None:
        out: list[int] = []
        _drain(self.root, out)
        self.ids.extend(t for t in out if t not in self.skip_ids)
        if out:
            self._send(self.tokenizer.decode(self.ids))

    def _send(self, text: str) -> None:
        if text.endswith("\ufffd"):
            return  # an incomplete UTF-8 character: wait for the rest of it
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.emit(text[len(self.sent) :])
            self.sent = text

    def finish(self, text: str) -> None:
        """The row's final text: whatever of it was not streamed yet goes out now."""
        if text.startswith(self.sent):
            if len(text) > len(self.sent):
                self.emit(text[len(self.sent) :])
            self.sent = text


@dataclass(eq=False)
class Job:
    """One request between the HTTP handler (event loop) and the inference thread."""

    kwargs: dict
    loop: asyncio.AbstractEventLoop
    stream: bool
    future: asyncio.Future
    queue: asyncio.Queue | None = None  # text deltas, then None (streamed requests)
    cancelled: threading.Event = field(default_factory=threading.Event)
    key: tuple = ()
    state: str = "waiting"  # waiting, running, finished

    def deliver(self, text: str | None) -> None:
        if self.queue is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, text)

    def resolve(self, outcome: dict) -> None:
        """Hand the outcome ({"kind": completed|cancelled|failed, ...}) to the handler; the stream ends first."""
        self.state = "finished"
        self.deliver(None)

        def settle() -> None:
            if not self.future.done():
                self.future.set_result(outcome)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the server is shutting down: its event loop is closed
            pass


class Scheduler:
    """Admission control and the inference thread: who decodes now, who waits, who is refused.

    - `submit(job)`: the job waits, or `Overloaded` when `max_waiting` jobs already wait (while the
      thread is idle, up to `max_running` more are taken at once, so an idle server never refuses).
    - The thread takes the oldest waiting job and the waiting jobs that share its `batch_key`, up to
      `max_running` rows, and decodes them in one `generate()` call; the call ends when its last row does.
      Right after a batch, while fewer than `max_running` wait, it waits up to `batch_window_s` (counted
      from that batch's end) for more: the clients it just answered come back at once, and without the
      window a closed loop of C clients settles into alternating batches of 1 and C - 1. A request that
      finds the server idle starts at once.
    - `cancel(job)`: a waiting job leaves the queue at once; a running one gets nothing more, and the
      call stops at the next decode step once every job in it is cancelled.

    This is the seam for the engine's admission (issue 22): `_run_batch` becomes "add the requests to the
    running engine", and a cancelled row leaves at its next step instead of when its batch does.

    Why one thread with batches, not N threads each calling `generate()`: batching is what the engine is
    built for (static batches of 8 gave 4.2x the one-at-a-time throughput on 2 dedicated cores, issue 22),
    and it is the shape engine admission will take; threads would share mutable state (`engine_attention`
    sets the shared `config._attn_implementation` for the length of a call). On a starved shared CPU, threads
    measured faster (README, Serve); that is a reason to rerun on dedicated cores, not to serve that way.
    """

    TOKENS_WINDOW_S = 10.0

    def __init__(self, server: ChatServer, max_running: int = 4, max_waiting: int = 32, batch_window_s: float = 0.05):
        if max_running < 1 or max_waiting < 0 or batch_window_s < 0:
            raise ValueError(
                f"max_running must be >= 1, max_waiting and batch_window_s >= 0; got {max_running}, {max_waiting}, "
                f"{batch_window_s}"
            )
        self.server = server
        self.batch_window_s = batch_window_s
        self.last_end = -math.inf  # when the last batch ended
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.lock = threading.Condition()
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "rejected": 0, "invalid": 0}
        self.batches = 0
        self.largest_batch = 0
        self.batch_seconds = 0.0  # running mean, for Retry-After
        self.cache_tokens: int | None = None
        self.tokens: deque[tuple[float, int]] = deque()
        self.thread = threading.Thread(target=self._loop, name="multiverse-generate", daemon=True)
        self.thread.start()

    # -- the event loop's side --------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.lock:
            limit = self.max_waiting + (0 if self.running else self.max_running)
            if len(self.waiting) >= limit:
                self.counts["rejected"] += 1
                retry = max(1, math.ceil(self.batch_seconds))
                raise Overloaded(
                    f"server busy: {len(self.running)} running, {len(self.waiting)} waiting "
                    f"(--max-running {self.max_running}, --max-waiting {self.max_waiting}); retry in {retry} s",
                    retry,
                )
            self.waiting.append(job)
            self.lock.notify()

    def cancel(self, job: Job) -> None:
        """The client went away."""
        job.cancelled.set()
        with self.lock:
            if job.state != "waiting":
                return  # running: the batch drops it; finished: nothing to do
            self.waiting.remove(job)
            self.counts["cancelled"] += 1
        job.resolve({"kind": "cancelled"})

    def count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def health(self) -> dict:
        now = time.monotonic()
        with self.lock:
            while self.tokens and self.tokens[0][0] < now - self.TOKENS_WINDOW_S:
                self.tokens.popleft()
            recent = sum(n for _, n in self.tokens)
            return {
                "running": len(self.running),
                "waiting": len(self.waiting),
                **self.counts,
                "max_running": self.max_running,
                "max_waiting": self.max_waiting,
                "batch_window_ms": round(self.batch_window_s * 1000),
                "batches": self.batches,
                "largest_batch": self.largest_batch,
                "tokens_per_s": round(recent / self.TOKENS_WINDOW_S, 2),
                "tokens_per_s_window_s": self.TOKENS_WINDOW_S,
                "last_batch_cache_tokens": self.cache_tokens,
            }

    # -- the inference thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.waiting:
                    self.lock.wait()
                # Closed-loop clients of the batch that just ended send their next requests within moments:
                # wait for them (until `batch_window_s` after that end) rather than run a batch of one.
                deadline = self.last_end + self.batch_window_s
                while len(self.waiting) < self.max_running and (left := deadline - time.monotonic()) > 0:
                    self.lock.wait(left)
                head = self.waiting[0]
                batch = [job for job in self.waiting if job.key == head.key][: self.max_running]
                for job in batch:
                    self.waiting.remove(job)
                    job.state = "running"
                self.running = batch
                self.batches += 1
                self.largest_batch = max(self.largest_batch, len(batch))
            start = time.monotonic()
            try:
                self._run_batch(batch)
            except Exception as err:  # noqa: BLE001 (a bug outside generate() fails its batch, not the thread)
                for job in batch:
                    if job.state != "finished":
                        self.count("failed")
                        job.resolve({"kind": "failed", "message": f"serving failed: {err}"})
            finally:
                with self.lock:
                    self.running = []
                    self.last_end = time.monotonic()
                    self.batch_seconds += (time.monotonic() - start - self.batch_seconds) / min(self.batches, 8)

    def _run_batch(self, batch: list[Job]) -> None:
        import torch

        server = self.server
        prompts = [job.kwargs["input_ids"][0] for job in batch]
        width = max(len(p) for p in prompts)
        pad = server.pad_id
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every response starts at column `width`
            input_ids[row, width - len(prompt) :] = prompt
            mask[row, width - len(prompt) :] = 1
        rows = [RowStream(server.tokenizer, server.eos_ids, job.deliver) for job in batch]

        def on_event(event) -> None:
            if all(job.cancelled.is_set() for job in batch):
                raise Cancelled()
            if event.kind == "tokens":
                now = time.monotonic()
                with self.lock:
                    self.tokens.append((now, len(event.token_ids)))
                    while self.tokens[0][0] < now - self.TOKENS_WINDOW_S:  # bounded, /health polled or not
                        self.tokens.popleft()
            job = batch[event.row]
            if job.stream and not job.cancelled.is_set():
                rows[event.row].event(event)

        kwargs = {**batch[0].kwargs, "input_ids": input_ids, "attention_mask": mask}
        try:
            out = server.generate(kwargs, branch_callback=on_event)
        except Cancelled:
            outcomes = [{"kind": "cancelled"}] * len(batch)
        except Exception as err:  # noqa: BLE001 (each request of the batch answers with the one line)
            outcomes = [{"kind": "failed", "message": f"generation failed: {err}"}] * len(batch)
        else:
            self.cache_tokens = getattr(out, "cache_tokens", None)
            outcomes = []
            for row, job in enumerate(batch):
                result = server.summary(job.kwargs, out, row, width)
                if job.cancelled.is_set():
                    outcomes.append({"kind": "cancelled"})
                    continue
                if job.stream:
                    rows[row].finish(result["text"])
                outcomes.append({"kind": "completed", **result})
        with self.lock:
            for outcome in outcomes:
                self.counts[outcome["kind"]] += 1
        for job, outcome in zip(batch, outcomes):
            job.resolve(outcome)


class ChatServer:
    """The model, its tokenizer, and the `Scheduler` (admission, the inference thread, the counters).

    `logits_processor` (optional) is passed to every `generate()` call, e.g. to force a structure.
    `precision` (optional): what /health reports about the dtype the model was loaded in.
    """

    def __init__(
        self,
        model,
        tokenizer,
        model_id: str,
        logits_processor=None,
        max_new_tokens: int = 512,
        max_running: int = 4,
        max_waiting: int = 32,
        precision: dict | None = None,
        batch_window_s: float = 0.05,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.logits_processor = logits_processor
        self.max_new_tokens = max_new_tokens
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.eos_ids = set(eos) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else pad  # masked out: the engine never reads padding
        fill = model.generation_config.pad_token_id
        self.fill_id = fill if fill is not None else min(self.eos_ids, default=0)  # pads the engine's short rows
        self.precision = precision or {"precision": str(model.dtype).removeprefix("torch.")}
        self.scheduler = Scheduler(self, max_running, max_waiting, batch_window_s)

    # -- one request --------------------------------------------------------------------------------
    def generation_kwargs(self, body: dict) -> dict:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list of {role, content}")
        if body.get("n", 1) != 1:
            raise BadRequest("'n' must be 1: one answer per request")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise BadRequest("each message needs a string 'content' (text only)")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or self.max_new_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest(f"'max_tokens' must be a positive integer, got {max_tokens!r}")
        temperature = float(body.get("temperature") if body.get("temperature") is not None else 0.0)
        kwargs = {"max_new_tokens": max_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            kwargs["temperature"] = temperature
            if body.get("top_p") is not None:
                kwargs["top_p"] = float(body["top_p"])
        if body.get("stop"):
            kwargs["stop_strings"] = [body["stop"]] if isinstance(body["stop"], str) else list(body["stop"])
        import torch

        from modeling_multiverse import encode_chat

        # what people wrote is text: a tag typed in a message is not structure
        ids = encode_chat(self.tokenizer, [{"role": m.get("role", "user"), "content": m["content"]} for m in messages])
        # with its mask: transformers warns that it cannot infer one when pad and eos are the same token
        mask = torch.ones(1, len(ids), dtype=torch.long)
        return {"input_ids": torch.tensor([ids]), "attention_mask": mask, **kwargs, "seed": body.get("seed")}

    def generate(self, kwargs: dict, streamer=None, branch_callback=None):
        """Runs on the inference thread: one `generate()` call (one prompt, or a batch with `attention_mask`)."""
        import torch

        kwargs = dict(kwargs)
        seed = kwargs.pop("seed")
        if seed is not None:
            torch.manual_seed(int(seed))
        if self.logits_processor is not None:
            kwargs["logits_processor"] = self.logits_processor
        return self.model.generate(
            **kwargs,
            tokenizer=self.tokenizer,
            streamer=streamer,
            branch_callback=branch_callback,
            return_dict_in_generate=True,
        )

    def summary(self, kwargs: dict, out, row: int = 0, width: int | None = None) -> dict:
        """Row `row` of a `generate()` output whose prompts were `width` columns wide: text, usage, stats, finish."""
        prompt_tokens = kwargs["input_ids"].shape[1]
        start = prompt_tokens if width is None else width
        completion = out.generated_tokens[row] + out.closing_tokens[row]
        ids = out.sequences[row, start:].tolist()
        ids = ids[: next((i for i, t in enumerate(ids) if t in self.eos_ids), len(ids))]  # eos ends a response
        while ids and ids[-1] == self.fill_id and len(ids) > completion:  # a shorter row of a batch: padding
            ids.pop()
        usage = {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion
        }
        stats = {
            "decode_steps": out.decode_steps[row],
            "parallelism": round(out.parallelism[row], 4),
            "blocks": out.blocks[row],
        }
        finish = "length" if out.generated_tokens[row] >= kwargs["max_new_tokens"] else "stop"
        return {"text": self.tokenizer.decode(ids), "usage": usage, "stats": stats, "finish": finish}

    def chunk(self, request_id: str, created: int, delta: dict, finish=None, **extra) -> str:
        body = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"


def _rss_mb() -> float | None:
    """This process's resident memory in MiB (Linux), else None."""
    try:
        from pathlib import Path

        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def build_app(server: ChatServer):
    """The FastAPI app around a `ChatServer`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="multiverse serve")
    scheduler = server.scheduler

    def error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)

    @app.get("/health")
    def health():
        return {
            "status": "ok",
            "model": server.model_id,
            **scheduler.health(),
            "rss_mb": _rss_mb(),
            "precision": server.precision,
        }

    @app.get("/v1/models")
    def models():
        model = {"id": server.model_id, "object": "model", "created": 0, "owned_by": "multiverse"}
        return {"object": "list", "data": [model]}

    async def chat_completions(request):
        try:
            body = check_body(await request.json())
            kwargs = server.generation_kwargs(body)
        except (BadRequest, ValueError, TypeError, json.JSONDecodeError) as err:
            scheduler.count("invalid")
            return error(400, str(err).splitlines()[0] if str(err) else type(err).__name__, "invalid_request_error")
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        loop = asyncio.get_running_loop()
        stream = bool(body.get("stream"))
        job = Job(kwargs, loop, stream, loop.create_future(), asyncio.Queue() if stream else None)
        job.key = batch_key(kwargs, job)
        try:
            scheduler.submit(job)
        except Overloaded as err:
            return error(503, str(err), "server_overloaded", {"Retry-After": str(err.retry_after)})

        if not stream:
            try:
                while not job.future.done():  # poll for a client that went away, then stop its work
                    await asyncio.wait([job.future], timeout=0.5)
                    if not job.future.done() and await request.is_disconnected():
                        scheduler.cancel(job)
                        return error(499, "client closed the request", "cancelled")
            except asyncio.CancelledError:
                scheduler.cancel(job)
                raise
            outcome = job.future.result()
            if outcome["kind"] != "completed":
                return error(500, outcome.get("message", "generation cancelled"), "server_error")
            return {
                "id": request_id,
                "object": "chat.completion",
                "created": created,
                "model": server.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome["text"]},
                             "finish_reason": outcome["finish"]}],
                "usage": outcome["usage"],
                "multiverse": outcome["stats"],
            }

        async def events():
            finished = False
            try:
                yield server.chunk(request_id, created, {"role": "assistant", "content": ""})
                while (text := await job.queue.get()) is not None:
                    yield server.chunk(request_id, created, {"content": text})
                outcome = await job.future
                finished = True
                if outcome["kind"] != "completed":  # the stream ends with the error's one line
                    message = outcome.get("message", "generation cancelled")
                    yield f"data: {json.dumps({'error': {'message': message}})}\n\n"
                    return
                usage, stats = outcome["usage"], outcome["stats"]
                yield server.chunk(request_id, created, {}, outcome["finish"], usage=usage, multiverse=stats)
                yield "data: [DONE]\n\n"
            finally:
                if not finished:  # the client went away: leave the queue, or stop decoding for it
                    scheduler.cancel(job)

        return StreamingResponse(events(), media_type="text/event-stream")

    chat_completions.__annotations__ = {"request": Request}  # resolved here: the module defers annotations
    app.post("/v1/chat/completions")(chat_completions)
    return app


def load(model_dir: str, dtype=None):
    """The model and its tokenizer; `dtype` None: fp32 on CPU, the dtype it was saved in on a GPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.paths import check_weights

    check_weights(model_dir)  # a file cut short: one line naming it, before the tokenizer loads
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    if dtype is None:
        dtype = "auto" if torch.cuda.is_available() else torch.float32  # CPUs without bf16 units crawl in bf16
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype)
    if torch.cuda.is_available():
        model.to("cuda")
    return model.eval(), tokenizer


def serve(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    logits_processor=None,
    max_new_tokens: int = 512,
    max_running: int = 4,
    max_waiting: int = 32,
    precision: str = "auto",
    batch_window_ms: int = 50,
) -> None:
    """Load `model_dir` in `precision` (auto|fp32|bf16) and answer on http://host:port/v1 until interrupted."""
    import uvicorn

    from runtime.precision import choose_precision

    choice = choose_precision(precision)  # the device the model will run on: cuda if present, else cpu
    model, tokenizer = load(model_dir, choice.dtype)
    server = ChatServer(
        model, tokenizer, model_id=model_dir, logits_processor=logits_processor, max_new_tokens=max_new_tokens,
        max_running=max_running, max_waiting=max_waiting, precision=choice.as_dict(),
        batch_window_s=batch_window_ms / 1000,
    )
    print(
        f"multiverse serve: {model_dir} on http://{host}:{port}/v1 ({choice.name}: {choice.reason}; "
        f"--max-running {max_running}, --max-waiting {max_waiting})",
        file=sys.stderr, flush=True,
    )
    uvicorn.run(build_app(server), host=host, port=port, log_level="warning")


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments print one line (`prog: message`) and exit 2."""

    def error(self, message: str):
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(2)


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="multiverse serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Multiverse model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_count(0), default=8000, help="port (default 8000)")
    parser.add_argument(
        "--max-new-tokens", type=_count(1), default=512, help="budget when a request sets no max_tokens"
    )
    parser.add_argument(
        "--max-running", type=_count(1), default=4,
        help="requests decoded at once, as the rows of one batched generate() (default 4)",
    )
    parser.add_argument(
        "--max-waiting", type=_count(0), default=32,
        help="requests that may wait beyond those; past that a request gets 503 with Retry-After (default 32)",
    )
    parser.add_argument(
        "--batch-window-ms", type=_count(0), default=50,
        help="right after a batch, wait this long for more requests before starting a smaller one (default 50)",
    )
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto",
        help="auto (default): bf16 where the device runs it natively, else fp32",
    )
    args = parser.parse_args(argv)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        print(f"multiverse serve: {err.name} is missing: pip install -e '.[serve]'", file=sys.stderr)
        return 2
    from pathlib import Path

    if not (Path(args.model) / "config.json").is_file():
        print(f"multiverse serve: --model {args.model} is not a model folder (no config.json)", file=sys.stderr)
        return 2
    serve(
        args.model, args.host, args.port, max_new_tokens=args.max_new_tokens, max_running=args.max_running,
        max_waiting=args.max_waiting, precision=args.precision, batch_window_ms=args.batch_window_ms,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
