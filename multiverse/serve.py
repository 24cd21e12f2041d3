"""`multiverse serve --model DIR`: an OpenAI-compatible chat server that decodes with fork/merge.

`POST /v1/chat/completions` (streamed as server-sent events, or one JSON object), `GET /v1/models`,
`GET /health`. Every request joins one running Multiverse engine (`modeling_multiverse.serving.ContinuousEngine`,
SPEC.md §8), driven by one stepping thread: a request that arrives while others decode is prefilled at the next
step and then decodes beside them, and a finished one leaves at once. A streamed answer is the canonical response
as it becomes final (`modeling_multiverse/streaming.py`), so its chunks concatenate to the text a non-streamed
request returns; in fp32 with greedy decoding it is the text the request gets alone, whatever else runs.

Admission (`EngineLoop`): at most `--max-running` requests decode at once; at most `--max-waiting` more wait,
and past that a request is refused at once with 503 and `Retry-After`. A client that disconnects leaves the
queue at once, or the engine at its next step. `n > 1` adds n requests with one prompt, admitted together:
they share its prefill, each with its own seed (`seed + i`). `GET /health` reports running and waiting
requests, the counts, recent tokens/s, the engine's cache use, RSS and the precision.

The content is the response with its tags (`<Think>`, `<Parallel>`, `<Path>`, ...), eos removed. The
non-streamed answer, and the last chunk of a streamed one, also carry the engine's numbers under
`"multiverse"`: decode steps, degree of parallelism, blocks (a list of those, one per choice, when n > 1).

Under `torchrun --nproc-per-node N` the model is split over N processes (tensor parallel); rank 0 serves HTTP and
the others step their engines in lockstep with it (`runtime.distributed.LockstepEngine`).

Why not `transformers serve`: its loader looks the architecture up by name in the `transformers`
package (`getattr(transformers, config.architectures[0])`), which fails for any remote-code model
such as `MultiverseForCausalLM`, with or without `--trust-remote-code`.

Example:
    $ pip install -e '.[serve]'
    $ multiverse serve --model runs/demo/multiverse-model --port 8000
    $ torchrun --nproc-per-node 2 -m multiverse.cli serve --model runs/demo/multiverse-model --port 8000
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

from runtime.arguments import OneLineParser


class TextStream:
    """A request's streamer (transformers' put/end): the canonical token stream in, text deltas out to `emit`.

    The first `put` is the prompt (skipped); eos and other `skip_ids` are left out of the text.
    """

    def __init__(self, tokenizer, skip_ids: set[int], emit: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.skip_ids = skip_ids
        self.emit = emit
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.ids.extend(t for t in value.reshape(-1).tolist() if t not in self.skip_ids)
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd"):  # else an incomplete UTF-8 character: wait for the rest of it
            self._send(text)

    def end(self) -> None:
        self._send(self.tokenizer.decode(self.ids))

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.emit(text[len(self.sent) :])
            self.sent = text


class BadRequest(ValueError):
    pass


class Overloaded(Exception):
    """The waiting queue is full: answer 503 with `Retry-After: retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


MAX_CHOICES = 16
"""The most answers (`n`) one request may ask for."""


def check_body(body: object) -> dict:
    """The request body as a dict, its sampling fields checked; `BadRequest` with one line otherwise.

    What the engine would refuse only once the request runs is refused here, so one bad request never
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
    if body.get("n", 1) > MAX_CHOICES:
        raise BadRequest(f"'n' must be at most {MAX_CHOICES}, got {body['n']}")
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


@dataclass(eq=False)
class Job:
    """One chat request between the HTTP handler (event loop) and the stepping thread: its `n` engine requests.

    `queue` (streamed requests) receives `(choice, text delta)` pairs, then None; `future` the outcome
    (`{"kind": "completed", "choices": [...]}`, or `cancelled`/`failed` with a `message`).
    """

    params: dict
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    queue: asyncio.Queue | None = None
    requests: list = field(default_factory=list)  # `serving.Request`s, one per choice
    cancelled: bool = False
    resolved: bool = False
    submitted: float = field(default_factory=time.monotonic)

    def deliver(self, item) -> None:
        if self.queue is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def resolve(self, outcome: dict) -> None:
        """Hand the outcome to the handler; the stream ends first."""
        self.deliver(None)

        def settle() -> None:
            if not self.future.done():
                self.future.set_result(outcome)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the server is shutting down: its event loop is closed
            pass


class EngineLoop:
    """Admission control and the stepping thread around one `ContinuousEngine`.

    - `submit(job)`: the job's requests join the engine's queue, or `Overloaded` when they would make more
      than `max_waiting` wait beyond the free running slots (an idle server never refuses).
    - The thread steps the engine while anything runs or waits, and sleeps otherwise (`submit` wakes it).
      Each finished request settles its job once all of the job's requests are done.
    - `cancel(job)`: its waiting requests leave the queue at once, its running ones at the next step.

    One thread, because the engine is one batch: every step is one forward pass over all running requests.
    `engine_factory` (optional) builds the engine instead of a one-process `ContinuousEngine`: under torchrun, a
    `runtime.distributed.LockstepEngine`, which the thread also steps when idle, every `heartbeat_s`.
    """

    TOKENS_WINDOW_S = 10.0

    def __init__(
        self, server: ChatServer, max_running: int = 8, max_waiting: int = 32, engine_factory: Callable | None = None
    ):
        if max_running < 1 or max_waiting < 0:
            raise ValueError(f"max_running must be >= 1 and max_waiting >= 0; got {max_running}, {max_waiting}")
        self.server = server
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.engine_factory = engine_factory
        self.engine = self._new_engine()
        self.lock = threading.Condition()  # guards the jobs, the counts and the snapshot; wakes the thread
        self.jobs: dict[int, Job] = {}  # request id -> its job
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "rejected": 0, "invalid": 0}
        self.most_running = 0
        self.request_seconds = 0.0  # running mean of a request's time in the engine, for Retry-After
        self.finished_requests = 0
        self.tokens: deque[tuple[float, int]] = deque()
        self.snapshot = {"running": 0, "waiting": 0, **self.engine.engine.stats()}
        self.thread = threading.Thread(target=self._loop, name="multiverse-engine", daemon=True)
        self.thread.start()

    def _new_engine(self):
        if self.engine_factory is not None:
            return self.engine_factory()
        from modeling_multiverse.serving import ContinuousEngine

        return ContinuousEngine(self.server.model, self.server.tokenizer, max_running=self.max_running)

    def close(self) -> None:
        """Release what the engine holds beyond this process (a lockstep engine's other processes); else nothing."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

    # -- the event loop's side --------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        server, params = self.server, job.params
        with self.lock:
            engine = self.engine
            free = self.max_running - len(engine.running)
            if len(engine.waiting) + params["n"] > self.max_waiting + max(free, 0):
                self.counts["rejected"] += 1
                retry = max(1, math.ceil(self.request_seconds * (len(engine.waiting) + 1) / self.max_running))
                raise Overloaded(
                    f"server busy: {len(engine.running)} running, {len(engine.waiting)} waiting "
                    f"(--max-running {self.max_running}, --max-waiting {self.max_waiting}); retry in {retry} s",
                    retry,
                )
            seed = params["seed"]
            for choice in range(params["n"]):
                stream = None
                if job.queue is not None:
                    stream = TextStream(server.tokenizer, server.eos_ids, lambda text, c=choice: job.deliver((c, text)))
                request = engine.add_request(
                    params["input_ids"], max_new_tokens=params["max_new_tokens"], do_sample=params["do_sample"],
                    temperature=params.get("temperature"), top_p=params.get("top_p"),
                    seed=None if seed is None else seed + choice, stop_strings=params.get("stop_strings"),
                    logits_processor=server.logits_processor, streamer=stream,
                )
                job.requests.append(request)
                self.jobs[request.id] = job
            self.lock.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: its requests leave (waiting ones at once, running ones at the next step)."""
        with self.lock:
            job.cancelled = True
            for request in job.requests:
                if self.engine.cancel(request):
                    self.jobs.pop(request.id, None)
            self._settle(job)

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
                **self.snapshot,
                **self.counts,
                "max_running": self.max_running,
                "max_waiting": self.max_waiting,
                "most_running": self.most_running,
                "tokens_per_s": round(recent / self.TOKENS_WINDOW_S, 2),
                "tokens_per_s_window_s": self.TOKENS_WINDOW_S,
            }

    # -- the stepping thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.lock:
                heartbeat = getattr(self.engine, "heartbeat_s", None)
                while not (self.engine.running or self.engine.waiting):
                    if not self.lock.wait(heartbeat) and heartbeat is not None:
                        break  # idle under lockstep: an empty step keeps the other processes' broadcast alive
                engine = self.engine
                before = sum(r.seq.generated for r in engine.running)
            try:
                finished = engine.step()
            except Exception as err:  # noqa: BLE001 (a failed step fails what it held, not the server)
                self._fail(engine, err)
                continue
            now = time.monotonic()
            with self.lock:
                generated = sum(r.seq.generated for r in engine.running + finished) - before
                self.tokens.append((now, generated))
                while self.tokens[0][0] < now - self.TOKENS_WINDOW_S:  # bounded, /health polled or not
                    self.tokens.popleft()
                self.most_running = max(self.most_running, len(engine.running) + len(finished))
                for request in finished:
                    job = self.jobs.pop(request.id, None)
                    self.finished_requests += 1
                    weight = min(self.finished_requests, 16)
                    if job is not None:
                        self.request_seconds += (now - job.submitted - self.request_seconds) / weight
                        self._settle(job)
                self.snapshot = engine.stats()

    def _settle(self, job: Job) -> None:
        """Once every request of `job` is finished: count it and hand its outcome over (under the lock)."""
        if job.resolved or not all(r.finished for r in job.requests):
            return
        job.resolved = True
        if job.cancelled:
            self.counts["cancelled"] += 1
            job.resolve({"kind": "cancelled"})
            return
        self.counts["completed"] += 1
        job.resolve({"kind": "completed", "choices": [self.server.summary(job.params, r) for r in job.requests]})

    def _fail(self, engine, err: Exception) -> None:
        """A step raised: every request the engine held fails with the one line; a fresh engine takes over.

        A lockstep engine resets instead: every process takes a fresh engine at the next step, so none keeps
        requests the others dropped (`LockstepEngine.reset`).
        """
        message = f"generation failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        with self.lock:
            reset = getattr(engine, "reset", None)
            self.engine = reset() if reset is not None else self._new_engine()
            jobs = {id(job): job for job in self.jobs.values()}
            self.jobs.clear()
            for job in jobs.values():
                if not job.resolved:
                    job.resolved = True
                    self.counts["failed"] += 1
                    job.resolve({"kind": "failed", "message": message})
            self.snapshot = {"running": 0, "waiting": 0, **self.engine.engine.stats()}


class ChatServer:
    """The model, its tokenizer, and the `EngineLoop` (admission, the stepping thread, the counters).

    `logits_processor` (optional) is given to every request, e.g. to force a structure.
    `precision` (optional): what /health reports about the dtype the model was loaded in.
    `engine_factory` (optional): builds the engine `EngineLoop` steps (under torchrun, a `LockstepEngine`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        model_id: str,
        logits_processor=None,
        max_new_tokens: int = 512,
        max_running: int = 8,
        max_waiting: int = 32,
        precision: dict | None = None,
        engine_factory: Callable | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.logits_processor = logits_processor
        self.max_new_tokens = max_new_tokens
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.eos_ids = set(eos) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        self.precision = precision or {"precision": str(model.dtype).removeprefix("torch.")}
        self.engine = EngineLoop(self, max_running, max_waiting, engine_factory)

    # -- one request --------------------------------------------------------------------------------
    def request_params(self, body: dict) -> dict:
        """The engine's parameters for a checked body: prompt ids, budget, sampling, stop strings, n, seed."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list of {role, content}")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise BadRequest("each message needs a string 'content' (text only)")
        n = body.get("n", 1)
        if n > self.engine.max_running:
            raise BadRequest(f"'n' must be at most --max-running ({self.engine.max_running}), got {n}")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or self.max_new_tokens
        temperature = float(body.get("temperature") if body.get("temperature") is not None else 0.0)
        params = {"max_new_tokens": max_tokens, "do_sample": temperature > 0, "n": n, "seed": body.get("seed")}
        if temperature > 0:
            params["temperature"] = temperature
            if body.get("top_p") is not None:
                params["top_p"] = float(body["top_p"])
        if body.get("stop"):
            params["stop_strings"] = [body["stop"]] if isinstance(body["stop"], str) else list(body["stop"])
        from modeling_multiverse import encode_chat

        # what people wrote is text: a tag typed in a message is not structure
        roles = [{"role": m.get("role", "user"), "content": m["content"]} for m in messages]
        params["input_ids"] = encode_chat(self.tokenizer, roles)
        if not params["input_ids"]:
            raise BadRequest("the messages render to an empty prompt")
        return params

    def summary(self, params: dict, request) -> dict:
        """A finished `serving.Request` as one choice: text, token counts, the engine's numbers, finish reason."""
        ids = request.response_ids
        ids = ids[: next((i for i, t in enumerate(ids) if t in self.eos_ids), len(ids))]  # eos ends a response
        stats = request.stats
        return {
            "text": self.tokenizer.decode(ids),
            "completion_tokens": stats["generated_tokens"] + stats["closing_tokens"],
            "stats": {
                "decode_steps": stats["decode_steps"],
                "parallelism": round(stats["parallelism"], 4),
                "blocks": stats["blocks"],
            },
            "finish": "length" if stats["generated_tokens"] >= params["max_new_tokens"] else "stop",
        }

    def usage(self, params: dict, choices: list[dict]) -> dict:
        prompt = len(params["input_ids"])
        completion = sum(c["completion_tokens"] for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def chunk(self, request_id: str, created: int, choices: list[dict], **extra) -> str:
        body = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.model_id,
            "choices": choices,
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
    loop_ = server.engine

    def error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)

    def numbers(choices: list[dict]):
        """The engine's numbers: one choice's dict, or a list of them when n > 1."""
        return choices[0]["stats"] if len(choices) == 1 else [c["stats"] for c in choices]

    @app.get("/health")
    def health():
        return {"status": "ok", "model": server.model_id, **loop_.health(), "rss_mb": _rss_mb(),
                "precision": server.precision}

    @app.get("/v1/models")
    def models():
        model = {"id": server.model_id, "object": "model", "created": 0, "owned_by": "multiverse"}
        return {"object": "list", "data": [model]}

    async def chat_completions(request):
        try:
            body = check_body(await request.json())
            params = server.request_params(body)
        except (BadRequest, ValueError, TypeError, json.JSONDecodeError) as err:
            loop_.count("invalid")
            return error(400, str(err).splitlines()[0] if str(err) else type(err).__name__, "invalid_request_error")
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        loop = asyncio.get_running_loop()
        stream = bool(body.get("stream"))
        job = Job(params, loop, loop.create_future(), asyncio.Queue() if stream else None)
        try:
            loop_.submit(job)
        except Overloaded as err:
            return error(503, str(err), "server_overloaded", {"Retry-After": str(err.retry_after)})

        if not stream:
            try:
                while not job.future.done():  # poll for a client that went away, then stop its work
                    await asyncio.wait([job.future], timeout=0.5)
                    if not job.future.done() and await request.is_disconnected():
                        loop_.cancel(job)
                        return error(499, "client closed the request", "cancelled")
            except asyncio.CancelledError:
                loop_.cancel(job)
                raise
            outcome = job.future.result()
            if outcome["kind"] != "completed":
                return error(500, outcome.get("message", "generation cancelled"), "server_error")
            choices = outcome["choices"]
            return {
                "id": request_id,
                "object": "chat.completion",
                "created": created,
                "model": server.model_id,
                "choices": [
                    {"index": i, "message": {"role": "assistant", "content": c["text"]}, "finish_reason": c["finish"]}
                    for i, c in enumerate(choices)
                ],
                "usage": server.usage(params, choices),
                "multiverse": numbers(choices),
            }

        async def events():
            finished = False
            try:
                opening = [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                           for i in range(params["n"])]
                yield server.chunk(request_id, created, opening)
                while (item := await job.queue.get()) is not None:
                    index, text = item
                    yield server.chunk(request_id, created, [{"index": index, "delta": {"content": text},
                                                              "finish_reason": None}])
                outcome = await job.future
                finished = True
                if outcome["kind"] != "completed":  # the stream ends with the error's one line
                    message = outcome.get("message", "generation cancelled")
                    yield f"data: {json.dumps({'error': {'message': message}})}\n\n"
                    return
                choices = outcome["choices"]
                closing = [{"index": i, "delta": {}, "finish_reason": c["finish"]} for i, c in enumerate(choices)]
                yield server.chunk(request_id, created, closing, usage=server.usage(params, choices),
                                   multiverse=numbers(choices))
                yield "data: [DONE]\n\n"
            finally:
                if not finished:  # the client went away: leave the queue, or the engine at its next step
                    loop_.cancel(job)

        return StreamingResponse(events(), media_type="text/event-stream")

    chat_completions.__annotations__ = {"request": Request}  # resolved here: the module defers annotations
    app.post("/v1/chat/completions")(chat_completions)
    return app


def load(model_dir: str, dtype=None, launch=None):
    """The model and its tokenizer; `dtype` None: fp32 on CPU, the dtype it was saved in on a GPU.

    `launch` (a `runtime.distributed.Launch` of several processes): this process's tensor-parallel slice, placed
    by transformers on its device (not moved here).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.distributed import tensor_parallel_kwargs
    from runtime.paths import check_weights, model_config

    check_weights(model_dir)  # a file cut short: one line naming it, before the tokenizer loads
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    if dtype is None:
        dtype = "auto" if torch.cuda.is_available() else torch.float32  # CPUs without bf16 units crawl in bf16
    parallel = {}
    if launch is not None and launch.distributed:
        config = model_config(model_dir, "--model")
        parallel = tensor_parallel_kwargs(launch, config.get("text_config") or config)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype, **parallel)
    if torch.cuda.is_available() and not parallel:
        model.to("cuda")
    return model.eval(), tokenizer


def serve(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    logits_processor=None,
    max_new_tokens: int = 512,
    max_running: int = 8,
    max_waiting: int = 32,
    precision: str = "auto",
) -> None:
    """Load `model_dir` in `precision` (auto|fp32|bf16) and answer on http://host:port/v1 until interrupted.

    Under torchrun the model is split over the processes (tensor parallel): rank 0 listens, and every process
    steps its own engine in lockstep with it (`runtime.distributed.LockstepEngine`, `follow_engine`).
    """
    import uvicorn

    from runtime.distributed import Launch, finish
    from runtime.precision import choose_precision

    launch = Launch.from_env()
    choice = choose_precision(precision)  # the device the model will run on: cuda if present, else cpu
    model, tokenizer = load(model_dir, choice.dtype, launch)
    factory = None
    if launch.distributed:
        factory = _lockstep(model, tokenizer, max_running, launch)
        if factory is None:  # ranks 1..N-1 followed rank 0 until it closed
            finish(launch)
            return
    server = ChatServer(
        model, tokenizer, model_id=model_dir, logits_processor=logits_processor, max_new_tokens=max_new_tokens,
        max_running=max_running, max_waiting=max_waiting, precision=choice.as_dict(), engine_factory=factory,
    )
    parallel = f"; tensor parallel over {launch.world_size} processes" if launch.distributed else ""
    print(
        f"multiverse serve: {model_dir} on http://{host}:{port}/v1 ({choice.name}: {choice.reason}; "
        f"--max-running {max_running}, --max-waiting {max_waiting}{parallel})",
        file=sys.stderr, flush=True,
    )
    if not launch.distributed:
        uvicorn.run(build_app(server), host=host, port=port, log_level="warning")
        return
    _stop_quietly()
    try:
        uvicorn.run(build_app(server), host=host, port=port, log_level="warning")
    except _Stopped:
        pass
    finally:
        server.engine.close()  # the other processes return from follow_engine
        finish(launch)


class _Stopped(Exception):
    """SIGINT or SIGTERM, once uvicorn has shut down: the lockstep server closes the other processes, exits 0."""


def _stop_quietly() -> None:
    """uvicorn re-raises the signal that stopped it under the handler found before it: make that one return here
    (else SIGTERM's default action ends rank 0 before it can release the other processes)."""
    import signal

    def stopped(signum, frame):
        raise _Stopped

    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, stopped)


def _lockstep(model, tokenizer, max_running: int, launch) -> Callable | None:
    """Rank 0: the factory of its `LockstepEngine`. Ranks 1..N-1: follow rank 0's steps until it closes, None.

    The followers ignore SIGINT and SIGTERM (Ctrl-C and torchrun send them to every process): they leave when
    rank 0, having stopped serving, tells them to, so no process leaves the others inside a collective.
    """
    import signal

    from modeling_multiverse.serving import ContinuousEngine
    from runtime.distributed import LockstepEngine, follow_engine

    def local() -> ContinuousEngine:
        return ContinuousEngine(model, tokenizer, max_running=max_running)

    if launch.main:
        return lambda: LockstepEngine(local(), launch, renew=local)
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)
    follow_engine(local(), launch, renew=local)
    return None


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
        "--max-running", type=_count(1), default=8,
        help="requests decoded at once, each step one forward pass over all of them (default 8)",
    )
    parser.add_argument(
        "--max-waiting", type=_count(0), default=32,
        help="requests that may wait beyond those; past that a request gets 503 with Retry-After (default 32)",
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
        max_waiting=args.max_waiting, precision=args.precision,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
