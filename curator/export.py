"""Export curated records to `datasets` in the recipes' prompt/completion format, with the autoregressive twin.

`to_datasets` joins the curated output with the problems it came from (for the question) and returns
a `DatasetDict` with two splits over the same converted ids:
- `multiverse`: completion = the Multiverse response;
- `autoregressive`: same prompt, completion = the original sequential chain (`ar_source="sequential"`)
  or the Multiverse response with its tags removed (`ar_source="flattened"`).

Example:
    >>> data = to_datasets("curated.jsonl", "problems.jsonl")  # doctest: +SKIP
    >>> save_dataset(data, "out/", parquet=True, push_to_hub=None)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, DatasetDict

from modeling_multiverse.prompts import parallel_user_turn
from modeling_multiverse.structure import remove_tags
from runtime.paths import same_path, write_text_atomic

from .pipeline import read_curated, read_problems, summarize


def conversation(question: str, response: str) -> dict:
    """One prompt/completion example: the user turn asks for parallel thinking."""
    return {
        "prompt": [{"role": "user", "content": parallel_user_turn(question)}],
        "completion": [{"role": "assistant", "content": response}],
    }


def to_datasets(
    curated: str | os.PathLike, problems: str | os.PathLike, *, ar_source: str = "sequential"
) -> DatasetDict:
    """Splits `multiverse` and `autoregressive`, one row per converted record (with `id` and `answer` kept)."""
    if ar_source not in ("sequential", "flattened"):
        raise ValueError(f"ar_source must be 'sequential' or 'flattened', got {ar_source!r}")
    by_id = {p["id"]: p for p in read_problems(problems)}
    multiverse, autoregressive = [], []
    for record in read_curated(curated).values():
        if record.get("status") != "converted":
            continue
        problem = by_id.get(record["id"])
        if problem is None:
            raise ValueError(f"{curated}: id {record['id']!r} is not in {problems}")
        if not problem.get("question"):
            raise ValueError(f"{problems}: id {record['id']!r} has no 'question' to build a prompt from")
        extra = {"id": record["id"], "answer": str(problem.get("answer", ""))}
        ar_text = problem["sequential"] if ar_source == "sequential" else remove_tags(record["multiverse"]).strip()
        multiverse.append({**extra, **conversation(problem["question"], record["multiverse"])})
        autoregressive.append({**extra, **conversation(problem["question"], ar_text)})
    if not multiverse:
        raise ValueError(f"{curated}: no converted record to export")
    return DatasetDict(
        {"multiverse": Dataset.from_list(multiverse), "autoregressive": Dataset.from_list(autoregressive)}
    )


def dataset_card(data: DatasetDict, summary: dict | None = None, repo_id: str | None = None) -> str:
    """The card text: the cards helper's renderer when it exists, else a minimal huggingface_hub card."""
    try:
        from cards import render_dataset_card  # written by another helper; optional

        return render_dataset_card(data, summary=summary, repo_id=repo_id)
    except (ImportError, AttributeError, TypeError):
        pass
    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = DatasetCardData(license="apache-2.0", language=["en"], tags=["multiverse", "parallel-reasoning", "sft"])
    stats = "" if summary is None else "\n## Curation\n\n" + "\n".join(f"- {k}: {v}" for k, v in summary.items()) + "\n"
    body = (
        f"---\n{card_data.to_yaml()}\n---\n\n# {repo_id or 'Multiverse SFT data'}\n\n"
        "Prompt/completion conversations for SFT. Split `multiverse` holds responses in the Multiverse format "
        "(parallel `Path` branches merged by a `Conclusion`, Yang et al., arXiv 2506.09991); split `autoregressive` "
        f"holds the same problems with sequential responses, for the autoregressive baseline.\n\n"
        "Rows: " + ", ".join(f"{name} {len(split)}" for name, split in data.items()) + "\n" + stats
    )
    return str(DatasetCard(body))


def check_export_dir(out_dir: str | os.PathLike, *inputs: str | os.PathLike) -> None:
    """Refuse an export folder that is one of the inputs, a file, or a folder of other things (it would be mixed in)."""
    out = Path(out_dir)
    if any(same_path(out, path) for path in inputs):
        raise ValueError(f"--export-dir {out_dir} is one of the input or output files; export to a folder of its own")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--export-dir {out_dir}: is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "dataset" / "dataset_dict.json").is_file():
        raise ValueError(
            f"--export-dir {out_dir} holds other files and no earlier export; export to a new or empty folder"
        )


def save_dataset(
    data: DatasetDict,
    out_dir: str | os.PathLike,
    *,
    parquet: bool = True,
    push_to_hub: str | None = None,
    private: bool = True,
    summary: dict | None = None,
) -> Path:
    """`save_to_disk` under out_dir/dataset, parquet files per split, README.md card; optionally push to the Hub."""
    check_export_dir(out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data.save_to_disk(str(out / "dataset"))
    if parquet:
        for name, split in data.items():
            split.to_parquet(str(out / f"{name}.parquet"))
    card = dataset_card(data, summary, push_to_hub)
    write_text_atomic(out / "README.md", card)
    if push_to_hub:
        from huggingface_hub import DatasetCard

        data.push_to_hub(push_to_hub, private=private)
        DatasetCard(card).push_to_hub(push_to_hub)
    return out


def export_file(
    curated: str | os.PathLike, problems: str | os.PathLike, out_dir: str | os.PathLike, **options
) -> DatasetDict:
    """to_datasets + save_dataset with the curation summary in the card."""
    ar_source = options.pop("ar_source", "sequential")
    data = to_datasets(curated, problems, ar_source=ar_source)
    save_dataset(data, out_dir, summary=summarize(read_curated(curated).values()), **options)
    return data
