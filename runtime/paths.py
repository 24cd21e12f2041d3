"""Checks of the paths a user names: a local folder or a Hub id, a Multiverse model or not, inputs apart from outputs.

The CLI, the curator and the recipes check their arguments here before loading or writing anything, so a
missing folder reads "no such folder" (not a Hub repo id error) and a refusing command changes no file.
Not part of the remote code: the modeling files do not import it.

Example:
    >>> config = multiverse_config("out/smollm2-multiverse", "--model")  # doctest: +SKIP
    >>> config["model_type"]  # doctest: +SKIP
    'multiverse'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def is_local(name: str | os.PathLike, flag: str) -> bool:
    """True for an existing local folder, False for a Hub repo id; FileNotFoundError for a path that is neither.

    A name that is not a valid repo id (`./x`, `/abs/x`, `a/b/c`, `~/x`, `x/`) can only be a folder.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = str(name)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{flag} {text}: is a file, expected a model folder")
        return True
    if text.startswith((".", "/", "~")) or text.endswith(("/", os.sep)):
        raise FileNotFoundError(f"{flag} {text}: no such folder")
    try:
        validate_repo_id(text)
    except HFValidationError:
        raise FileNotFoundError(f"{flag} {text}: no such folder") from None
    return False


def model_config(name: str | os.PathLike, flag: str) -> dict:
    """The config of a model folder or Hub id as a dict.

    Checks first that a local folder is a model with a tokenizer."""
    if not is_local(name, flag):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(name)).to_dict()
        except OSError as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise OSError(f"{flag} {name}: no such folder, and the Hub did not provide it ({reason})") from None
    folder = Path(name).expanduser()
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{flag} {name}: not a model folder (no config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{config_path}: no model_type: not a transformers model config")
    if not isinstance(config.get("text_config") or {}, dict):
        raise ValueError(f"{config_path}: text_config is {config['text_config']!r}, expected an object")
    if not any((folder / file).is_file() for file in TOKENIZER_FILES):
        raise FileNotFoundError(f"{flag} {name}: the folder has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])})")
    check_weights(folder)
    return config


def check_weights(folder: str | os.PathLike) -> None:
    """Refuse a folder whose `.safetensors` files cannot load (cut short, or not safetensors), naming the file.

    Reads each file's header only (safetensors checks that the tensors it lists fit in the file), so it costs
    milliseconds where loading would fail with a `SafetensorError` that names no file.

    >>> check_weights("runs/demo/multiverse-model")  # doctest: +SKIP
    """
    from safetensors import SafetensorError, safe_open

    for path in sorted(Path(folder).expanduser().glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except SafetensorError as err:
            raise ValueError(
                f"{path}: not a whole safetensors file, cut short or damaged ({err}); save or download it again"
            ) from None


def multiverse_config(name: str | os.PathLike, flag: str) -> dict:
    """`model_config`, refusing a model that is not a Multiverse model (it has to be converted first)."""
    config = model_config(name, flag)
    if config["model_type"] != "multiverse":
        raise ValueError(
            f"{flag} {name} is a plain {config['model_type']!r} model, not a Multiverse model: convert it first with "
            f"`multiverse convert --base {name} --out DIR` and use DIR"
        )
    tag_ids = config.get("tag_token_ids")
    if tag_ids is not None:
        from modeling_multiverse.structure import TAGS

        missing = [tag for tag in TAGS if not isinstance(tag_ids, dict) or not isinstance(tag_ids.get(tag), int)]
        if missing:
            where = Path(name).expanduser() / "config.json" if is_local(name, flag) else f"{flag} {name}"
            raise ValueError(f"{where}: tag_token_ids has no token id for {', '.join(missing)}")
    return config


def context_length(config: dict) -> int | None:
    """The longest sequence a model's positions cover (`max_position_embeddings`), if its config says."""
    text_config = config.get("text_config") or config
    value = text_config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file or folder (links and relative spellings included)."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temporary sibling and rename it into place: readers never see a half-written file."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
