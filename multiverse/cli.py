"""`multiverse <command> ...`: one entry point; each command's module is imported only when it runs.

Every command module exposes `main(argv: list[str]) -> int | None` with its own argparse parser.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("multiverse.convert", "turn a Qwen2/Llama base (or the embedded SmolLM2) into a Multiverse model folder"),
    "inspect": ("multiverse.inspect_cmd", "check the structure of Multiverse responses in a JSONL file"),
    "generate": ("multiverse.generate_cmd", "answer a prompt with fork/merge decoding"),
    "train": ("trl_recipes.train", "SFT a base model into a Multiverse model (or the autoregressive baseline)"),
    "data": ("curator.synth", "`data synth`: write built-in problems with sequential chains of thought"),
    "curate": ("curator.cli", "turn sequential chains of thought into Multiverse-format data"),
    "eval": ("multiverse.evaluate", "evaluate a model on the built-in task, MATH500, AIME or multiple choice"),
    "demo": ("multiverse.demo", "the whole loop on a laptop: synth, curate, train, evaluate, report"),
    "push": ("multiverse.push", "upload a model or dataset folder to the Hugging Face Hub"),
    "serve": ("multiverse.serve", "an OpenAI-compatible chat server (/v1/chat/completions) with fork/merge decoding"),
    "app": ("multiverse.app", "a Gradio app that shows the paths being written side by side"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: multiverse <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"multiverse: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
