"""The one prompt builder: every prompt a model sees, in training data, eval, generate, serve, the app and GRPO.

A prompt is the user turn (the question, the answer-format hint of its kind, and PARALLEL_INSTRUCTION last,
SPEC.md §2), rendered with the tokenizer's chat template (bare text for a tokenizer without one), where what a
person wrote is text, never structure: a `<Path>` typed in a question is the ids of its characters.
`multiverse serve` encodes a client's messages as they are with `encode_chat` (the client writes the turn).

Example:
    >>> user_turn("What is 2 + 3?", "math")
    'What is 2 + 3? Put your final answer within \\\\boxed{}. Think step by step and in parallel before answering.'
    >>> ids = prompt_ids(tokenizer, "What is 2 + 3?", "math")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PARALLEL_INSTRUCTION = "Think step by step and in parallel before answering."
"""The sentence that ends a user turn asking for parallel thinking (SPEC.md §2)."""

ANSWER_HINTS: dict[str, str] = {
    "math": "Put your final answer within \\boxed{}.",
    "aime": "Put your final answer, an integer from 0 to 999, within \\boxed{}.",
    "builtin": "",  # the built-in questions carry their own instructions
    "choice": "Put the letter of your final answer within \\boxed{}.",
}
"""What each answer kind asks for after the question, so that the answer can be found and graded."""

# Roles whose content a person wrote: tokenized as text. An assistant turn is model output, where tags are structure.
TEXT_ROLES = ("system", "user", "tool")
_MARK = "\ue000{}\ue001"  # private-use characters around a message index: never in a chat template's own markup
_MARK_SPLIT = re.compile("\ue000(\\d+)\ue001")


def parallel_user_turn(question: str, hint: str = "") -> str:
    """The user turn that asks for parallel thinking (SPEC.md §2): the question, an optional answer-format hint,
    then PARALLEL_INSTRUCTION, joined by spaces.

    >>> parallel_user_turn(" What is 2 + 3? ", "Answer with a number.")
    'What is 2 + 3? Answer with a number. Think step by step and in parallel before answering.'
    """
    return " ".join(part for part in (question.strip(), hint.strip(), PARALLEL_INSTRUCTION) if part)


def user_turn(question: str, kind: str | None = None, *, parallel: bool = True) -> str:
    """The user turn of a question: the question, the answer-format hint of `kind` (see ANSWER_HINTS; none for
    None) and, when `parallel`, PARALLEL_INSTRUCTION last.

    >>> user_turn("2 + 3?", "aime", parallel=False)
    '2 + 3? Put your final answer, an integer from 0 to 999, within \\\\boxed{}.'
    """
    if kind is not None and kind not in ANSWER_HINTS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(ANSWER_HINTS)}")
    hint = ANSWER_HINTS[kind] if kind is not None else ""
    if parallel:
        return parallel_user_turn(question, hint)
    return " ".join(part for part in (question.strip(), hint) if part)


def encode_chat(tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` rendered with the tokenizer's chat template, where what a person wrote is text.

    A tag or other special-token string inside a user's message ("What does <Parallel> mean?") becomes the
    ids of its characters, never the control token: only the template's own markup and assistant turns keep
    special tokens. Prompts without such strings get exactly the ids of tokenizing the rendered text. A
    tokenizer without a chat template (a base model) reads each message's content on a line of its own.

    >>> ids = encode_chat(tokenizer, [{"role": "user", "content": "What is <Path>?"}])  # doctest: +SKIP
    >>> tag_ids["<Path>"] in ids  # doctest: +SKIP
    False
    """
    if not tokenizer.chat_template:
        return _encode_bare(tokenizer, messages)
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=False)
    special = [token for token in tokenizer.get_added_vocab() if token]
    written = {
        i: m["content"]
        for i, m in enumerate(messages)
        if m.get("role") in TEXT_ROLES and isinstance(m.get("content"), str) and any(t in m["content"] for t in special)
    }
    if not written:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    marked = [dict(m, content=_MARK.format(i)) if i in written else m for i, m in enumerate(messages)]
    rendered = tokenizer.apply_chat_template(marked, add_generation_prompt=add_generation_prompt, tokenize=False)
    pieces = _MARK_SPLIT.split(rendered)  # template text, message index, template text, ...
    for edit in (lambda content: content, str.strip):  # templates that `trim` the content render it stripped
        contents = {int(i): edit(written[int(i)]) for i in pieces[1::2]}
        if "".join(contents[int(p)] if k % 2 else p for k, p in enumerate(pieces)) == text:
            break
    else:
        raise ValueError("the chat template rewrites the user's message, so its tag strings cannot be kept as text")
    ids: list[int] = []
    for k, piece in enumerate(pieces):
        if k % 2:
            ids += tokenizer(contents[int(piece)], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


def _encode_bare(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Each message's content and a newline; what a person wrote is text, an assistant turn's tags structure."""
    ids: list[int] = []
    for message in messages:
        written = message.get("role") in TEXT_ROLES
        ids += tokenizer(message["content"] + "\n", add_special_tokens=False, split_special_tokens=written)["input_ids"]
    return ids


def prompt_ids(tokenizer, question: str, kind: str | None = None, *, parallel: bool = True) -> list[int]:
    """Token ids of the prompt that asks `question`: its `user_turn`, as the one user message of `encode_chat`.

    >>> ids = prompt_ids(tokenizer, "What does <Parallel> mean?")  # doctest: +SKIP
    >>> tokenizer.decode(ids)[:40]  # doctest: +SKIP
    '<|user|>\\nWhat does <Parallel> mean? Think'
    """
    return encode_chat(tokenizer, [{"role": "user", "content": user_turn(question, kind, parallel=parallel)}])
