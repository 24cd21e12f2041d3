"""Writing the trained model as a Hub-ready folder.

The folder holds the weights (LoRA merged in, the adapter itself under `adapter/`), the remote code
(`save_pretrained` copies it: the class is registered for the auto classes), the tokenizer with the tags
and chat template, `custom_generate/` when the engine provides it, a model card, and `trainer_state.json`.

Example:
    >>> save_hub_ready(trainer, "out/smollm2-multiverse-sft", recipe="multiverse", base_model="out/smollm2-multiverse")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from peft import PeftModel

ADAPTER_DIR = "adapter"


def save_hub_ready(trainer, output_dir: str | Path, *, recipe: str, base_model: str | None, training: dict[str, Any]) -> Path:
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
        _write_custom_generate(output_dir, recipe)
        _model_card(trainer.args.hub_model_id or f"local/{output_dir.name}", base_model, recipe, training).save(
            output_dir / "README.md"
        )
    trainer.accelerator.wait_for_everyone()
    return output_dir


def _write_custom_generate(folder: Path, recipe: str) -> None:
    """The fork/merge engine as `custom_generate/`, where the engine exists (a Multiverse model only)."""
    if recipe != "multiverse" or (folder / "custom_generate").exists():
        return
    try:
        from modeling_multiverse.generation import write_custom_generate
    except ImportError:
        return
    write_custom_generate(folder)


def _model_card(repo_id: str, base_model: str | None, recipe: str, training: dict[str, Any]) -> ModelCard:
    settings = {"recipe": recipe, **training}
    try:
        from cards import render_model_card
    except ImportError:
        render_model_card = None
    if render_model_card is not None:
        return render_model_card(repo_id=repo_id, base_model=base_model, training=settings)
    data = ModelCardData(base_model=base_model, library_name="transformers", tags=["multiverse", "trl", "sft"])
    rows = "\n".join(f"| {k} | {v} |" for k, v in settings.items())
    body = f"# {repo_id.split('/')[-1]}\n\nSFT of `{base_model or 'a base model'}` with the `{recipe}` recipe (TRL).\n\n| setting | value |\n|---|---|\n{rows}\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
