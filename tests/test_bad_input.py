"""What a careless or hostile user does to every command and to the Python API (issue 12).

Each refusal asserts: exit status 2, one line on stderr naming what is wrong and where, no traceback,
and no file changed. Commands run in-process through `multiverse.cli.main` (fast); a few run as real
processes to prove the end-to-end exit status and the absence of a traceback.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import example_response, tiny_model, tiny_tokenizer
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

from curator.synth import synthesize, write_jsonl
from multiverse.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"\d+/\d+ \[|examples/s\]|it/s\]")  # a tqdm bar


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny Multiverse model, a plain Llama, a model without tokenizer, and a GPT-2 config folder."""
    root = tmp_path_factory.mktemp("models")
    model, tokenizer = tiny_model()
    model.save_pretrained(root / "multiverse")
    tokenizer.save_pretrained(root / "multiverse")
    plain_tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(plain_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
    )
    LlamaForCausalLM(config).save_pretrained(root / "plain")
    plain_tokenizer.save_pretrained(root / "plain")
    shutil.copytree(
        root / "plain", root / "no-tokenizer", ignore=shutil.ignore_patterns("tokenizer*", "chat_template*")
    )
    (root / "gpt2").mkdir()
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(root / "gpt2")
    plain_tokenizer.save_pretrained(root / "gpt2")
    return {name: root / name for name in ("multiverse", "plain", "no-tokenizer", "gpt2")}


@pytest.fixture()
def problems(tmp_path) -> Path:
    path = tmp_path / "problems.jsonl"
    write_jsonl(synthesize(6, seed=3, k=(2, 3)), path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(result: tuple[int, str, str], *words: str) -> str:
    """Assert exit 2, exactly one line on stderr, no traceback, and every word in that line; returns the line.

    Progress bars of loading that happened before the problem showed up are not messages: they are left out.
    """
    code, _, err = result
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not PROGRESS.search(line)]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under the roots with its bytes: compare before and after a refusal."""
    files = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        files.update({str(p): p.read_bytes() for p in paths})
    return files


def curated_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# The error boundary itself


def test_debug_flag_and_environment_show_the_traceback(capsys, tmp_path, monkeypatch):
    missing = tmp_path / "missing.jsonl"
    refused(run(capsys, "inspect", missing), str(missing), "no such file")
    with pytest.raises(FileNotFoundError):
        main(["--debug", "inspect", str(missing)])
    with pytest.raises(FileNotFoundError):
        main(["inspect", str(missing), "--debug"])
    monkeypatch.setenv("MULTIVERSE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["inspect", str(missing)])


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    import multiverse.inspect_cmd

    def broken(argv):
        raise RuntimeError("a bug")

    monkeypatch.setattr(multiverse.inspect_cmd, "main", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["inspect", "x.jsonl"])


def test_unknown_command_and_argparse_errors_exit_2(capsys):
    assert run(capsys, "frobnicate")[0] == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", "hi"])  # --model missing: argparse says so
    assert exit_info.value.code == 2
    assert "--model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["eval", "--model", "m", "--data", "d", "--batching", "foo"], ["multiverse eval:", "--batching", "'foo'"]),
        (["demo", "--precision", "fp8"], ["multiverse demo:", "--precision"]),
        (["convert"], ["multiverse convert:", "--base"]),
        (["curate", "--input", "x"], ["multiverse curate:", "--output"]),
        (["data", "synth", "--n", "x"], ["multiverse data synth:", "'x'"]),
        (["inspect"], ["multiverse inspect:", "file"]),
        (["push", "folder"], ["multiverse push:", "--repo-id"]),
        (["app", "--port", "x"], ["multiverse app:", "--port"]),
        (["serve", "--max-running", "0"], ["multiverse serve:", "--max-running"]),
    ],
)
def test_every_command_says_a_bad_argument_in_one_line(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    refused((exit_info.value.code, *capsys.readouterr()), *words)


def test_closed_pipe_ends_quietly(capsys, tmp_path, folders, monkeypatch):
    data = tmp_path / "responses.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "response": example_response()}) + "\n" for i in range(3)))

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise ValueError("not a real file")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = main(["inspect", str(data), "--json", "--tokenizer", str(folders["multiverse"])])
    assert code == 141
    assert capsys.readouterr().err == ""


def test_end_to_end_processes_show_one_line_and_no_traceback(tmp_path, folders):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "multiverse.cli"]
    out = tmp_path / "problems.jsonl"
    result = subprocess.run([*command, "data", "synth", "--n", "3", "--nesting", "2", "--out", str(out)],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr == "multiverse data: nesting is a probability in [0, 1], got 2.0\n"
    assert not out.exists()
    # `| head -1`: the reader goes away after one line; the writer stops quietly
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"id": str(i), "response": "<Think>x</Think>y"}) + "\n" for i in range(3000)))
    process = subprocess.Popen([*command, "inspect", str(many), "--json", "--tokenizer", str(folders["multiverse"])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    assert json.loads(process.stdout.readline())["id"] == "0"
    process.stdout.close()
    assert process.wait(timeout=120) == 141
    assert process.stderr.read() == b""


# ---------------------------------------------------------------------------------------------
# convert


def test_convert_missing_base_is_no_such_folder(capsys, tmp_path):
    line = refused(
        run(capsys, "convert", "--base", tmp_path / "nowhere" / "model", "--out", tmp_path / "out"), "no such folder"
    )
    assert "Repo id" not in line
    assert not (tmp_path / "out").exists()


def test_convert_folder_without_tokenizer_says_so(capsys, tmp_path, folders):
    line = refused(run(capsys, "convert", "--base", folders["no-tokenizer"], "--out", tmp_path / "out"), "no tokenizer")
    assert "sentencepiece" not in line.lower()


def test_convert_folder_without_config(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(
        run(capsys, "convert", "--base", tmp_path / "empty", "--out", tmp_path / "out"),
        "not a model folder",
        "config.json",
    )


def test_convert_missing_gguf(capsys, tmp_path):
    refused(run(capsys, "convert", "--base", tmp_path / "m.gguf", "--out", tmp_path / "out"), "no such GGUF file")


def test_convert_unsupported_architecture(capsys, tmp_path, folders):
    refused(
        run(capsys, "convert", "--base", folders["gpt2"], "--out", tmp_path / "out"), "unsupported architecture", "gpt2"
    )
    assert not (tmp_path / "out").exists()


def test_convert_existing_out_without_overwrite(capsys, tmp_path, folders):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    refused(run(capsys, "convert", "--base", folders["plain"], "--out", out), "exists", "--overwrite")
    assert snapshot(out) == before


def test_convert_overwrite_refuses_a_folder_that_is_not_a_model(capsys, tmp_path, folders):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("years of work")
    before = snapshot(out)
    refused(run(capsys, "convert", "--base", folders["plain"], "--out", out, "--overwrite"), "not a model folder")
    assert snapshot(out) == before


def test_convert_onto_its_own_base_is_refused(capsys, tmp_path, folders):
    base = tmp_path / "base"
    shutil.copytree(folders["plain"], base)
    before = snapshot(base)
    refused(run(capsys, "convert", "--base", base, "--out", base, "--overwrite"), "base model's own folder")
    assert snapshot(base) == before


def test_convert_overwrite_onto_a_file(capsys, tmp_path, folders):
    out = tmp_path / "model.txt"
    out.write_text("keep")
    refused(run(capsys, "convert", "--base", folders["plain"], "--out", out, "--overwrite"), "is a file")
    assert out.read_text() == "keep"


def test_convert_overwrite_replaces_a_previous_model_folder(capsys, tmp_path, folders):
    out = tmp_path / "converted"
    assert run(capsys, "convert", "--base", folders["plain"], "--out", out)[0] == 0
    (out / "stale.bin").write_bytes(b"old")
    assert run(capsys, "convert", "--base", folders["plain"], "--out", out, "--overwrite")[0] == 0
    assert (out / "config.json").is_file() and not (out / "stale.bin").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


# ---------------------------------------------------------------------------------------------
# inspect


def test_inspect_bad_json_names_file_and_line(capsys, tmp_path, folders):
    data = tmp_path / "r.jsonl"
    data.write_text('{"response": "<Think>a</Think>"}\n\n{"response": "x"\n')
    refused(run(capsys, "inspect", data, "--tokenizer", folders["multiverse"]), f"{data}:3:", "not valid JSON")


def test_inspect_missing_field_names_line_and_fields(capsys, tmp_path, folders):
    data = tmp_path / "r.jsonl"
    data.write_text('{"response": "<Think>a</Think>"}\n{"text": "x", "id": 7}\n')
    refused(run(capsys, "inspect", data, "--tokenizer", folders["multiverse"]), f"{data}:2:", "'response'", "--field")


def test_inspect_non_object_line(capsys, tmp_path, folders):
    data = tmp_path / "r.jsonl"
    data.write_text('["a list"]\n')
    refused(run(capsys, "inspect", data, "--tokenizer", folders["multiverse"]), f"{data}:1:", "expected a JSON object")


def test_inspect_a_folder_or_an_empty_file(capsys, tmp_path, folders):
    refused(run(capsys, "inspect", tmp_path, "--tokenizer", folders["multiverse"]), "is a folder")
    (tmp_path / "empty.jsonl").write_text("\n")
    refused(run(capsys, "inspect", tmp_path / "empty.jsonl", "--tokenizer", folders["multiverse"]), "no records")


def test_inspect_tokenizer_paths(capsys, tmp_path, folders):
    data = tmp_path / "r.jsonl"
    data.write_text('{"response": "<Think>a</Think>"}\n')
    refused(run(capsys, "inspect", data, "--tokenizer", tmp_path / "nope"), "--tokenizer", "no such folder")
    refused(run(capsys, "inspect", data, "--tokenizer", folders["no-tokenizer"]), "no tokenizer")
    refused(run(capsys, "inspect", data, "--tokenizer", folders["plain"]), "<Think>")  # no tags: which are missing


# ---------------------------------------------------------------------------------------------
# generate


def test_generate_refuses_a_plain_model_before_loading_it(capsys, folders):
    refused(
        run(capsys, "generate", "--model", folders["plain"], "--prompt", "hi"),
        "plain 'llama' model",
        "convert it first",
    )


def test_generate_missing_model_is_no_such_folder(capsys, tmp_path):
    line = refused(run(capsys, "generate", "--model", tmp_path / "a" / "b", "--prompt", "hi"), "no such folder")
    assert "Repo id" not in line
    refused(run(capsys, "generate", "--model", "./typo", "--prompt", "hi"), "./typo: no such folder")


def test_generate_model_folder_without_tokenizer(capsys, tmp_path, folders):
    folder = tmp_path / "m"
    shutil.copytree(folders["multiverse"], folder, ignore=shutil.ignore_patterns("tokenizer*"))
    refused(run(capsys, "generate", "--model", folder, "--prompt", "hi"), "no tokenizer")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--temperature", "nan"], ["--temperature", "nan"]),
        (["--temperature", "-1"], ["--temperature"]),
        (["--temperature", "0.7", "--top-p", "5"], ["--top-p", "(0, 1]"]),
        (["--top-p", "0.9"], ["--top-p", "--temperature"]),  # greedy would ignore it
        (["--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["--max-new-tokens", "1000000000000"], ["--max-new-tokens", "context of 4096"]),
        (["--max-new-tokens", "4090"], ["--max-new-tokens", "prompt"]),  # fits alone, not with the prompt
        (["--max-branches", "0"], ["--max-branches"]),
        (["--max-depth", "-1"], ["--max-depth"]),
    ],
)
def test_generate_flag_ranges(capsys, folders, flags, words):
    refused(run(capsys, "generate", "--model", folders["multiverse"], "--prompt", "What is 2 + 2?", *flags), *words)


def test_generate_empty_prompt(capsys, folders):
    refused(run(capsys, "generate", "--model", folders["multiverse"], "--prompt", "  "), "--prompt is empty")


def test_tags_in_a_question_are_text_not_structure(capsys, folders):
    """Issue 12.2: the user's tag strings used to be tokenized into control tags and crash the engine."""
    prompt = "What does the tag <Parallel></Parallel> mean? And </Path>, <Goal>?"
    code, out, err = run(
        capsys, "generate", "--model", folders["multiverse"], "--prompt", prompt, "--max-new-tokens", "6", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["prompt"] == prompt


def test_encode_chat_keeps_user_text_and_assistant_structure(folders):
    from transformers import AutoTokenizer

    from modeling_multiverse import encode_chat, tag_ids_from_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders["multiverse"])
    tags = set(tag_ids_from_tokenizer(tokenizer).values())
    user = [{"role": "user", "content": "Explain <Parallel> and <Path>1: x</Path> please <|end|>"}]
    ids = encode_chat(tokenizer, user)
    assert not tags & set(ids)
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    assert ids.count(tokenizer.eos_token_id) == 1  # the template's own end marker only, not the user's
    plain = [{"role": "user", "content": "What is 2 + 2?"}]
    text = tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
    assert encode_chat(tokenizer, plain) == tokenizer(text, add_special_tokens=False)["input_ids"]
    turns = [*user, {"role": "assistant", "content": example_response()}]
    assert tags & set(encode_chat(tokenizer, turns, add_generation_prompt=False))  # model output keeps its structure


# ---------------------------------------------------------------------------------------------
# train


def test_train_output_equal_to_model_is_refused(capsys, tmp_path, folders, problems):
    model = tmp_path / "model"
    shutil.copytree(folders["multiverse"], model)
    before = snapshot(model)
    refused(
        run(capsys, "train", "--model", model, "--dataset", problems, "--output", model), "would overwrite the model"
    )
    refused(run(capsys, "train", "--model", model, "--dataset", problems,
                "--output", tmp_path / ".." / tmp_path.name / "model"),
            "would overwrite the model")
    assert snapshot(model) == before


def test_train_paths_and_kinds(capsys, tmp_path, folders):
    out = tmp_path / "out"
    problems = tmp_path / "train.jsonl"
    problems.write_text(json.dumps({"prompt": "a", "completion": "<Think>b</Think>c"}) + "\n")
    refused(
        run(capsys, "train", "--model", tmp_path / "x" / "y", "--dataset", problems, "--output", out), "no such folder"
    )
    refused(
        run(capsys, "train", "--model", folders["plain"], "--dataset", problems, "--output", out), "convert it first"
    )
    refused(run(capsys, "train", "--model", folders["multiverse"], "--dataset", tmp_path / "none.jsonl",
                "--output", out),
            "no such file or folder")
    refused(run(capsys, "train", "--model", folders["multiverse"], "--dataset", problems, "--output", problems),
            "would overwrite the training data")
    sequential = tmp_path / "sequential.jsonl"
    write_jsonl(synthesize(2, seed=1), sequential)
    refused(run(capsys, "train", "--model", folders["multiverse"], "--dataset", sequential, "--output", out),
            f"{sequential}", "expected columns 'prompt' and 'completion'")
    assert not out.exists()


def test_train_bad_dataset_lines_and_values(capsys, tmp_path, folders):
    out = tmp_path / "out"
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "<Think>b</Think>c"}\n{"prompt": \n')
    refused(
        run(capsys, "train", "--model", folders["multiverse"], "--dataset", data, "--output", out),
        f"{data}:2:",
        "not valid JSON",
    )
    data.write_text('{"prompt": "a", "completion": "<Think>b</Think>c"}\n')
    refused(run(capsys, "train", "--model", folders["multiverse"], "--dataset", data, "--output", out,
                "--ar_fraction", "2"),
            "--ar_fraction")
    data.write_text('{"prompt": "a", "completion": "<Think><Path>b</Think>c"}\n')
    refused(run(capsys, "train", "--model", folders["multiverse"], "--dataset", data, "--output", out,
                "--report_to", "none"),
            "example 0", "malformed")


def test_train_on_curate_output_points_to_the_export(capsys, tmp_path, folders, problems):
    curated = tmp_path / "curated.jsonl"
    assert run(capsys, "curate", "--input", problems, "--output", curated, "--no-progress")[0] == 0
    refused(run(capsys, "train", "--model", folders["multiverse"], "--dataset", curated, "--output", tmp_path / "out"),
            "--export-dir")


def test_curate_export_is_accepted_by_train(capsys, tmp_path, folders, problems):
    """Issue 12.8: the output of one stage is the input of the next, as the README says."""
    export = tmp_path / "export"
    code, _, err = run(
        capsys, "curate", "--input", problems, "--output", tmp_path / "c.jsonl", "--no-progress", "--export-dir", export
    )
    assert code == 0, err
    from trl_recipes.data import load_sft_dataset

    for source in (export, export / "dataset"):
        for recipe in ("multiverse", "autoregressive"):
            rows = load_sft_dataset(str(source), fallback_split=recipe)
            assert len(rows) >= 1 and ("<Parallel>" in rows[0]["completion"][0]["content"]) == (recipe == "multiverse")
    out = tmp_path / "trained"
    code, _, err = run(
        capsys, "train", "--model", folders["multiverse"], "--dataset", export, "--output", out, "--max_steps", "1",
        "--max_length", "1024", "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
    )
    assert code == 0, err
    assert (out / "config.json").is_file()


# ---------------------------------------------------------------------------------------------
# data synth


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--n", "-1"], ["--n"]),
        (["--n", "1000000000000"], ["--n", "1000000"]),  # no unbounded allocation from a flag
        (["--n", "3", "--k", "9-2"], ["k must satisfy"]),
        (["--n", "3", "--nesting", "2"], ["nesting"]),
    ],
)
def test_synth_values(capsys, tmp_path, flags, words):
    out = tmp_path / "p.jsonl"
    refused(run(capsys, "data", "synth", *flags, "--out", out), *words)
    assert not out.exists()


def test_synth_out_is_a_folder(capsys, tmp_path):
    refused(run(capsys, "data", "synth", "--n", "2", "--out", tmp_path), "is a folder")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# curate


def test_curate_output_equal_to_input_is_refused(capsys, problems, tmp_path):
    before = snapshot(tmp_path)
    refused(run(capsys, "curate", "--input", problems, "--output", problems, "--no-progress"), "is the input file")
    link = tmp_path / "link.jsonl"
    link.symlink_to(problems)
    before = snapshot(tmp_path)
    refused(run(capsys, "curate", "--input", problems, "--output", link, "--no-progress"), "is the input file")
    assert snapshot(tmp_path) == before


def test_curate_refuses_a_foreign_output_without_final_newline(capsys, problems, tmp_path):
    """Issue 12.4: a file with no final newline used to be cut to nothing."""
    output = tmp_path / "notes.jsonl"
    output.write_text('{"my": "notes"}\nlast line without newline')
    before = snapshot(output)
    refused(
        run(capsys, "curate", "--input", problems, "--output", output, "--no-progress"),
        str(output),
        "not a curated record",
    )
    assert snapshot(output) == before
    for text in ("just text", "5", '[1, 2]'):  # no newline at the end of any: each used to be cut to nothing
        output.write_text(text)
        refused(run(capsys, "curate", "--input", problems, "--output", output, "--no-progress"), f"{output}:1:")
        assert output.read_text() == text


def test_curate_keeps_a_whole_last_record_missing_its_newline(capsys, problems, tmp_path):
    output = tmp_path / "c.jsonl"
    assert run(capsys, "curate", "--input", problems, "--output", output, "--no-progress")[0] == 0
    lines = output.read_bytes().splitlines(keepends=True)
    output.write_bytes(b"".join(lines[:3]).rstrip(b"\n"))  # three records, the last one without its newline
    assert run(capsys, "curate", "--input", problems, "--output", output, "--no-progress")[0] == 0
    rows = curated_lines(output)
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    assert rows[:3] == [json.loads(line) for line in lines[:3]]


def test_curate_second_writer_is_refused(capsys, problems, tmp_path):
    """Issue 12.4: two runs onto one output used to duplicate ids."""
    output = tmp_path / "c.jsonl"
    output.write_text("")
    holder = os.open(output, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running curate holds
    try:
        refused(
            run(capsys, "curate", "--input", problems, "--output", output, "--no-progress"),
            "another `multiverse curate` run",
        )
    finally:
        os.close(holder)
    assert output.read_text() == ""
    assert run(capsys, "curate", "--input", problems, "--output", output, "--no-progress")[0] == 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_curate_backend_outage_leaves_records_pending_and_a_rerun_retries(capsys, problems, tmp_path, monkeypatch):
    """Issue 12.5: a transport failure is not a rejection."""
    from curator import backends

    monkeypatch.setattr(
        backends.OpenAICompatibleBackend, "__init__",
        functools.partialmethod(backends.OpenAICompatibleBackend.__init__, max_retries=1, backoff=0.01),
    )
    output = tmp_path / "c.jsonl"
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    line = refused(run(capsys, "curate", "--input", problems, "--output", output, "--backend", "openai",
                       "--base-url", url, "--model", "m", "--no-progress", "--workers", "2"),
                   "6 of 6 records left pending", "rerun")
    assert "Connection" in line or "refused" in line
    assert curated_lines(output) == []  # nothing stored as rejected
    # the rerun retries them
    code, _, err = run(capsys, "curate", "--input", problems, "--output", output, "--no-progress")
    assert code == 0, err
    assert len(curated_lines(output)) == 6


def test_curate_outage_from_python_api(problems, tmp_path):
    from curator.backends import BackendUnavailable
    from curator.pipeline import curate_file

    output = tmp_path / "c.jsonl"
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(BackendUnavailable, match="left pending"):
        curate_file(problems, output, backend="openai", base_url=url, model="m", max_retries=0, progress=False)
    assert curated_lines(output) == []


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--workers", "0"], ["--workers"]),
        (["--workers", "100000"], ["--workers"]),
        (["--retries", "-1"], ["--retries"]),
        (["--min-coverage", "2"], ["--min-coverage"]),
        (["--min-coverage", "nan"], ["--min-coverage"]),
        (["--max-depth", "0"], ["--max-depth"]),
        (["--base-url", "http://x/v1"], ["--base-url", "does nothing with --backend rules"]),
        (["--model", "m"], ["--model", "does nothing"]),
        (["--backend", "local"], ["--backend local needs --model"]),
        (["--backend", "openai", "--base-url", "http://x/v1", "--model", "m", "--timeout", "-5"], ["--timeout"]),
        (["--push-to-hub", "me/data"], ["--push-to-hub needs --export-dir"]),
    ],
)
def test_curate_flag_values(capsys, problems, tmp_path, flags, words):
    output = tmp_path / "c.jsonl"
    refused(run(capsys, "curate", "--input", problems, "--output", output, "--no-progress", *flags), *words)
    assert not output.exists()


def test_curate_bad_input_lines(capsys, tmp_path):
    data, output = tmp_path / "p.jsonl", tmp_path / "c.jsonl"
    data.write_text('{"id": "a", "sequential": "x"}\n{"id": "b", "sequential": ""}\n')
    refused(run(capsys, "curate", "--input", data, "--output", output, "--no-progress"), f"{data}:2:", "'sequential'")
    data.write_text('{"id": "a", "sequential": "x"}\n{"id": "a", "sequential": "y"}\n')
    refused(run(capsys, "curate", "--input", data, "--output", output, "--no-progress"), f"{data}:2:", "duplicate id")
    data.write_bytes(b'{"id": "a", "sequential": "\xff"}\n')
    refused(run(capsys, "curate", "--input", data, "--output", output, "--no-progress"), f"{data}:1:", "UTF-8")
    refused(
        run(capsys, "curate", "--input", tmp_path / "none.jsonl", "--output", output, "--no-progress"), "no such file"
    )
    assert not output.exists()


def test_curate_integer_ids_and_tag_text_in_chains(capsys, tmp_path):
    data, output = tmp_path / "p.jsonl", tmp_path / "c.jsonl"
    rows = synthesize(2, seed=1)
    rows[0]["id"] = 17  # an integer id is an id, not a missing one
    rows[1]["sequential"] = "The tag <Parallel> starts a block.\n" + rows[1]["sequential"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run(capsys, "curate", "--input", data, "--output", output, "--no-progress")
    assert code == 0, err
    by_id = {r["id"]: r for r in curated_lines(output)}
    assert by_id["17"]["status"] == "converted"
    assert by_id[rows[1]["id"]]["status"] == "rejected" and by_id[rows[1]["id"]]["reason"].startswith("tags:")


def test_curate_export_dir_with_other_files_is_refused(capsys, problems, tmp_path):
    export = tmp_path / "mine"
    export.mkdir()
    (export / "keep.txt").write_text("mine")
    output = tmp_path / "c.jsonl"
    before = snapshot(export)
    refused(run(capsys, "curate", "--input", problems, "--output", output, "--no-progress", "--export-dir", export),
            "holds other files")
    assert snapshot(export) == before and not output.exists()


def test_export_keeps_one_row_per_id(problems, tmp_path):
    from curator.export import to_datasets
    from curator.pipeline import curate_file

    output = tmp_path / "c.jsonl"
    curate_file(problems, output, progress=False)
    output.write_bytes(output.read_bytes() * 2)  # what two unlocked runs used to leave
    data = to_datasets(output, problems)
    assert len(data["multiverse"]["id"]) == len(set(data["multiverse"]["id"]))


# ---------------------------------------------------------------------------------------------
# eval


def _task(tmp_path: Path, n: int = 2) -> Path:
    data = tmp_path / "task.jsonl"
    rows = synthesize(n, seed=2)
    rows[0]["question"] = "What do <Parallel> and </Goal> mean here? " + rows[0]["question"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def test_eval_refuses_a_plain_model(capsys, tmp_path, folders):
    refused(run(capsys, "eval", "--model", folders["plain"], "--data", _task(tmp_path)), "convert it first")


def test_eval_paths(capsys, tmp_path, folders):
    refused(run(capsys, "eval", "--model", folders["multiverse"], "--data", tmp_path / "none.jsonl"), "no such file")
    refused(run(capsys, "eval", "--model", tmp_path / "m" / "n", "--data", _task(tmp_path)), "no such folder")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{"question": "q"\n')
    refused(run(capsys, "eval", "--model", folders["multiverse"], "--data", bad), f"{bad}:2:", "not valid JSON")
    bad.write_text('{"question": "q", "answer": "1"}\n{"question": "", "answer": "2"}\n')
    refused(run(capsys, "eval", "--model", folders["multiverse"], "--data", bad), f"{bad}:2:", "question")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--max-new-tokens", "1000000000"], ["--max-new-tokens", "context"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--limit", "0"], ["--limit"]),
        (["--device", "tpu9"], ["--device tpu9"]),
    ],
)
def test_eval_flag_values(capsys, tmp_path, folders, flags, words):
    refused(run(capsys, "eval", "--model", folders["multiverse"], "--data", _task(tmp_path), *flags), *words)


def test_eval_output_onto_the_data_is_refused(capsys, tmp_path, folders):
    data = _task(tmp_path)
    before = snapshot(data)
    refused(run(capsys, "eval", "--model", folders["multiverse"], "--data", data, "--output", data), "--output")
    assert snapshot(data) == before


def test_eval_questions_with_tag_text_run(capsys, tmp_path, folders):
    report = tmp_path / "report.json"
    code, _, err = run(capsys, "eval", "--model", folders["multiverse"], "--data", _task(tmp_path),
                       "--max-new-tokens", "4", "--output", report)
    assert code == 0, err
    assert json.loads(report.read_text())["n"] == 2


# ---------------------------------------------------------------------------------------------
# demo and push


def test_demo_out_is_a_file(capsys, tmp_path):
    out = tmp_path / "run"
    out.write_text("keep")
    refused(run(capsys, "demo", "--out", out, "--quick"), str(out))
    assert out.read_text() == "keep"


def test_demo_refuses_another_runs_folder(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "settings.json").write_text('{"n_train": 5}')
    before = snapshot(out)
    refused(run(capsys, "demo", "--out", out, "--quick"), "other settings")
    assert snapshot(out) == before


def test_push_checks_before_the_network(capsys, tmp_path, folders):
    refused(run(capsys, "push", tmp_path / "nope", "--repo-id", "me/x"), "not a folder")
    refused(run(capsys, "push", folders["multiverse"], "--repo-id", "me/x"), "README.md")
    refused(run(capsys, "push", folders["multiverse"], "--repo-id", "a/b/c"), "--repo-id")


def test_push_without_network_is_one_line(capsys, tmp_path, folders, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(folders["multiverse"], folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# model\n")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    refused(run(capsys, "push", folder, "--repo-id", "me/x"), "me/x")


# ---------------------------------------------------------------------------------------------
# Damaged model folders: weights cut short, a config.json that does not fit them (issue 23)


def _damaged(folders, tmp_path: Path, name: str) -> Path:
    """A copy of the tiny Multiverse model, damaged the way `name` says."""
    folder = tmp_path / name
    shutil.copytree(folders["multiverse"], folder)
    weights, config_path = folder / "model.safetensors", folder / "config.json"
    config = json.loads(config_path.read_text())
    if name == "truncated":  # a download or a save that stopped half way
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif name == "empty-weights":
        weights.write_bytes(b"")
    elif name == "wrong-type":
        config["text_config"]["vocab_size"] = "many"
    elif name == "heads":
        config["text_config"]["num_attention_heads"] = 3  # the hidden size (64) is not a multiple of it
    elif name == "wider":
        config["text_config"]["hidden_size"] *= 2  # the weights have the old size
    elif name == "tag-ids":
        config["tag_token_ids"] = {"<Think>": 5}
    config_path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("name", ["truncated", "empty-weights"])
def test_weights_cut_short_name_the_file_for_every_command_loading_a_model(capsys, tmp_path, folders, problems, name):
    folder = _damaged(folders, tmp_path, name)
    weights = str(folder / "model.safetensors")
    refused(run(capsys, "generate", "--model", folder, "--prompt", "hi"), weights, "not a whole safetensors file")
    refused(run(capsys, "eval", "--model", folder, "--data", _task(tmp_path)), weights)
    refused(run(capsys, "train", "--model", folder, "--dataset", problems, "--output", tmp_path / "out"), weights)
    grpo = ["train", "--recipe", "grpo", "--model", folder, "--dataset", problems, "--output", tmp_path / "out"]
    refused(run(capsys, *grpo), weights)
    refused(run(capsys, "serve", "--model", folder, "--port", str(_closed_port())), weights)
    refused(run(capsys, "app", "--model", folder, "--port", str(_closed_port())), weights)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("wrong-type", ["vocab_size", "expected int"]),
        ("heads", ["not a multiple of the number of attention heads"]),
        ("tag-ids", ["config.json", "tag_token_ids", "</Think>"]),
    ],
)
def test_a_config_json_with_bad_values_is_one_line(capsys, tmp_path, folders, name, words):
    folder = _damaged(folders, tmp_path, name)
    refused(run(capsys, "generate", "--model", folder, "--prompt", "hi"), str(folder), *words)
    refused(run(capsys, "eval", "--model", folder, "--data", _task(tmp_path)), str(folder), *words)


def test_weights_of_another_size_than_the_config_end_with_one_line_naming_the_folder(capsys, tmp_path, folders):
    code, _, err = run(capsys, "generate", "--model", _damaged(folders, tmp_path, "wider"), "--prompt", "hi")
    # transformers prints its load report (which weights mismatch) first; the last line says what failed
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"multiverse generate: cannot load {tmp_path / 'wider'}: ")


def test_any_command_loading_a_damaged_folder_gets_one_line(capsys, tmp_path, folders, monkeypatch):
    """The boundary itself: an error raised inside `from_pretrained` (here one that skips the weights check)."""
    from transformers import AutoModelForCausalLM

    import multiverse.inspect_cmd

    folder = _damaged(folders, tmp_path, "truncated")
    monkeypatch.setattr(multiverse.inspect_cmd, "main", lambda argv: AutoModelForCausalLM.from_pretrained(folder))
    line = refused(run(capsys, "inspect", "x.jsonl"), f"cannot load {folder}", "incomplete metadata")
    assert line.startswith("multiverse inspect: ")
    with pytest.raises(Exception, match="incomplete metadata"):
        main(["--debug", "inspect", "x.jsonl"])


def test_a_damaged_folder_fails_as_a_process_without_a_traceback(tmp_path, folders):
    folder = _damaged(folders, tmp_path, "truncated")
    command = [sys.executable, "-m", "multiverse.cli", "generate", "--model", str(folder), "--prompt", "hi"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 2
    weights = folder / "model.safetensors"
    assert result.stderr.startswith(f"multiverse generate: {weights}: not a whole safetensors file")
    assert len(result.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The Python API


def test_python_api_refusals(tmp_path, folders, problems):
    from curator.pipeline import curate_file
    from multiverse.convert import convert
    from trl_recipes.config import MultiverseModelConfig, MultiverseSFTConfig, RecipeArguments
    from trl_recipes.train import train

    with pytest.raises(ValueError, match="is the input file"):
        curate_file(problems, problems, progress=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("a")
    with pytest.raises(ValueError, match="not a model folder"):
        convert(str(folders["plain"]), mine, overwrite=True)
    assert (mine / "a.txt").read_text() == "a"
    model = tmp_path / "model"
    shutil.copytree(folders["multiverse"], model)
    before = snapshot(model)
    data = RecipeArguments(dataset_name=str(problems))
    with pytest.raises(ValueError, match="would overwrite the model"):
        train(
            data,
            MultiverseSFTConfig(output_dir=str(model), report_to="none"),
            MultiverseModelConfig(model_name_or_path=str(model)),
        )
    with pytest.raises(FileNotFoundError, match="no such folder"):
        train(data, MultiverseSFTConfig(output_dir=str(tmp_path / "out"), report_to="none"),
              MultiverseModelConfig(model_name_or_path=str(tmp_path / "x" / "y")))
    assert snapshot(model) == before
