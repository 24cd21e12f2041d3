"""`multiverse <command> ...`: one entry point; each command's module is imported only when it runs.

Every command module exposes `main(argv: list[str]) -> int | None` with its own argparse parser.

Errors. `main` is the one error boundary of the command line. An *expected* error is one the user can fix
by changing what they gave: it prints one line on stderr, `multiverse <command>: <what is wrong and where>`
(`FILE:LINE:` for data), and exits 2. Expected means an instance of:
- `ValueError`: a bad value, file content or structure (`StructureError`, `JsonlError`, a Hub id error, ...);
- `OSError`: a missing, unreadable or unwritable path, a busy output, or a network failure (`ConnectionError`,
  the curator's `BackendUnavailable`, the Hub's HTTP errors).
- `SafetensorError`: a weights file that is not whole (`runtime.paths.check_weights` names the file first);
- anything raised while `from_pretrained` loads a model, tokenizer or config: the folder's files disagree (weights
  of another size than config.json says, a value out of its range), and the line names what was being loaded.
Anything else (a `RuntimeError` from torch, a `KeyError`, ...) is a bug or an environment problem and keeps its
traceback. `--debug` before the command (or after it, except for `train`, whose `--debug` is TRL's), or
`MULTIVERSE_DEBUG=1`, shows the traceback of expected errors too. Argument errors are one line and exit 2
(`runtime.arguments.OneLineParser`; `train` parses with TRL's `TrlParser`).
Ctrl-C exits 130; a closed pipe (`multiverse inspect FILE | head`) ends quietly with 141 (128 + SIGPIPE).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from safetensors import SafetensorError

COMMANDS: dict[str, tuple[str, str]] = {
    "convert": (
        "multiverse.convert", "turn a Qwen2/Llama base (or the embedded SmolLM2) into a Multiverse model folder"
    ),
    "inspect": ("multiverse.inspect_cmd", "check the structure of Multiverse responses in a JSONL file"),
    "generate": ("multiverse.generate_cmd", "answer a prompt with fork/merge decoding"),
    "train": ("trl_recipes.cli", "SFT a base model into a Multiverse model (or the AR baseline); --recipe grpo: RL"),
    "data": ("curator.synth", "`data synth`: write built-in problems with sequential chains of thought"),
    "curate": ("curator.cli", "turn sequential chains of thought into Multiverse-format data"),
    "eval": ("evaluation.cli", "evaluate a model on the built-in task, MATH500, AIME or multiple choice"),
    "demo": ("multiverse.demo", "the whole loop on a laptop: synth, curate, train, evaluate, report"),
    "push": ("multiverse.push", "upload a model or dataset folder to the Hugging Face Hub"),
    "serve": ("multiverse.serve", "an OpenAI-compatible chat server (/v1/chat/completions) with fork/merge decoding"),
    "app": ("multiverse.app", "a Gradio app that shows the paths being written side by side"),
}

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, SafetensorError)
"""What a user can fix by changing their input: reported in one line, exit status 2 (see the module doc)."""

USAGE_ERROR = 2


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: multiverse [--debug] <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def one_line(error: BaseException) -> str:
    """The error's message on one line (the Hub's and transformers' messages span several)."""
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    return text or type(error).__name__


def loading_source(error: BaseException) -> str | None:
    """What a `from_pretrained` call was loading when `error` was raised inside it (the outermost call), else None.

    transformers' `from_pretrained` methods (models, configs, tokenizers) all name their first argument
    `pretrained_model_name_or_path`: the folder or Hub id.
    """
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name == "from_pretrained" and "pretrained_model_name_or_path" in frame.f_locals:
            return str(frame.f_locals["pretrained_model_name_or_path"])
    return None


def _quiet_closed_pipe() -> int:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured in tests)
        pass
    return 141


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("MULTIVERSE_DEBUG", "") not in ("", "0")
    while argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"multiverse: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return USAGE_ERROR
    if command != "train" and "--debug" in rest:
        debug, rest = True, [arg for arg in rest if arg != "--debug"]
    try:
        module = importlib.import_module(COMMANDS[command][0])
        return int(module.main(rest) or 0)
    except BrokenPipeError:
        return _quiet_closed_pipe()
    except KeyboardInterrupt:
        print(f"multiverse {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        source = loading_source(error)
        if debug or (source is None and not isinstance(error, EXPECTED_ERRORS)):
            raise
        text = one_line(error)
        if source is not None and source not in text:
            text = f"cannot load {source}: {text}"
        print(f"multiverse {command}: {text}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
