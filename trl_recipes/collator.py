"""Collating prepared rows: right padding and the core's per-token arrays stacked into a batch.

The collator ships the O(D x S) sibling intervals, not a mask: `MultiverseSFTTrainer` turns them into a
dense additive mask or a flex `BlockMask` on the training device. Batches without any forbidden interval
(autoregressive rows, unpacked) carry only the 2D padding mask, so attention stays on the plain causal path.

Example:
    >>> collator = MultiverseDataCollator(pad_token_id=tokenizer.pad_token_id)  # doctest: +SKIP
    >>> sorted(collator([prepared[0], prepared[1]]))  # doctest: +SKIP
    ['attention_mask', 'forbid_hi', 'forbid_lo', 'input_ids', 'labels', 'position_ids']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from modeling_multiverse import TokenStructure, stack


@dataclass
class MultiverseDataCollator:
    """Pads prepared rows (see `prepare_dataset`) to the longest one, or up to a multiple of `pad_to_multiple_of`."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(f["input_ids"]) for f in features]
        length = max(lengths)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(features)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), -100, dtype=torch.long)
        attention_mask = torch.zeros(batch, length, dtype=torch.long)
        structures = []
        for b, (f, n) in enumerate(zip(features, lengths)):
            input_ids[b, :n] = torch.as_tensor(f["input_ids"])
            labels[b, :n] = torch.as_tensor(f["labels"])
            attention_mask[b, :n] = 1
            structures.append(
                TokenStructure(
                    torch.as_tensor(f["position_ids"]), torch.as_tensor(f["forbid_lo"]), torch.as_tensor(f["forbid_hi"])
                )
            )
        position_ids, forbid_lo, forbid_hi = stack(structures, [0] * batch, length)
        out = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "position_ids": position_ids}
        if bool((forbid_hi > forbid_lo).any()):
            out["forbid_lo"], out["forbid_hi"] = forbid_lo, forbid_hi
        return out
