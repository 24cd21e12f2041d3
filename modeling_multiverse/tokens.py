"""Adding the twelve tags to a tokenizer and a model (SPEC.md §2).

Example:
    >>> tag_ids = add_multiverse_tokens(model, tokenizer)  # doctest: +SKIP
    >>> tokenizer.convert_ids_to_tokens(tag_ids["<Path>"])  # doctest: +SKIP
    '<Path>'
"""

from __future__ import annotations

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
