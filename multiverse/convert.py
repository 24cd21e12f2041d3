"""`multiverse convert --base BASE --out DIR`: turn a Qwen2- or Llama-family model into a Multiverse model folder.

BASE is `smollm2` (the embedded default), a local Hugging Face model folder, or a `.gguf` file. DIR is
Hub-ready: safetensors weights, the tokenizer with the tags and its chat template, a config with
`auto_map`, the modeling code, `custom_generate/`, the specification `SPEC.md` and a card that links it.
The folder is written to a temporary sibling and renamed into place, so a failed conversion leaves
nothing half-written.

Example:
    $ multiverse convert --base smollm2 --out out/smollm2-multiverse
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from runtime.arguments import OneLineParser

from .embedded import EMBEDDED_ID, EMBEDDED_NAME, smollm2_gguf

# Fields of a loaded base config that describe how it was loaded, not the architecture.
_LOADING_FIELDS = ("quantization_config", "_name_or_path", "architectures", "transformers_version", "dtype")


def _resolve_base(base: str) -> tuple[str, dict, str]:
    """(path for from_pretrained, extra kwargs, name for the card) of BASE."""
    if base == EMBEDDED_NAME:
        folder, filename = smollm2_gguf()
        return folder, {"gguf_file": filename}, EMBEDDED_ID
    path = Path(base)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"--base {base}: no such GGUF file")
        return str(path.parent), {"gguf_file": path.name}, path.stem
    if not path.exists():
        raise FileNotFoundError(
            f"--base {base}: no such folder (expected `{EMBEDDED_NAME}`, a .gguf file, or a model folder)"
        )
    from runtime.paths import model_config

    model_config(path, "--base")  # a model folder with a config and a tokenizer
    return str(path), {}, path.name


def _check_family(model_type: str, base: str) -> None:
    from modeling_multiverse import SUPPORTED_BASES

    if model_type not in SUPPORTED_BASES and model_type != "multiverse":
        raise ValueError(
            f"--base {base}: unsupported architecture {model_type!r}; Multiverse supports the "
            f"{' and '.join(SUPPORTED_BASES)} families (Qwen2/Qwen2.5, Llama/SmolLM2)"
        )


def _check_out(out: Path, base: str, overwrite: bool) -> None:
    """Refuse an --out that would destroy what we did not write: the base itself, a file, a folder that is no model."""
    from runtime.paths import same_path

    if same_path(out, base) or (base.endswith(".gguf") and same_path(out, Path(base).parent)):
        raise ValueError(f"--out {out} is the base model's own folder; write the Multiverse model to another folder")
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.is_dir():
        raise NotADirectoryError(
            f"--out {out}: is a file, not a model folder; --overwrite replaces only a model folder"
        )
    if any(out.iterdir()) and not (out / "config.json").is_file():
        raise ValueError(
            f"--out {out} is not a model folder (no config.json); --overwrite replaces only a model folder"
        )


def convert(base: str, out: str | Path, *, overwrite: bool = False, repo_id: str | None = None) -> Path:
    """Convert BASE into a Multiverse model folder at `out`; returns the folder.

    >>> convert("smollm2", "out/smollm2-multiverse")  # doctest: +SKIP
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from modeling_multiverse import MultiverseConfig, MultiverseForCausalLM, add_multiverse_tokens

    out = Path(out)
    _check_out(out, base, overwrite)
    path, kwargs, base_name = _resolve_base(base)
    base_config = AutoConfig.from_pretrained(path, **kwargs)
    _check_family(base_config.model_type, base)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.chat_template is None:
        raise ValueError(f"--base {base}: the tokenizer has no chat template; Multiverse prompts need one")
    base_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    if base_config.model_type == "multiverse":
        text_config = base_model.config.text_config.to_dict()
    else:
        text_config = base_model.config.to_dict()
    for key in _LOADING_FIELDS:
        text_config.pop(key, None)
    config = MultiverseConfig(text_config=text_config)
    # A GGUF- or plain-loaded model is rebuilt as our class: same parameter names, fresh module tree.
    model = MultiverseForCausalLM(config)
    missing, unexpected = model.load_state_dict(base_model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"--base {base}: weights do not match: missing {missing}, unexpected {unexpected}")
    del base_model
    model.tie_weights()
    add_multiverse_tokens(model, tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    previous = None
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_extras(staging, base_name, repo_id or f"your-name/{out.name}")
        staging.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared
        for file in staging.rglob("*"):
            file.chmod(0o755 if file.is_dir() else 0o644)
        if out.exists():  # a model folder (_check_out): moved aside, then removed once the new one is in place
            previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(previous / out.name)
        staging.rename(out)
        if previous is not None:
            shutil.rmtree(previous)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if previous is not None and not out.exists():
            (previous / out.name).rename(out)
            previous.rmdir()
        raise
    return out


def _write_extras(folder: Path, base_name: str, repo_id: str) -> None:
    """The model card and the conversion record (`save_pretrained` wrote the rest, `custom_generate/` too)."""
    from cards import render_model_card

    card = render_model_card(
        repo_id=repo_id,
        base_model=base_name,
        summary=f"{base_name} converted to a Multiverse model: the tags added, Multiverse Attention and the "
        "fork/merge engine attached, the weights unchanged. It has not been trained on Multiverse data yet, "
        "so it still answers sequentially.",
    )
    card.save(folder / "README.md")
    (folder / "multiverse_conversion.json").write_text(json.dumps({"base_model": base_name}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="multiverse convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="`smollm2`, a Qwen2/Llama model folder, or a .gguf file")
    parser.add_argument("--out", required=True, help="output folder (Hub-ready)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--repo-id", default=None, help="Hub id named in the model card (owner/name)")
    args = parser.parse_args(argv)
    folder = convert(args.base, args.out, overwrite=args.overwrite, repo_id=args.repo_id)
    print(f"wrote {folder}")
    return 0
