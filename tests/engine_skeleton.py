"""Forcing a Multiverse skeleton through any engine with a plain `LogitsProcessor` (tests and benchmarks).

A *template* is the canonical token sequence of a response in which some tokens are `FREE`. The
processor finds where each row (a branch's own view: prompt, then its tokens in logical order; the
engine's padding between the two skipped) is in the template, forces the template token there, or at a
`FREE` slot leaves the model free among non-tag, non-eos tokens. Because a branch's view skips its
earlier siblings, the lookup jumps to the path whose seed the view carries.

    >>> template = skeleton_template(tok, [3, block(["1", "2"], [[4], [6]])])  # doctest: +SKIP
    >>> model.generate(ids, logits_processor=LogitsProcessorList([SkeletonProcessor(template, tok)]))  # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor

from modeling_multiverse.structure import (
    CONCLUSION,
    CONCLUSION_END,
    CONCLUSION_SEED,
    GOAL,
    GOAL_END,
    OUTLINE,
    OUTLINE_END,
    PARALLEL,
    PARALLEL_END,
    PATH,
    PATH_END,
    TAGS,
    THINK,
    THINK_END,
    path_seed,
    split_tags,
    tag_ids_from_tokenizer,
    tag_kind,
)

FREE = -1


@dataclass
class Template:
    ids: list[int] = field(default_factory=list)  # FREE where the model chooses
    # (first unit, [(unit start, seed)])
    blocks: list[tuple[int, list[tuple[int, list[int]]]]] = field(default_factory=list)


def block(labels: list[str], paths: list[list], outline: int = 2, conclusion: int = 3) -> dict:
    """A block spec: one outline (with `outline` free tokens) and one path body per label."""
    return {"labels": labels, "paths": paths, "outline": outline, "conclusion": conclusion}


def skeleton_template(tokenizer, body: list, answer: int = 2) -> Template:
    """`<Think>` + body + `</Think>` + `answer` free tokens. Body items: int (free tokens), str (forced), block()."""
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    out = Template()

    def emit(items: list) -> None:
        for item in items:
            if isinstance(item, int):
                out.ids.extend([FREE] * item)
            elif isinstance(item, str):
                out.ids.extend(enc(item))
            else:
                out.ids.extend(enc(f"{TAGS[PARALLEL]}\n{TAGS[GOAL]}"))
                for label in item["labels"]:
                    out.ids.extend(
                        enc(f"\n{TAGS[OUTLINE]}{label}:") + [FREE] * item["outline"] + enc(TAGS[OUTLINE_END])
                    )
                out.ids.extend(enc(f"\n{TAGS[GOAL_END]}"))
                units = []
                out.blocks.append((len(out.ids), units))
                for label, path in zip(item["labels"], item["paths"]):
                    seed = enc(path_seed(label))
                    units.append((len(out.ids), seed))
                    out.ids.extend(seed)
                    emit(path)
                    out.ids.extend(enc(TAGS[PATH_END]))
                out.ids.extend(enc(CONCLUSION_SEED) + [FREE] * item["conclusion"])
                out.ids.extend(enc(f"{TAGS[CONCLUSION_END]}\n{TAGS[PARALLEL_END]}"))

    out.ids.extend(enc(f"{TAGS[THINK]}\n"))
    emit(body)
    out.ids.extend(enc(f"\n{TAGS[THINK_END]}\n") + [FREE] * answer)
    out.blocks.sort()
    return out


def replay_template(tokenizer, response: str) -> Template:
    """A fully forced template of a written response, tokenized the way the engine forces seeds."""
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    out = Template()
    stack: list[list] = []
    previous = None
    for piece in split_tags(response):
        kind = tag_kind(piece)
        if kind == PATH:
            units = stack[-1]
            # the separator before <Path> belongs to the path unit: it was emitted as text just before
            sep = len(enc("\n"))
            start = len(out.ids) - sep
            units.append((start, None))
        if kind >= 0:
            out.ids.extend(enc(piece))
            if kind == PARALLEL:
                stack.append([])
            elif kind == GOAL_END:
                out.blocks.append((None, stack[-1]))
            elif kind == PARALLEL_END:
                stack.pop()
            previous = kind
            continue
        if previous == PATH:  # "\nLABEL:" is forced with the seed; tokenize it on its own
            match = re.match(r"\n[^:\n]*:", piece)
            head = match.group(0) if match else ""
            out.ids.extend(enc(head))
            units = stack[-1]
            start, _ = units[-1]
            units[-1] = (start, out.ids[start:])
            piece = piece[len(head):]
        elif previous == CONCLUSION and piece.startswith("\n"):
            out.ids.extend(enc("\n"))
            piece = piece[1:]
        if piece:
            out.ids.extend(enc(piece))
        previous = None
    out.blocks = sorted((units[0][0], units) for _, units in out.blocks if units)
    return out


class SkeletonProcessor(LogitsProcessor):
    """Forces `template` on every row; FREE slots keep the model's scores minus tags and eos."""

    def __init__(self, template: Template, tokenizer, eos_token_id: int | None = None):
        self.template = template
        self.tag_ids = tag_ids_from_tokenizer(tokenizer)
        self.think = self.tag_ids[TAGS[THINK]]
        self.eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self.banned = torch.tensor(sorted(self.tag_ids.values()) + [self.eos])
        self.pad = tokenizer.pad_token_id  # the engine's rows may hold padding between prompt and response

    def locate(self, view: list[int]) -> int:
        """Index in the template of the token that follows `view` (the response part of a branch's view)."""
        t = i = 0
        for first, units in self.template.blocks:
            if first < t:
                continue
            if len(view) - i <= first - t:
                break
            i += first - t
            t = first
            for start, seed in units:
                if view[i : i + len(seed)] == seed:
                    t = start
                    break
        return t + len(view) - i

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for row, ids in enumerate(input_ids.tolist()):
            where = [j for j, token in enumerate(ids) if token == self.think]
            at = self.locate([t for t in ids[where[-1] :] if t != self.pad]) if where else 0
            target = self.template.ids[at] if at < len(self.template.ids) else self.eos
            if target == FREE:
                scores[row, self.banned.to(scores.device)] = -float("inf")
            else:
                scores[row] = -float("inf")
                scores[row, target] = 0.0
        return scores
