"""Writing the trained model as a Hub-ready folder.

The folder holds the weights (LoRA merged in, the adapter itself under `adapter/`), the remote code
(`save_pretrained` copies it: the class is registered for the auto classes), the tokenizer with the tags
and chat template, the engine as `custom_generate/` and the spec as `SPEC.md` (a Multiverse model's
`save_pretrained` writes both), a model card, and `trainer_state.json`.

Example:
    >>> save_hub_ready(  # doctest: +SKIP
    ...     trainer, "out/smollm2-multiverse-sft", recipe="multiverse", base_model="out/smollm2-multiverse"
    ... )
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import PeftModel

from cards import render_model_card
from modeling_multiverse.modeling_multiverse import SPEC_FILE

ADAPTER_DIR = "adapter"


def save_hub_ready(
    trainer, output_dir: str | Path, *, recipe: str, base_model: str | None, training: dict[str, Any]
) -> Path:
    """Save `trainer`'s model into `output_dir` as a Hub-ready folder; returns the folder.

    With a PEFT model the adapter goes to `output_dir/adapter` and the merged model to `output_dir`
    (not under FSDP, where merging would need the full weights on one process: the adapter alone is saved).
    """
    output_dir = Path(output_dir)
    trainer.save_state()
    model = trainer.model
    if isinstance(model, PeftModel):
        trainer.save_model(str(output_dir / ADAPTER_DIR))
        if trainer.is_fsdp_enabled:
            return output_dir
        if trainer.accelerator.is_main_process:
            merged = model.merge_and_unload()
            merged.save_pretrained(output_dir)
            trainer.processing_class.save_pretrained(output_dir)
    else:
        trainer.save_model(str(output_dir))
    if trainer.accelerator.is_main_process:
        repo_id = trainer.args.hub_model_id or f"local/{output_dir.name}"
        spec = SPEC_FILE if (output_dir / SPEC_FILE).is_file() else None  # a plain causal LM's save has no spec
        training = {"recipe": recipe, **training}
        card = render_model_card(repo_id=repo_id, base_model=base_model, training=training, spec=spec)
        card.save(output_dir / "README.md")
    trainer.accelerator.wait_for_everyone()
    return output_dir
