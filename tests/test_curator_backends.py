"""The OpenAI-compatible backend against a real HTTP server process on loopback (429, 500, timeouts, cache),
the LLM-assisted pipeline end to end over HTTP, and the local transformers backend.

Run as a script, this file is the server: `python test_curator_backends.py PORT_FILE LOG_FILE BEHAVIOUR...`.
Each request consumes the next behaviour (`429`, `500`, `400`, `sleep:SECONDS`); once they are used up
every request is answered `ok` by a scripted stand-in for a model that knows the curator's stages.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# ----------------------------------------------------------------------------------------------
# The server (runs in its own process)


def scripted_model(prompt: str) -> str:
    """Answers stage prompts like a careful model would for the synthetic problems."""
    if "Stage 1 of 3" in prompt:
        lines = re.findall(r"^\[(\d+)\] ", prompt, re.MULTILINE)
        return json.dumps({"steps": [{"summary": f"line {i}", "first": int(i), "last": int(i)} for i in lines]})
    if "Stage 2 of 3" in prompt:
        steps = re.findall(r"^Step (\d+):", prompt, re.MULTILINE)
        last = len(steps) - 1  # every step but the last is one independent part; the last combines them
        return (
            "```json\n"
            + json.dumps({"groups": [{"first": 0, "last": last - 1, "kind": "collective", "merge": last}]})
            + "\n```"
        )
    if "Stage 3 of 3" in prompt:
        n = int(re.search(r"works on (\d+) independent parts", prompt).group(1))
        return json.dumps(
            {"outlines": [f"Count part {k + 1}" for k in range(n)], "context": [""] * n, "conclusion": None}
        )
    return "pong"


def serve(port_file: str, log_file: str, behaviours: list[str]) -> None:
    queue = list(behaviours)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            behaviour = queue.pop(0) if queue else "ok"
            with open(log_file, "a") as log:
                log.write(
                    json.dumps({"path": self.path, "behaviour": behaviour, "auth": self.headers.get("Authorization")})
                    + "\n"
                )
            if behaviour.startswith("sleep:"):
                time.sleep(float(behaviour.split(":")[1]))
                behaviour = "ok"
            if behaviour in ("429", "500", "400"):
                self.send_response(int(behaviour))
                self.end_headers()
                self.wfile.write(b'{"error": "scripted"}')
                return
            content = scripted_model(body["messages"][-1]["content"])
            answer = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


# ----------------------------------------------------------------------------------------------
# Fixtures and tests


class Server:
    def __init__(self, tmp_path: Path, behaviours: list[str]):
        self.log = tmp_path / "requests.log"
        port_file = tmp_path / "port"
        self.process = subprocess.Popen([sys.executable, __file__, str(port_file), str(self.log), *behaviours])
        deadline = time.time() + 30
        while not (port_file.exists() and port_file.read_text()):
            if time.time() > deadline or self.process.poll() is not None:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port_file.read_text()}/v1"

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def stop(self):
        self.process.kill()
        self.process.wait()


@pytest.fixture
def server_factory(tmp_path):
    servers = []

    def start(*behaviours: str) -> Server:
        servers.append(Server(tmp_path, list(behaviours)))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _backend(url, **kw):
    from curator.backends import OpenAICompatibleBackend

    return OpenAICompatibleBackend(base_url=url, model="scripted", api_key="sk-test", backoff=0.05, **kw)


def test_retries_429_and_500_then_succeeds(server_factory):
    server = server_factory("429", "500", "429")
    backend = _backend(server.url)
    assert backend.complete([{"role": "user", "content": "ping"}]) == "pong"
    log = server.requests()
    assert [r["behaviour"] for r in log] == ["429", "500", "429", "ok"]
    assert all(r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-test" for r in log)


def test_timeout_is_retried(server_factory):
    server = server_factory("sleep:2")
    backend = _backend(server.url, timeout=0.5)
    start = time.time()
    assert backend.complete([{"role": "user", "content": "ping"}]) == "pong"
    assert backend.requests_sent == 2
    assert time.time() - start < 2.0  # the slow answer was abandoned, not awaited


def test_gives_up_after_max_retries_and_does_not_retry_400(server_factory):
    from curator.backends import BackendError

    server = server_factory("500", "500", "500", "400")
    with pytest.raises(BackendError, match="gave up after 3 attempts; last error: HTTP 500"):
        _backend(server.url, max_retries=2).complete([{"role": "user", "content": "ping"}])
    with pytest.raises(BackendError, match="HTTP 400"):
        _backend(server.url).complete([{"role": "user", "content": "ping"}])
    assert len(server.requests()) == 4


def test_cache_answers_repeated_requests_from_disk(server_factory, tmp_path):
    server = server_factory()
    first = _backend(server.url, cache_dir=tmp_path / "cache")
    assert first.complete([{"role": "user", "content": "ping"}]) == "pong"
    second = _backend(server.url, cache_dir=tmp_path / "cache")
    assert second.complete([{"role": "user", "content": "ping"}]) == "pong"
    assert second.requests_sent == 0
    assert second.complete([{"role": "user", "content": "ping again"}]) == "pong"  # another request: not cached
    assert len(server.requests()) == 2


def test_llm_pipeline_over_http_converts_and_reruns_from_cache(server_factory, tmp_path):
    from curator.pipeline import curate_file
    from curator.synth import synthesize, write_jsonl
    from modeling_multiverse import parse_text

    server = server_factory("429")
    problems = tmp_path / "problems.jsonl"
    write_jsonl(synthesize(6, seed=3, k=(2, 3)), problems)
    options = dict(
        backend="openai",
        base_url=server.url,
        model="scripted",
        api_key="k",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    summary = curate_file(problems, tmp_path / "out.jsonl", workers=3, **options)
    assert summary["converted"] == 6, summary
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for row in rows:
        structure = parse_text(row["multiverse"], require_think=True)
        assert structure.blocks and "Count part 1" in row["multiverse"]
    sent = len(server.requests())
    assert sent == 6 * 3 + 1  # split, group, map/reduce per record, plus the 429
    summary = curate_file(problems, tmp_path / "again.jsonl", **options)
    assert summary["converted"] == 6 and len(server.requests()) == sent  # every answer came from the cache


def test_local_backend_rejects_unusable_answers_with_a_reason(tmp_path):
    from tiny import tiny_model

    from curator.backends import TransformersBackend
    from curator.pipeline import curate_record
    from curator.stages import LLMStructurer

    model, tokenizer = tiny_model()
    backend = TransformersBackend(model=model, tokenizer=tokenizer, max_new_tokens=8)
    record = {
        "id": "x",
        "sequential": "A: 1 + 2 = 3.\nB: 4 + 5 = 9.\nTotal: 3 + 9 = 12.\nSo the answer is \\boxed{12}.",
    }
    result = curate_record(record, LLMStructurer(backend), retries=1)
    assert result["status"] == "rejected" and result["reason"].startswith("stage: split:")
    assert result["scores"]["attempts"] == 2


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.argv[3:])
