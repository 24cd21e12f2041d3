"""`multiverse serve --model DIR`: an OpenAI-compatible chat server that decodes with fork/merge.

`POST /v1/chat/completions` (streamed as server-sent events, or one JSON object), `GET /v1/models`,
`GET /health`. Every request goes through `model.generate()` (the Multiverse engine); a streamed answer
is the canonical response as it becomes final (`modeling_multiverse/streaming.py`), so its chunks
concatenate to the text a non-streamed request returns. Requests are decoded one at a time, in order
of arrival; a client that disconnects mid-stream stops its generation at the next decode step.

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
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor


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


class ChatServer:
    """The model, its tokenizer, one inference thread, and the request counters.

    `logits_processor` (optional) is passed to every `generate()` call, e.g. to force a structure.
    """

    def __init__(self, model, tokenizer, model_id: str, logits_processor=None, max_new_tokens: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.logits_processor = logits_processor
        self.max_new_tokens = max_new_tokens
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.eos_ids = set(eos) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="multiverse-generate")
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0}

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

    def generate(self, kwargs: dict, streamer=None):
        """Runs on the inference thread."""
        import torch

        kwargs = dict(kwargs)
        seed = kwargs.pop("seed")
        if seed is not None:
            torch.manual_seed(int(seed))
        if self.logits_processor is not None:
            kwargs["logits_processor"] = self.logits_processor
        return self.model.generate(
            **kwargs, tokenizer=self.tokenizer, streamer=streamer, return_dict_in_generate=True
        )

    def summary(self, kwargs: dict, out) -> tuple[list[int], dict, dict, str]:
        prompt_tokens = kwargs["input_ids"].shape[1]
        ids = [t for t in out.sequences[0, prompt_tokens:].tolist() if t not in self.eos_ids]
        completion = out.generated_tokens[0] + out.closing_tokens[0]
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}
        stats = {
            "decode_steps": out.decode_steps[0],
            "parallelism": round(out.parallelism[0], 4),
            "blocks": out.blocks[0],
        }
        finish = "length" if out.generated_tokens[0] >= kwargs["max_new_tokens"] else "stop"
        return ids, usage, stats, finish

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


def build_app(server: ChatServer):
    """The FastAPI app around a `ChatServer`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="multiverse serve")

    @app.get("/health")
    def health():
        return {"status": "ok", "model": server.model_id, **server.counts}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": server.model_id, "object": "model", "created": 0, "owned_by": "multiverse"}]}

    async def chat_completions(request):
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            kwargs = server.generation_kwargs(body)
        except (BadRequest, ValueError, json.JSONDecodeError) as err:
            return JSONResponse({"error": {"message": str(err), "type": "invalid_request_error"}}, status_code=400)
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        loop = asyncio.get_running_loop()
        if not body.get("stream"):
            try:
                out = await loop.run_in_executor(server.worker, server.generate, kwargs)
            except Exception as err:  # a model failure answers 500 with its one line
                server.counts["failed"] += 1
                return JSONResponse({"error": {"message": f"generation failed: {err}", "type": "server_error"}}, status_code=500)
            server.counts["completed"] += 1
            ids, usage, stats, finish = server.summary(kwargs, out)
            message = {"role": "assistant", "content": server.tokenizer.decode(ids)}
            return {
                "id": request_id,
                "object": "chat.completion",
                "created": created,
                "model": server.model_id,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
                "multiverse": stats,
            }

        queue: asyncio.Queue = asyncio.Queue()
        streamer = QueueStreamer(server.tokenizer, loop, queue, server.eos_ids)

        def run():
            try:
                return server.generate(kwargs, streamer)
            except Cancelled:
                server.counts["cancelled"] += 1  # generate() stopped at the step after the client left
                return None
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)  # end of text, whatever happened

        async def events():
            future = loop.run_in_executor(server.worker, run)
            finished = False
            try:
                yield server.chunk(request_id, created, {"role": "assistant", "content": ""})
                while (text := await queue.get()) is not None:
                    yield server.chunk(request_id, created, {"content": text})
                try:
                    out = await future
                except Exception as err:  # noqa: BLE001 (the stream ends with the error's one line)
                    server.counts["failed"] += 1
                    finished = True
                    yield f"data: {json.dumps({'error': {'message': f'generation failed: {err}'}})}\n\n"
                    return
                _, usage, stats, finish = server.summary(kwargs, out)
                server.counts["completed"] += 1
                finished = True
                yield server.chunk(request_id, created, {}, finish, usage=usage, multiverse=stats)
                yield "data: [DONE]\n\n"
            finally:
                if not finished:  # the client went away: stop decoding at the next step
                    streamer.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    chat_completions.__annotations__ = {"request": Request}  # resolved here: the module defers annotations
    app.post("/v1/chat/completions")(chat_completions)
    return app


def load(model_dir: str):
    """The model (fp32 on CPU, the dtype it was saved in elsewhere) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.paths import check_weights

    check_weights(model_dir)  # a file cut short: one line naming it, before the tokenizer loads
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    dtype = "auto" if torch.cuda.is_available() else torch.float32  # CPUs without bf16 units crawl in bf16
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype)
    if torch.cuda.is_available():
        model.to("cuda")
    return model.eval(), tokenizer


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, logits_processor=None, max_new_tokens: int = 512) -> None:
    """Load `model_dir` and answer on http://host:port/v1 until interrupted."""
    import uvicorn

    model, tokenizer = load(model_dir)
    server = ChatServer(model, tokenizer, model_id=model_dir, logits_processor=logits_processor, max_new_tokens=max_new_tokens)
    print(f"multiverse serve: {model_dir} on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(build_app(server), host=host, port=port, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multiverse serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Multiverse model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="budget when a request sets no max_tokens")
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
    serve(args.model, args.host, args.port, max_new_tokens=args.max_new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
