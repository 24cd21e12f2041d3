"""Adding the twelve tags to a tokenizer and a model (SPEC 2).

Also the rule for prompts: what a user writes is text, never structure (`encode_chat`).

Example:
    >>> tag_ids = add_multiverse_tokens(model, tokenizer)  # doctest: +SKIP
    >>> tokenizer.convert_ids_to_tokens(tag_ids["<Path>"])  # doctest: +SKIP
    '<Path>'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from transformers import AddedToken

from .structure import TAGS, tag_ids_from_tokenizer


def _name_piece_ids(tokenizer, tag: str) -> list[int]:
    """Token ids of the tag's name without brackets, e.g. "Parallel" or "/Parallel"."""
    return tokenizer(tag.strip("<>"), add_special_tokens=False)["input_ids"]


def add_tag_tokens(tokenizer) -> dict[str, int]:
    """Add the twelve tags to a tokenizer as single special tokens (no-op where present); returns `{tag: id}`."""
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [AddedToken(t, special=True, normalized=False) for t in TAGS]},
        replace_extra_special_tokens=False,
    )
    return tag_ids_from_tokenizer(tokenizer)


def add_multiverse_tokens(model, tokenizer) -> dict[str, int]:
    """Add the tags as special tokens and initialise their embeddings; returns `{tag: id}`.

    New rows of the input (and, if untied, output) embeddings start as the mean of the embeddings
    of the word pieces of the tag's name. Tags the tokenizer already has (all twelve, for instance, in
    the published Multiverse-32B) keep their ids and embeddings. The ids are stored
    in `model.config.tag_token_ids` when the model has that field.
    """
    new_tags = [tag for tag in TAGS if tag not in tokenizer.get_vocab()]
    # pieces are read before the tags exist, so "/Path" is not split around a new `</Path>` token
    pieces = {tag: _name_piece_ids(tokenizer, tag) for tag in new_tags}
    tag_ids = add_tag_tokens(tokenizer)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if new_tags:
        with torch.no_grad():
            tables = [model.get_input_embeddings().weight]
            output = model.get_output_embeddings()
            if output is not None and output.weight.data_ptr() != tables[0].data_ptr():
                tables.append(output.weight)
            for table in tables:
                for tag, ids in pieces.items():
                    table[tag_ids[tag]] = table[ids].mean(0)
    if hasattr(model.config, "tag_token_ids"):
        model.config.tag_token_ids = dict(tag_ids)
    return dict(tag_ids)


# Roles whose content a person wrote: tokenized as text. An assistant turn is model output, where tags are structure.
TEXT_ROLES = ("system", "user", "tool")
_MARK = "\ue000{}\ue001"  # private-use characters around a message index: never in a chat template's own markup
_MARK_SPLIT = re.compile("\ue000(\\d+)\ue001")


def encode_chat(tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` rendered with the tokenizer's chat template, where what a person wrote is text.

    A tag or other special-token string inside a user's message ("What does <Parallel> mean?") becomes the
    ids of its characters, never the control token: only the template's own markup and assistant turns keep
    special tokens. Prompts without such strings get exactly the ids of tokenizing the rendered text.

    >>> ids = encode_chat(tokenizer, [{"role": "user", "content": "What is <Path>?"}])  # doctest: +SKIP
    >>> tag_ids["<Path>"] in ids  # doctest: +SKIP
    False
    """
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
