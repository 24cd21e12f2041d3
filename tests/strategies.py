"""Hypothesis strategies for random Multiverse responses: nested blocks, uneven paths, varied separators.

`responses()` draws valid response text (SPEC.md §3); `response_prefixes()` draws a response cut at a
random token, i.e. a truncated sequence. `tokens_of(text)` splits text into the tokens of the tiny
tokenizer of tests/tiny.py (one per character, one per tag); `kinds_of(text)` gives their kinds.
"""

from __future__ import annotations

import re

from hypothesis import strategies as st
from reference import KIND, TAG_NAMES, TEXT

_TAG = re.compile("(" + "|".join(re.escape(t) for t in TAG_NAMES) + ")")

words = st.text(alphabet="abxyz 12.+=\n", min_size=0, max_size=6)
separators = st.sampled_from(["", "\n", "\n\n", " \n "])


def tokens_of(text: str) -> list[str]:
    """The tiny tokenizer's tokens: every tag is one token, every other character is one token."""
    out: list[str] = []
    for piece in _TAG.split(text):
        out += [piece] if piece in KIND else list(piece)
    return out


def kinds_of(text: str) -> list[int]:
    return [KIND.get(token, TEXT) for token in tokens_of(text)]


@st.composite
def bodies(draw, depth: int, label_prefix: str, max_depth: int, max_paths: int) -> str:
    """A body: text runs and parallel blocks, blocks nested up to `max_depth`."""
    pieces = []
    for _ in range(draw(st.integers(0, 3))):
        if depth < max_depth and draw(st.integers(0, 2)) == 0:
            pieces.append(draw(blocks(depth, label_prefix, max_depth, max_paths)))
        else:
            pieces.append(draw(words))
    return "".join(pieces)


@st.composite
def blocks(draw, depth: int, label_prefix: str, max_depth: int, max_paths: int) -> str:
    """`<Parallel>` goal, n path units (bodies may nest blocks), conclusion `</Parallel>`."""
    n = draw(st.integers(1, max_paths))
    labels = [f"{label_prefix}{k + 1}" for k in range(n)]
    goal = "".join(f"{draw(separators)}<Outline>{label}: {draw(words)}</Outline>" for label in labels)
    units = "".join(
        f"{draw(separators)}<Path>\n{label}:{draw(bodies(depth + 1, label + '.', max_depth, max_paths))}</Path>"
        for label in labels
    )
    return (
        f"<Parallel>{draw(separators)}<Goal>{goal}{draw(separators)}</Goal>{units}"
        f"{draw(separators)}<Conclusion>\n{draw(words)}</Conclusion>{draw(separators)}</Parallel>"
    )


@st.composite
def responses(draw, max_depth: int = 2, max_paths: int = 3) -> str:
    """A complete, valid response: `<Think>` body `</Think>` answer."""
    think = draw(bodies(0, "", max_depth, max_paths))
    return f"<Think>\n{think}\n</Think>{draw(words)}"


@st.composite
def response_prefixes(draw, max_depth: int = 2, max_paths: int = 3) -> str:
    """A valid response cut after a random token (possibly whole, possibly empty)."""
    tokens = tokens_of(draw(responses(max_depth, max_paths)))
    cut = draw(st.integers(0, len(tokens)))
    return "".join(tokens[:cut])


@st.composite
def responses_with_blocks(draw, max_depth: int = 2, max_paths: int = 3) -> str:
    """A valid response with at least one parallel block."""
    text = draw(responses(max_depth, max_paths))
    if "<Parallel>" not in text:
        text = text.replace("<Think>\n", "<Think>\n" + draw(blocks(0, "", max_depth, max_paths)), 1)
    return text
