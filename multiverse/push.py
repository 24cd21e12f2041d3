"""`multiverse push DIR --repo-id ID`: check a model or dataset folder, then upload it to the Hugging Face Hub.

The folder is checked before anything touches the network: a model needs `config.json` (or a PEFT
`adapter_config.json`), weights, the Python files its `auto_map` names, and a README.md whose YAML
metadata parses as a model card; a dataset needs data files and a README.md that parses as a dataset card.

Example:
    $ multiverse push out/smollm2-multiverse --repo-id me/smollm2-multiverse --private

    >>> url = push_folder("out/smollm2-multiverse", "me/smollm2-multiverse")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from huggingface_hub import DatasetCard, HfApi, ModelCard
from huggingface_hub import errors as hub_errors
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from runtime.arguments import OneLineParser

# The base error of the HTTP client the Hub library uses (connection failures included), whichever client it is.
_HTTP_ERROR: type[Exception] = getattr(hub_errors, "HTTPError", OSError)

WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.bin", "*.gguf")
DATA_PATTERNS: tuple[str, ...] = ("*.jsonl", "*.json", "*.parquet", "*.csv", "*.arrow")
_RELATIVE_IMPORT = re.compile(r"^\s*from \.(\w+) import", re.MULTILINE)
IGNORE_PATTERNS: list[str] = [".git/*", "**/__pycache__/*", "*.pyc", ".cache/*"]


class FolderError(ValueError):
    """A folder is not ready to be pushed; the message says what is missing and where."""


def detect_repo_type(folder: Path) -> str:
    """"model" when the folder has a model config, "dataset" when it has data files only."""
    if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
        return "model"
    if _data_files(folder):
        return "dataset"
    raise FolderError(
        f"{folder}: neither a model (no config.json or adapter_config.json) nor a dataset "
        f"(no {', '.join(DATA_PATTERNS)} files); pass --repo-type to say which"
    )


def _data_files(folder: Path) -> list[Path]:
    found = (p for pattern in DATA_PATTERNS for p in folder.rglob(pattern))
    return sorted(p for p in found if ".cache" not in p.parts and ".git" not in p.parts)


def _check_card(folder: Path, repo_type: str) -> None:
    readme = folder / "README.md"
    if not readme.is_file():
        raise FolderError(f"{folder}: no README.md (render one with cards.render_{repo_type}_card(...).save(...))")
    card_class = ModelCard if repo_type == "model" else DatasetCard
    try:
        card = card_class.load(readme)
    except (ValueError, yaml.YAMLError) as err:  # malformed YAML, or a model-index that does not parse
        raise FolderError(f"{readme}: the card metadata does not parse: {err}") from None
    if not card.data.to_dict():
        raise FolderError(f"{readme}: no YAML metadata block (--- ... ---) at the top of the card")


def _check_remote_code(folder: Path, config_path: Path, auto_map: dict) -> None:
    """trust_remote_code loads the classes named in auto_map, and what they import relatively, from the folder."""
    pending = []
    for name, reference in auto_map.items():
        references = reference if isinstance(reference, list) else [reference]
        for ref in filter(None, references):
            pending.append((ref.split("--")[-1].rsplit(".", 1)[0], f"{config_path}: auto_map[{name!r}]"))
    seen: set[str] = set()
    while pending:
        module, named_by = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = folder / f"{module}.py"
        if not path.is_file():
            raise FolderError(f"{named_by} names {module}.py, which is not in the folder")
        for imported in _RELATIVE_IMPORT.findall(path.read_text(encoding="utf-8")):
            pending.append((imported, str(path)))


def _check_model(folder: Path) -> None:
    config_path = folder / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise FolderError(f"{config_path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        _check_remote_code(folder, config_path, config.get("auto_map") or {})
    weights = [p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)]
    if not weights:
        raise FolderError(f"{folder}: no weights ({', '.join(WEIGHT_PATTERNS)})")
    for index_path in folder.glob("*.safetensors.index.json"):
        shards = set(json.loads(index_path.read_text(encoding="utf-8")).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise FolderError(f"{index_path}: shards missing from the folder: {', '.join(missing)}")


def validate_folder(folder: str | Path, repo_type: str | None = None) -> str:
    """Check that `folder` is a complete model or dataset folder; returns its repo type.

    Raises `FolderError` naming the first problem found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FolderError(f"{folder}: not a folder")
    repo_type = repo_type or detect_repo_type(folder)
    if repo_type == "model":
        _check_model(folder)
    elif repo_type == "dataset":
        if not _data_files(folder):
            raise FolderError(f"{folder}: no data files ({', '.join(DATA_PATTERNS)})")
    else:
        raise FolderError(f"repo type must be 'model' or 'dataset', got {repo_type!r}")
    _check_card(folder, repo_type)
    return repo_type


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Validate `folder`, create the repo if needed, upload the folder; returns the commit URL."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise FolderError(f"--repo-id {repo_id!r}: {err}") from None
    if "/" not in repo_id:
        raise FolderError(f"--repo-id {repo_id!r}: expected 'owner/name'")
    repo_type = validate_folder(folder, repo_type)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type=repo_type,
            commit_message=commit_message or f"Upload {repo_type} with `multiverse push`",
            ignore_patterns=IGNORE_PATTERNS,
        )
    except HfHubHTTPError:
        raise  # the Hub answered (an OSError with its message)
    except _HTTP_ERROR as err:  # the Hub could not be reached at all
        raise ConnectionError(f"could not reach the Hub to push {repo_id}: {err}") from None
    return str(getattr(commit, "commit_url", commit))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="multiverse push", description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="model or dataset folder")
    parser.add_argument("--repo-id", required=True, help="owner/name on the Hub")
    parser.add_argument("--repo-type", choices=("model", "dataset"), help="detected from the folder when left out")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one, or HF_TOKEN)")
    parser.add_argument("--commit-message")
    args = parser.parse_args(argv)
    url = push_folder(  # a FolderError (a ValueError) is reported in one line by the CLI
        args.folder,
        args.repo_id,
        repo_type=args.repo_type,
        private=args.private or None,
        token=args.token,
        commit_message=args.commit_message,
    )
    print(f"pushed {args.folder} to {url}")
    return 0
