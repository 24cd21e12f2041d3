"""`multiverse app [--model DIR]`: watch a Multiverse model split its reasoning into paths and merge them.

A Gradio page with a chat box. While the model decodes, the trunk text appears first; when it forks,
each `<Path>` gets its own column and the columns fill side by side (a nested block opens columns
inside its path's column); after the merge, the conclusion continues below. A live counter shows the
tokens written, the decode steps (forward passes) and the degree of parallelism (tokens / steps,
SPEC.md §8). It is built on `generate(..., branch_callback=...)` (`modeling_multiverse/streaming.py`).
The tags stay visible (they are the structure); the tokenizer's other special tokens (end of turn, padding)
are left out, and LaTeX (`$...$`, `\\(...\\)`, `\\[...\\]`, a bare `\\boxed{}`) is rendered by Gradio's KaTeX.

Loads `runs/demo/multiverse-model` (what `multiverse demo` writes) unless `--model` names a folder.

Example:
    $ pip install -e '.[app]'
    $ multiverse app --model runs/demo/multiverse-model --port 7860
"""

from __future__ import annotations

import html
import queue
import re
import sys
import threading
from pathlib import Path

from runtime.arguments import OneLineParser

DEFAULT_MODEL = "runs/demo/multiverse-model"

LATEX_DELIMITERS = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "$", "right": "$", "display": False},
]
"""What KaTeX renders as math in the page (Gradio's Markdown and Chatbot), the delimiters math models write."""

_MATH = re.compile(r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)|\$[^$]*?\$", re.DOTALL)
_BOXED = re.compile(r"\\boxed\s*\{")

CSS = """
.mv-trunk, .mv-path-text { white-space: pre-wrap; overflow-wrap: anywhere; font-family: ui-monospace, monospace; font-size: 13px; }
.mv-block { display: flex; gap: 8px; margin: 6px 0; align-items: stretch; }
.mv-path { flex: 1 1 0; min-width: 0; border: 1px solid #7c3aed; border-radius: 6px; padding: 6px; background: #f5f3ff; }
.mv-path.mv-live { border-color: #16a34a; background: #f0fdf4; }
.mv-label { font-weight: 600; font-size: 12px; color: #5b21b6; margin-bottom: 4px; }
.mv-counter { font-family: ui-monospace, monospace; font-size: 14px; padding: 4px 0; }
"""  # noqa: E501 (CSS rules, one per line: wrapping them would change the string)


def with_math_delimiters(text: str) -> str:
    r"""`text` with each `\boxed{...}` that is outside math delimiters put inside `\(...\)`, for KaTeX to render.

    >>> with_math_delimiters(r"so \boxed{\frac{1}{2}} and $\boxed{3}$")
    'so \\(\\boxed{\\frac{1}{2}}\\) and $\\boxed{3}$'
    """
    out, start = [], 0
    for math in [*_MATH.finditer(text), None]:
        end = len(text) if math is None else math.start()
        out.append(_delimit_boxed(text[start:end]))
        if math is not None:
            out.append(math.group(0))
            start = math.end()
    return "".join(out)


def text_html(text: str) -> str:
    r"""Model text as HTML for the page's Markdown, on one line: each complete math span (and bare box) kept for
    KaTeX; every other `$` and backslash as an entity, so that a `$` left open in one path cannot pair with one
    in another path (Gradio finds math in the Markdown source, across HTML elements).

    >>> text_html("a < $b < c$ costs $5\n")
    'a &lt; $b &lt; c$ costs &#36;5&#10;'
    """
    text = with_math_delimiters(text)
    out, start = [], 0
    for math in [*_MATH.finditer(text), None]:
        end = len(text) if math is None else math.start()
        out.append(html.escape(text[start:end]).replace("$", "&#36;").replace("\\", "&#92;").replace("\n", "&#10;"))
        if math is not None:
            out.append(html.escape(" ".join(math.group(0).splitlines())))  # TeX reads a newline as a space
            start = math.end()
    return "".join(out)


def _delimit_boxed(text: str) -> str:
    """`\\boxed{...}` with balanced braces -> `\\(\\boxed{...}\\)`; one still being written stays as it is."""
    out, start = [], 0
    for match in _BOXED.finditer(text):
        if match.start() < start:
            continue  # inside a box already taken
        depth = 0
        for end in range(match.end() - 1, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                out += [text[start : match.start()], "\\(", text[match.start() : end + 1], "\\)"]
                start = end + 1
                break
    return "".join(out) + text[start:]


def reply_text(tokenizer, response: list[int]) -> str:
    """The chat's reply: the answer after `</Think>` (the transcript shows the reasoning), all of it when there is
    none; without special tokens, math delimited for KaTeX."""
    from modeling_multiverse import TAGS, tag_ids_from_tokenizer
    from modeling_multiverse.structure import THINK_END

    think_end = tag_ids_from_tokenizer(tokenizer)[TAGS[THINK_END]]
    if think_end in response:
        answer = tokenizer.decode(response[len(response) - response[::-1].index(think_end) :], skip_special_tokens=True)
        if answer.strip():
            return with_math_delimiters(answer.strip())
    return with_math_delimiters(tokenizer.decode(response, skip_special_tokens=True).strip())


class Transcript:
    """The response as a tree, built from branch events: each branch's text with its blocks in place."""

    def __init__(self, tokenizer):
        from modeling_multiverse import tag_ids_from_tokenizer

        self.tokenizer = tokenizer
        # the tags are special tokens too, and they are what the page shows; end of turn, padding and the like are not
        self.hidden_ids = set(tokenizer.all_special_ids) - set(tag_ids_from_tokenizer(tokenizer).values())
        self.nodes: dict[tuple, dict] = {(): self._node(())}
        self.generated = 0
        self.steps = 0

    @staticmethod
    def _node(path: tuple) -> dict:
        return {"items": [], "done": False, "path": path}

    def add(self, event) -> None:
        node = self.nodes.setdefault(event.index, self._node(event.path))
        if event.kind == "tokens":
            items = node["items"]
            if items and isinstance(items[-1], list):
                items[-1].extend(event.token_ids)
            else:
                items.append(list(event.token_ids))
        elif event.kind == "fork":
            block = sum(isinstance(i, tuple) for i in node["items"])
            node["items"].append((block, len(event.labels)))
        else:
            node["done"] = True
        self.generated, self.steps = event.generated_tokens, event.decode_steps

    def live_paths(self) -> int:
        return sum(1 for index, node in self.nodes.items() if index and not node["done"])

    def counter(self) -> str:
        parallelism = self.generated / self.steps if self.steps else 0.0
        return (
            f"<div class='mv-counter'>tokens <b id='mv-tokens'>{self.generated}</b> · decode steps "
            f"<b id='mv-steps'>{self.steps}</b> · degree of parallelism <b id='mv-parallelism'>{parallelism:.2f}</b>"
            f" · paths running <b>{self.live_paths()}</b></div>"
        )

    def html(self, index: tuple = ()) -> str:
        """The transcript as HTML on one line (newlines as `&#10;`): Gradio's Markdown passes one HTML block through
        untouched, so the model's `*` or `#` stay text, and KaTeX then renders the math in it."""
        parts = []
        for item in self.nodes[index]["items"]:
            if isinstance(item, list):
                text = self.tokenizer.decode([i for i in item if i not in self.hidden_ids], skip_special_tokens=False)
                parts.append(text_html(text))
                continue
            block, paths = item
            columns = []
            for k in range(paths):
                child = index + ((block, k),)
                if child not in self.nodes:
                    continue  # a path the depth limit has not started yet
                node = self.nodes[child]
                live = "" if node["done"] else " mv-live"
                label = html.escape(node["path"][-1])
                columns.append(
                    f"<div class='mv-path{live}'><div class='mv-label'>Path {label}</div>"
                    f"<div class='mv-path-text'>{self.html(child)}</div></div>"
                )
            parts.append(f"<div class='mv-block'>{''.join(columns)}</div>")
        body = "".join(parts)
        return body if index else f"<div class='mv-trunk'>{body}</div>"


def build_demo(model, tokenizer, logits_processor=None, max_new_tokens: int = 512):
    """The Gradio Blocks app around a loaded model (`logits_processor` is passed to every generate call)."""
    import gradio as gr
    import torch

    from modeling_multiverse import prompt_ids

    def answer(question: str, history: list):
        question = (question or "").strip()
        if not question:
            yield history, "", "<div class='mv-counter'>type a question</div>"
            return
        history = [*history, {"role": "user", "content": question}]
        ids = prompt_ids(tokenizer, question)
        # with its mask: transformers warns that it cannot infer one when pad and eos are the same token
        input_ids = torch.tensor([ids], device=model.device)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        events: queue.Queue = queue.Queue()
        transcript = Transcript(tokenizer)
        result: dict = {}

        def run() -> None:
            try:
                with torch.no_grad():
                    result["out"] = model.generate(
                        **inputs, tokenizer=tokenizer, max_new_tokens=max_new_tokens, do_sample=False,
                        branch_callback=events.put, logits_processor=logits_processor,
                    )
            except Exception as err:  # noqa: BLE001 (shown in the page as one line)
                result["error"] = f"generation failed: {err}"
            finally:
                events.put(None)

        threading.Thread(target=run, daemon=True).start()
        finished = False
        while not finished:
            event = events.get()
            while event is not None:  # take every event already there, then draw once
                transcript.add(event)
                try:
                    event = events.get(timeout=0.05)
                except queue.Empty:
                    break
            finished = event is None
            yield history, transcript.html(), transcript.counter()
        if "error" in result:
            reply = result["error"]
        else:
            reply = reply_text(tokenizer, result["out"][0, inputs["input_ids"].shape[1] :].tolist())
        yield [*history, {"role": "assistant", "content": reply}], transcript.html(), transcript.counter()

    with gr.Blocks(title="Multiverse") as demo:
        gr.Markdown(
            "## Multiverse: parallel paths, merged\nThe model writes its reasoning; when it forks, "
            "each path gets a column and they are decoded side by side, then merged into a conclusion."
        )
        chatbot = gr.Chatbot(label="Chat", height=220, latex_delimiters=LATEX_DELIMITERS)
        with gr.Row():
            question = gr.Textbox(placeholder="Ask a question", show_label=False, scale=8, elem_id="mv-question")
            send = gr.Button("Send", variant="primary", scale=1, elem_id="mv-send")
        counter = gr.HTML("<div class='mv-counter'>tokens 0 · decode steps 0 · degree of parallelism 0.00</div>")
        live = gr.Markdown("", elem_id="mv-live", latex_delimiters=LATEX_DELIMITERS)
        for trigger in (question.submit, send.click):
            trigger(answer, [question, chatbot], [chatbot, live, counter]).then(lambda: "", None, question)
    return demo


def load(model_dir: str):
    """Model (fp32 on CPU) and tokenizer, as `multiverse serve` loads them."""
    from multiverse.serve import load as load_model

    return load_model(model_dir)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="multiverse app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help=f"a Multiverse model folder (default {DEFAULT_MODEL} if present)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="budget over all paths (default 512)")
    args = parser.parse_args(argv)
    model_dir = args.model or DEFAULT_MODEL
    if not (Path(model_dir) / "config.json").is_file():
        hint = "" if args.model else " (run `multiverse demo --out runs/demo` first, or pass --model DIR)"
        print(f"multiverse app: {model_dir} is not a model folder{hint}", file=sys.stderr)
        return 2
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("multiverse app: gradio is missing: pip install -e '.[app]'", file=sys.stderr)
        return 2
    model, tokenizer = load(model_dir)
    demo = build_demo(model, tokenizer, max_new_tokens=args.max_new_tokens)
    print(f"multiverse app: {model_dir} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    demo.queue().launch(server_name=args.host, server_port=args.port, css=CSS, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
