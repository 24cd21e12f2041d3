"""`multiverse serve`: the real server as a process on 127.0.0.1, driven by the real `openai` client.

Two servers on a tiny random model saved with `save_pretrained`: the plain CLI, and one whose
`generate()` calls get a logits processor forcing a three-path skeleton, so the answer provably went
through fork/merge (tags in label order, parallelism > 1 in the engine's numbers). fastapi, uvicorn and
openai are part of the test install (`.ci/run`): a missing one fails here, it does not skip.
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


@pytest.fixture(scope="module")
def plain_server(model_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "plain.log"
    command = [sys.executable, "-m", "multiverse.cli", "serve", "--model", str(model_dir), "--port", str(port)]
    process = start_server(command, port, log)
    yield f"http://127.0.0.1:{port}", log
    stop(process)


@pytest.fixture(scope="module")
def forced_server(model_dir, tmp_path_factory):
    port = free_port()
    folder = tmp_path_factory.mktemp("forced")
    launcher = folder / "launch.py"
    launcher.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from engine_skeleton import SkeletonProcessor, block, skeleton_template
        from transformers import AutoTokenizer, LogitsProcessorList
        from multiverse.serve import serve
        tokenizer = AutoTokenizer.from_pretrained({str(model_dir)!r})
        template = skeleton_template(tokenizer, {SKELETON})
        processor = LogitsProcessorList([SkeletonProcessor(template, tokenizer)])
        serve({str(model_dir)!r}, "127.0.0.1", {port}, logits_processor=processor)
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
    alone = [chat.chat.completions.create(model="m", messages=q, max_tokens=40).choices[0].message.content for q in questions]
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
