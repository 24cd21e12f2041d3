"""Writing the trained model as a Hub-ready folder.

The folder holds the weights (LoRA merged in, the adapter itself under `adapter/`), the remote code
(`save_pretrained` copies it: the class is registered for the auto classes), the tokenizer with the tags
and chat template, the engine as `custom_generate/` and the spec as `SPEC.md` (a Multiverse model's
`save_pretrained` writes both), a model card, and `trainer_state.json`.

The autoregressive baseline's folder holds its base family's own class instead (`trl_recipes/plain.py`: no
remote code, no engine, no spec), with or without LoRA, and the baseline's card (`cards/baseline_card.md`).

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
from modeling_multiverse import MultiverseForCausalLM
from modeling_multiverse.modeling_multiverse import SPEC_FILE

from .plain import save_plain_baseline

ADAPTER_DIR = "adapter"


def save_hub_ready(
    trainer, output_dir: str | Path, *, recipe: str, base_model: str | None, training: dict[str, Any]
) -> Path:
    """Save `trainer`'s model into `output_dir` as a Hub-ready folder; returns the folder.

    With a PEFT model the adapter goes to `output_dir/adapter` and the merged model to `output_dir`
    (not under FSDP, where merging would need the full weights on one process: the adapter alone is saved).
    The top folder is what a TRL/PEFT user publishes and serves: merged weights that load without PEFT. For the
    autoregressive recipe it is the plain base class (`save_plain_baseline`), LoRA-trained or not; the adapter
    stays a by-product for PEFT users, on the base it was trained on (`adapter_config.json` names it: the
    converted folder, whose embeddings have the tag rows the adapter expects).
    """
    output_dir = Path(output_dir)
    trainer.save_state()
    model = trainer.model
    main_process = trainer.accelerator.is_main_process
    if isinstance(model, PeftModel):
        trainer.save_model(str(output_dir / ADAPTER_DIR))
        if trainer.is_fsdp_enabled:
            return output_dir
        if main_process:
            model = model.merge_and_unload()
            trainer.processing_class.save_pretrained(output_dir)
            if not _is_baseline(model, recipe):  # the baseline's weights are written once, below, as the plain class
                model.save_pretrained(output_dir)
    else:
        trainer.save_model(str(output_dir))
    if main_process:
        baseline = _is_baseline(model, recipe)
        if baseline:
            save_plain_baseline(model, output_dir)  # the base's own class: stock servers load it (issue 27)
        repo_id = trainer.args.hub_model_id or f"local/{output_dir.name}"
        spec = SPEC_FILE if (output_dir / SPEC_FILE).is_file() else None  # a plain causal LM's save has no spec
        training = {"recipe": recipe, **training}
        kind = "baseline" if recipe == "autoregressive" else "multiverse"
        card = render_model_card(repo_id=repo_id, base_model=base_model, training=training, spec=spec, kind=kind)
        card.save(output_dir / "README.md")
    trainer.accelerator.wait_for_everyone()
    return output_dir


def _is_baseline(model, recipe: str) -> bool:
    """Whether `model` (unwrapped from PEFT) is an autoregressive baseline to save as its base's own class."""
    return recipe == "autoregressive" and isinstance(model, MultiverseForCausalLM)
