"""What logits processors and stopping criteria see: one fixed row per sequence, as in transformers.

transformers calls processors and stopping criteria with `input_ids` of shape `[batch x num_return_sequences,
length]`, row i always sequence i, and criteria may keep per-row state (an evaluation harness's multi-token
stop criterion keeps a `done` flag per row and slices `input_ids[:, prompt_width:]`). The engine decides
several branches of one sequence in the same step, so it calls them once per *round*: round r holds the r-th
deciding branch of every sequence, and each call gets exactly one row per sequence, in batch order:

    row i = the prompt of sequence i as given (its padding included, `prompt_width` wide)
            + pad tokens (rows shorter than the widest of the call)
            + the response as the deciding branch sees it: the canonical text before its block, its own
              path so far (for a processor: up to the token to choose; for a criterion: ending with the
              token it just sampled).

A sequence with nothing to decide in a round (finished, waiting, or fewer deciding branches) shows the
row it showed last, and its result is ignored. So `input_ids[:, prompt_width:]` is every row's response so
far, right-aligned: each row ends with its latest token. The root's view is the canonical response itself;
a path's view skips its earlier sibling paths, which it cannot see either (SPEC.md §4).

    >>> view = CriteriaView(torch.tensor([[0, 5, 6], [7, 8, 9]]), pad_id=0)
    >>> view.rows({1: [4]}).tolist()
    [[0, 5, 6, 0], [7, 8, 9, 4]]
"""

from __future__ import annotations

import torch


class CriteriaView:
    """The `[batch, prompt_width + response width]` rows handed to processors and stopping criteria."""

    def __init__(self, prompt_ids: torch.Tensor, pad_id: int):
        self.prompt_ids = prompt_ids.detach().cpu()  # [B, prompt_width], as given to generate()
        self.pad_id = pad_id
        self.shown: list[list[int]] = [[] for _ in range(prompt_ids.shape[0])]  # response part last shown per row

    def rows(self, deciding: dict[int, list[int]]) -> torch.LongTensor:
        """All rows, `deciding` (batch row -> response tokens) replacing what those rows show (on the CPU)."""
        for row, response in deciding.items():
            self.shown[row] = response
        width = max(len(response) for response in self.shown)
        responses = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in self.shown], dtype=torch.long)
        return torch.cat([self.prompt_ids, responses.view(len(self.shown), width)], 1)


def rounds(rows: list[int]) -> list[list[int]]:
    """Split deciding branches (given by their batch rows, in decision order) into rounds with one row each.

    >>> rounds([0, 0, 1, 2, 2, 2])
    [[0, 2, 3], [1, 4], [5]]
    """
    out: list[list[int]] = []
    seen: dict[int, int] = {}
    for i, row in enumerate(rows):
        r = seen.get(row, 0)
        seen[row] = r + 1
        if r == len(out):
            out.append([])
        out[r].append(i)
    return out
