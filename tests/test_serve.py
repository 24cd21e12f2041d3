"""`multiverse serve`: the real server as a process on 127.0.0.1, driven by the real `openai` client.

Servers on a tiny random model saved with `save_pretrained`: the plain CLI, one whose `generate()` calls
get a logits processor forcing a three-path skeleton, so the answer provably went through fork/merge (tags in
label order, parallelism > 1 in the engine's numbers), and a one-row server with a one-request queue for
backpressure (503 + Retry-After), cancellation while waiting and /health's counts. All decode in fp32, so
that a request batched with others gives the text it gives alone. fastapi, uvicorn, httpx and openai are part
of the test install (`.ci/run`): a missing one fails here, it does not skip.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import fastapi  # noqa: F401 (the server's dependency)
import openai
import pytest
import uvicorn  # noqa: F401 (the server's dependency)
from tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SKELETON = '[2, block(["1", "2", "3"], [[12], [3], [6]]), 3]'


def test_serve_refuses_a_folder_that_is_not_a_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "multiverse.cli", "serve", "--model", str(tmp_path / "nothing")],
        capture_output=True, text=True, env=environment(), timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("multiverse serve:"), result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-running", "0"], "--max-running: 0 is below 1"),
        (["--max-waiting", "-1"], "--max-waiting: -1 is below 0"),
        (["--max-running", "many"], "'many' is not an integer"),
        (["--precision", "fp16"], "invalid choice: 'fp16'"),
    ],
)
def test_serve_refuses_bad_flags_in_one_line(tmp_path, flags, message):
    result = subprocess.run(
        [sys.executable, "-m", "multiverse.cli", "serve", "--model", str(tmp_path), *flags],
        capture_output=True, text=True, env=environment(), timeout=120, check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("multiverse serve:") and message in lines[0], result.stderr


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def start_server(command: list[str], port: int, log: Path, probe: str | None = None) -> subprocess.Popen:
    """Start a server process and wait until it answers (`probe`: a page to GET instead of /health)."""
    handle = log.open("w")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment(), cwd=ROOT)
    for _ in range(240):  # up to 2 minutes to import torch and load the model on a busy machine
        if process.poll() is not None:
            break
        if (answers(probe) if probe else health(f"http://127.0.0.1:{port}") is not None):
            return process
        time.sleep(0.5)
    stop(process)
    raise AssertionError(f"the server did not start:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve") / "tiny-multiverse"
    model, tokenizer = tiny_model("qwen2", seed=3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cli_server(model_dir: Path, log: Path, *flags: str):
    """`multiverse serve` on the tiny model in fp32 with `flags`: yields (url, log), stops it afterwards."""
    port = free_port()
    command = [
        sys.executable, "-m", "multiverse.cli", "serve", "--model", str(model_dir), "--port", str(port),
        "--precision", "fp32", *flags,
    ]
    process = start_server(command, port, log)
    yield f"http://127.0.0.1:{port}", log
    stop(process)


@pytest.fixture(scope="module")
def plain_server(model_dir, tmp_path_factory):
    yield from cli_server(model_dir, tmp_path_factory.mktemp("logs") / "plain.log")


@pytest.fixture(scope="module")
def narrow_server(model_dir, tmp_path_factory):
    """One request decoded at a time, one more may wait."""
    log = tmp_path_factory.mktemp("logs") / "narrow.log"
    yield from cli_server(model_dir, log, "--max-running", "1", "--max-waiting", "1")


@pytest.fixture(scope="module")
def forced_server(model_dir, tmp_path_factory):
    port = free_port()
    folder = tmp_path_factory.mktemp("forced")
    launcher = folder / "launch.py"
    launcher.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from engine_skeleton import SkeletonProcessor, block, skeleton_template
        from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList
        from multiverse.serve import serve

        class Paced(LogitsProcessor):  # 10 ms a step: /health sees a request running, however fast the machine
            def __call__(self, input_ids, scores):
                time.sleep(0.01)
                return scores

        tokenizer = AutoTokenizer.from_pretrained({str(model_dir)!r})
        template = skeleton_template(tokenizer, {SKELETON})
        processor = LogitsProcessorList([SkeletonProcessor(template, tokenizer), Paced()])
        serve({str(model_dir)!r}, "127.0.0.1", {port}, logits_processor=processor, max_running=4, precision="fp32")
    """))
    process = start_server([sys.executable, str(launcher)], port, folder / "forced.log")
    yield f"http://127.0.0.1:{port}"
    stop(process)


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=300, max_retries=0)


def streamed(chat, **kwargs) -> tuple[str, list]:
    chunks = list(chat.chat.completions.create(stream=True, **kwargs))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


QUESTION = [{"role": "user", "content": "What is 12 + 30? Think step by step and in parallel before answering."}]


@pytest.mark.slow
def test_streamed_and_non_streamed_chats_decode_with_fork_merge(forced_server):
    chat = client(forced_server)
    answer = chat.chat.completions.create(model="multiverse", messages=QUESTION, max_tokens=300)
    content = answer.choices[0].message.content
    assert [content.index(f"<Path>\n{k}:") for k in "123"] == sorted(content.index(f"<Path>\n{k}:") for k in "123")
    assert content.startswith("<Think>") and "<Conclusion>" in content and answer.choices[0].finish_reason == "stop"
    stats = answer.model_extra["multiverse"]
    assert [b["labels"] for b in stats["blocks"]] == [["1", "2", "3"]] and stats["parallelism"] > 1.2
    assert answer.usage.completion_tokens > stats["decode_steps"]

    text, chunks = streamed(chat, model="multiverse", messages=QUESTION, max_tokens=300)
    assert text == content, "greedy: the stream concatenates to the non-streamed answer"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 10, "it streamed in pieces"
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].model_extra["multiverse"] == stats


@pytest.mark.slow
def test_a_client_that_disconnects_stops_its_generation(plain_server):
    url, _ = plain_server
    chat = client(url)
    stream = chat.chat.completions.create(model="m", messages=QUESTION, max_tokens=4000, stream=True)
    for n, _ in enumerate(stream):
        if n == 3:
            break
    stream.close()
    for _ in range(120):
        counts = health(url)
        if counts["cancelled"]:
            break
        time.sleep(0.5)
    assert counts["cancelled"] == 1 and counts["completed"] == 0, counts
    after = chat.chat.completions.create(model="m", messages=QUESTION, max_tokens=5)
    assert after.usage.completion_tokens == 5 and after.choices[0].finish_reason == "length"


@pytest.mark.slow
def test_two_concurrent_clients_each_get_their_own_answer(plain_server):
    url, log = plain_server
    chat = client(url)
    questions = [[{"role": "user", "content": q}] for q in ("first question", "a different, second one")]
    alone = [
        chat.chat.completions.create(model="m", messages=q, max_tokens=40).choices[0].message.content for q in questions
    ]
    assert alone[0] != alone[1]
    results: dict[int, str] = {}
    errors: list = []

    def ask(i: int) -> None:
        try:
            results[i] = streamed(chat, model="m", messages=questions[i], max_tokens=40)[0]
        except Exception as err:  # noqa: BLE001 (reported by the assertion below)
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and results == {0: alone[0], 1: alone[1]}
    assert "Traceback" not in log.read_text()


def wait_for(url: str, seconds: float = 60, **expected) -> dict:
    """Poll /health until it shows every `expected` count; returns the last /health."""
    deadline = time.monotonic() + seconds
    while True:
        counts = health(url)
        if counts is not None and all(counts.get(k) == v for k, v in expected.items()):
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"/health never showed {expected}: {counts}")
        time.sleep(0.2)


def first_content(lines) -> str:
    """Read server-sent events until one carries text; returns that text."""
    for line in lines:
        if line.startswith("data: {"):
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                return choices[0]["delta"]["content"]
    raise AssertionError("the stream ended without text")


@pytest.mark.slow
def test_past_the_bound_a_request_gets_503_with_retry_after_and_health_counts(narrow_server):
    import httpx
    url, log = narrow_server
    long = {"model": "m", "messages": QUESTION, "max_tokens": 4000, "stream": True}
    with httpx.Client(base_url=url, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=long) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the response
            first_content(lines)  # decoding has begun
            wait_for(url, running=1, waiting=0)
            with http.stream("POST", "/v1/chat/completions", json=long) as waiting:
                assert waiting.status_code == 200
                wait_for(url, running=1, waiting=1)
                refused = http.post("/v1/chat/completions", json={**long, "stream": False})
                assert refused.status_code == 503, refused.text
                assert int(refused.headers["Retry-After"]) >= 1
                assert refused.json()["error"]["message"].startswith("server busy: 1 running, 1 waiting")
            counts = wait_for(url, waiting=0, cancelled=1)  # the waiting client left: it left the queue
            assert counts["running"] == 1, "the first request still decodes"
        counts = wait_for(url, running=0, cancelled=2)  # its client left too: decoding stops
        assert counts["completed"] == 0 and counts["rejected"] == 1 and counts["failed"] == 0, counts
        answer = http.post("/v1/chat/completions", json={"model": "m", "messages": QUESTION, "max_tokens": 5})
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 5
    # the worker counts a request done just after its answer is sent: wait for the counters to settle
    counts = wait_for(url, completed=1, running=0, waiting=0)
    assert counts["tokens_per_s"] > 0 and counts["peak_cache_columns"] > 0 and counts["rss_mb"] > 0
    assert counts["cache_columns"] == 0 and counts["live_tokens"] == 0, json.dumps(counts)
    assert counts["precision"]["precision"] == "fp32" and counts["max_running"] == 1 and counts["max_waiting"] == 1
    assert "Traceback" not in log.read_text()


MALFORMED = [
    b"{not json",
    b"[1, 2]",
    b"{}",
    b'{"messages": "hello"}',
    b'{"messages": [{"role": "user", "content": 5}]}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": true}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "top_p": 2}',
    b'{"messages": [{"role": "user", "content": "hi"}], "stop": 5}',
    b'{"messages": [{"role": "user", "content": "hi"}], "n": 99}',
    b'{"messages": [{"role": "user", "content": "hi"}], "n": 9}',
    b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
    b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1.5}',
]


@pytest.mark.slow
def test_malformed_bodies_get_400_in_one_line_and_the_server_stays_up(plain_server):
    import httpx
    url, log = plain_server
    before = health(url)
    with httpx.Client(base_url=url, timeout=60) as http:
        for body in MALFORMED:
            answer = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            assert answer.status_code == 400, (body, answer.text)
            message = answer.json()["error"]["message"]
            assert message and "\n" not in message, (body, message)
        good = http.post("/v1/chat/completions", json={"model": "m", "messages": QUESTION, "max_tokens": 3})
        assert good.status_code == 200 and good.json()["choices"][0]["finish_reason"] == "length"
    after = wait_for(url, completed=before["completed"] + 1, running=0)  # counted just after the answer went out
    assert after["invalid"] - before["invalid"] == len(MALFORMED)
    assert after["completed"] - before["completed"] == 1 and after["running"] == 0 and after["failed"] == 0
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_requests_join_one_already_decoding_each_with_its_own_answer(forced_server):
    chat = client(forced_server)
    pairs = ((1, 2), (30, 400), (5, 6))
    questions = [[{"role": "user", "content": f"What is {a} + {b}? Think in parallel."}] for a, b in pairs]
    alone = [chat.chat.completions.create(model="m", messages=q, max_tokens=200) for q in questions]
    assert len({a.choices[0].message.content for a in alone}) == 3
    busy = {"model": "m", "messages": QUESTION, "max_tokens": 300}
    occupier = threading.Thread(target=chat.chat.completions.create, kwargs=busy)
    occupier.start()
    wait_for(forced_server, running=1)
    results: dict[int, tuple] = {}

    def ask(i: int) -> None:
        results[i] = streamed(chat, model="m", messages=questions[i], max_tokens=200)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads + [occupier]:
        t.join(timeout=300)
    assert health(forced_server)["most_running"] == 4, "the three joined the engine while the first decoded"
    for i, answer in enumerate(alone):
        text, chunks = results[i]
        assert text == answer.choices[0].message.content, f"row {i}: streamed from a batch == alone"
        last = chunks[-1]
        assert last.choices[0].finish_reason == answer.choices[0].finish_reason
        assert last.usage.completion_tokens == answer.usage.completion_tokens
        assert last.model_extra["multiverse"] == answer.model_extra["multiverse"]
        assert last.model_extra["multiverse"]["parallelism"] > 1.2, "it went through fork/merge"


@pytest.mark.slow
def test_n_answers_share_one_request_each_as_its_own_seed_gives_alone(forced_server):
    chat = client(forced_server)
    ask = {"model": "m", "messages": QUESTION, "max_tokens": 60, "temperature": 1.0}
    together = chat.chat.completions.create(n=3, seed=11, **ask)
    alone = [chat.chat.completions.create(seed=11 + i, **ask) for i in range(3)]
    assert [c.index for c in together.choices] == [0, 1, 2]
    assert [c.message.content for c in together.choices] == [a.choices[0].message.content for a in alone]
    assert len({c.message.content for c in together.choices}) > 1, "each choice drew its own answer"
    assert together.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert together.model_extra["multiverse"] == [a.model_extra["multiverse"] for a in alone]
    chunks = list(chat.chat.completions.create(n=2, seed=11, stream=True, **ask))
    texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
             for i in range(2)]
    assert texts == [a.choices[0].message.content for a in alone[:2]]
