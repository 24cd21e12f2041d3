"""MultiverseSFTTrainer: TRL's SFTTrainer on prepared rows, with Multiverse Attention built on the device.

TRL's fused LM head calls the backbone directly, bypassing `MultiverseForCausalLM.forward` (which would derive
the mask from the ids), so the mask is built at the backbone from the collated intervals and passed explicitly:
an additive `[B, 1, S, S]` mask for sdpa/eager (the reference), a flex `BlockMask` for `flex_attention`
(O(S) memory beyond its block table).

Example:
    >>> trainer = MultiverseSFTTrainer(  # doctest: +SKIP
    ...     model=model, args=config, train_dataset=prepared, processing_class=tokenizer
    ... )
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

from trl import SFTConfig, SFTTrainer

from modeling_multiverse import mask_for

from .collator import MultiverseDataCollator


class MultiverseSFTTrainer(SFTTrainer):
    """`SFTTrainer` for datasets from `prepare_dataset`: TRL's own preparation is skipped, the collator is
    `MultiverseDataCollator`, and each batch's sibling intervals become the attention mask.

    `args` must keep the structure: `MultiverseSFTConfig`'s defaults do; a setting that would lose it is refused.
    """

    def __init__(self, *args, data_collator=None, processing_class=None, **kwargs):
        config = kwargs["args"]
        check_config(config)
        if data_collator is None:
            pad_to = config.pad_to_multiple_of if isinstance(config.pad_to_multiple_of, int) else None
            data_collator = MultiverseDataCollator(processing_class.pad_token_id, pad_to)
        super().__init__(*args, data_collator=data_collator, processing_class=processing_class, **kwargs)

        backbone = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        backbone.base_model.register_forward_pre_hook(_apply_multiverse_attention, with_kwargs=True)


def check_config(config: SFTConfig) -> None:
    """Refuse an SFTConfig under which the trainer would lose the Multiverse structure of the rows."""
    if config.remove_unused_columns:
        raise ValueError(
            "remove_unused_columns=True would drop the structure columns (position_ids, forbid_lo, forbid_hi) "
            "before the collator: set it to False (MultiverseSFTConfig's default)"
        )
    if not (config.dataset_kwargs or {}).get("skip_prepare_dataset"):
        raise ValueError(
            "rows come from prepare_dataset, which TRL's preparation would redo without the structure: set "
            "dataset_kwargs={'skip_prepare_dataset': True} (MultiverseSFTConfig's default)"
        )
    if config.packing or config.padding_free:
        raise ValueError(
            "TRL's packing / padding_free flatten a batch into one padding-free row, which loses the structure: "
            "pack with prepare_dataset(packing=True) (`multiverse train --pack_examples`) and leave both False"
        )


def _apply_multiverse_attention(backbone, args, kwargs):
    """Forward pre-hook on the backbone: replace the 2D padding mask by the mask of the batch's intervals.

    A hook rather than a `compute_loss` override because the intervals travel with the batch through every
    wrapper (DDP, PEFT, TRL's fused head) down to here, while the 2D mask stays in the batch for TRL's token
    count, which calls `attention_mask.sum()` (meaningless on a 4D mask, impossible on a `BlockMask`).
    """
    if "forbid_lo" not in kwargs:
        return None
    lo, hi = kwargs.pop("forbid_lo"), kwargs.pop("forbid_hi")
    kwargs["attention_mask"] = mask_for(lo, hi, backbone.config._attn_implementation, backbone.dtype)
    return args, kwargs
