"""Chat backends for the LLM-assisted pipeline: an OpenAI-compatible HTTP endpoint, or a local transformers model.

Both expose `complete(messages) -> str`. The HTTP backend works with OpenAI, Gemini's
OpenAI-compatible endpoint, vLLM, SGLang and `transformers serve`; it retries 429/5xx answers and
timeouts with exponential backoff and keeps an on-disk cache keyed by the request, so a rerun after
an interruption pays only for what it had not asked yet.

Example:
    >>> backend = OpenAICompatibleBackend(base_url="http://127.0.0.1:8000/v1", model="m", api_key="x")  # doctest: +SKIP
    >>> backend.complete([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

Message = dict[str, str]
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class BackendError(RuntimeError):
    """A request failed for good (after retries, or with an answer that retrying cannot fix)."""


class BackendUnavailable(BackendError, ConnectionError):
    """The server cannot be used at all (unreachable, timing out, overloaded, or refusing the key, model or URL).

    Not a verdict on the record being curated: the pipeline stops and leaves it pending for a rerun.
    """


# Answers that say the endpoint, key or model is wrong: every request would get the same one.
CONFIGURATION_STATUS = {401, 403, 404}


class ChatBackend(Protocol):
    def complete(self, messages: list[Message]) -> str: ...


class OpenAICompatibleBackend:
    """`POST {base_url}/chat/completions`. Arguments default to `MULTIVERSE_BASE_URL`/`OPENAI_BASE_URL`,
    `MULTIVERSE_MODEL`, and `MULTIVERSE_API_KEY`/`OPENAI_API_KEY`/`GEMINI_API_KEY`.

    Thread-safe: the pipeline calls it from several workers at once (`concurrency`).
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        temperature: float = 0.0,
        max_tokens: int = 4096,
        cache_dir: str | os.PathLike | None = None,
    ):
        self.base_url = (
            base_url or os.environ.get("MULTIVERSE_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or ""
        ).rstrip("/")
        self.model = model or os.environ.get("MULTIVERSE_MODEL")
        self.api_key = api_key or next(
            (os.environ[k] for k in ("MULTIVERSE_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY") if os.environ.get(k)),
            None,
        )
        if not self.base_url:
            raise ValueError("the openai backend needs a base URL: --base-url or MULTIVERSE_BASE_URL / OPENAI_BASE_URL")
        if not self.model:
            raise ValueError("the openai backend needs a model name: --model or MULTIVERSE_MODEL")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.requests_sent = 0  # HTTP requests actually made (cache hits excluded), for reports and tests

    def _payload(self, messages: list[Message]) -> dict:
        return {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _cache_path(self, payload: dict) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps([self.base_url, payload], sort_keys=True).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def complete(self, messages: list[Message]) -> str:
        payload = self._payload(messages)
        cache_path = self._cache_path(payload)
        if cache_path is not None and cache_path.exists():
            return json.loads(cache_path.read_text(encoding="utf-8"))["content"]
        content = self._post_with_retries(payload)
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            # written to a temporary file and renamed: a killed run never leaves a torn cache entry
            fd, tmp = tempfile.mkstemp(dir=cache_path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"request": payload, "content": content}, f)
            os.replace(tmp, cache_path)
        return content

    def _post_with_retries(self, payload: dict) -> str:
        url = f"{self.base_url}/chat/completions"
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            self.requests_sent += 1
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    data = json.loads(answer.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:200]
                last_error = f"HTTP {err.code} from {url}: {detail}"
                if err.code in RETRY_STATUS:
                    continue
                if err.code in CONFIGURATION_STATUS:
                    raise BackendUnavailable(last_error) from None
                raise BackendError(last_error) from None
            except (TimeoutError, socket.timeout, urllib.error.URLError, ConnectionError) as err:
                last_error = f"{type(err).__name__} talking to {url}: {err}"
                continue
            try:
                return data["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise BackendError(f"unexpected answer from {url}: {json.dumps(data)[:200]}") from None
        raise BackendUnavailable(f"gave up after {self.max_retries + 1} attempts; last error: {last_error}")


class TransformersBackend:
    """A local chat model run with transformers (greedy decoding). Not thread-safe: use concurrency 1.

    >>> backend = TransformersBackend("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        *,
        max_new_tokens: int = 2048,
        device: str | None = None,
        model=None,
        tokenizer=None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model_name_or_path is None and (model is None or tokenizer is None):
            raise ValueError("TransformersBackend needs a model id or folder, or both `model` and `tokenizer`")
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_name_or_path)
        self.model = model or AutoModelForCausalLM.from_pretrained(model_name_or_path)
        if device:
            self.model.to(device)
        self.model.eval()
        self.max_new_tokens = max_new_tokens

    def complete(self, messages: list[Message]) -> str:
        import torch

        from modeling_multiverse import encode_chat

        ids = encode_chat(self.tokenizer, messages, add_generation_prompt=True)  # the chains are text, never structure
        inputs = {
            "input_ids": torch.tensor([ids], device=self.model.device),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=self.model.device),
        }
        with torch.no_grad():
            output = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
                tokenizer=self.tokenizer,  # stop strings need it; a Multiverse model needs it to fork
            )
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
