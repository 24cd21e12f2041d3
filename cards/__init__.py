"""Model and dataset cards for Multiverse models and data, rendered through huggingface_hub.

The templates (`model_card.md`, `baseline_card.md`, `dataset_card.md` beside this file) are Jinja; the YAML
metadata at their top is written by `ModelCardData` / `DatasetCardData`, so it is what the Hub expects
(license, base_model, datasets, library_name, tags, pipeline_tag, model-index with eval results).
A Multiverse model gets `model_card.md` (`kind="multiverse"`); the autoregressive baseline trained beside it,
saved as its base's own class, gets `baseline_card.md` (`kind="baseline"`): plain loading, no fork/merge
metrics.

Example:
    >>> report = {"kind": "math", "n": 500, "accuracy": 0.5, "well_formed": 0.9, "parallelism": 1.2}
    >>> card = render_model_card(
    ...     repo_id="me/smollm2-multiverse", base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
    ...     eval_results=eval_results_from_report(report))
    >>> card.data.eval_results[0].metric_value
    0.5
    >>> baseline = render_model_card(repo_id="me/smollm2-baseline", kind="baseline",
    ...     eval_results=eval_results_from_report(report))
    >>> [r.metric_type for r in baseline.data.eval_results]
    ['accuracy']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from modeling_multiverse import PARALLEL_INSTRUCTION
from modeling_multiverse.modeling_multiverse import SPEC_FILE

TEMPLATES = Path(__file__).resolve().parent
MODEL_TEMPLATE = TEMPLATES / "model_card.md"
BASELINE_TEMPLATE = TEMPLATES / "baseline_card.md"
DATASET_TEMPLATE = TEMPLATES / "dataset_card.md"

MODEL_TAGS: tuple[str, ...] = ("multiverse", "parallel-reasoning", "reasoning", "text-generation")
# The baseline does not write the Multiverse format: no `multiverse` tag, which would claim it does
BASELINE_TAGS: tuple[str, ...] = ("multiverse-baseline", "autoregressive", "reasoning", "text-generation")
DATASET_TAGS: tuple[str, ...] = ("multiverse", "parallel-reasoning", "reasoning", "chain-of-thought")

# (dataset id on the Hub, pretty name) for the kinds `multiverse eval` knows
EVAL_DATASETS: dict[str, tuple[str, str]] = {
    "math": ("HuggingFaceH4/MATH-500", "MATH-500"),
    "aime": ("AIME", "AIME"),
    "builtin": ("multiverse-builtin", "Multiverse built-in task"),
    "choice": ("multiple-choice", "Multiple choice"),
}

# Only these metrics of an eval report go into model-index (the rest stays in the card's table).
REPORT_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Accuracy"),
    ("well_formed", "Well-formed responses"),
    ("parallelism", "Degree of parallelism"),
)


CardKind = Literal["multiverse", "baseline"]


@dataclass(frozen=True)
class _CardStyle:
    """What differs between the card of a Multiverse model and that of its autoregressive baseline."""

    template: Path
    tags: tuple[str, ...]
    summary: str
    omitted_metrics: tuple[str, ...] = ()  # metric types that mean nothing for the model: left out of its card


_STYLES: dict[str, _CardStyle] = {
    "multiverse": _CardStyle(
        MODEL_TEMPLATE,
        MODEL_TAGS,
        "A Multiverse reasoning model: it forks its reasoning into parallel paths and merges them.",
    ),
    # a baseline writes no blocks: every response is "well-formed" and its parallelism is 1 by construction
    "baseline": _CardStyle(
        BASELINE_TEMPLATE,
        BASELINE_TAGS,
        "The autoregressive baseline of a Multiverse model: the same base and data, as plain sequential text.",
        ("well_formed", "parallelism"),
    ),
}


def eval_results_from_report(
    report: Mapping[str, Any],
    dataset_type: str | None = None,
    dataset_name: str | None = None,
    dataset_split: str = "test",
) -> list[EvalResult]:
    """`EvalResult`s (one per metric) from a `evaluation.evaluate.evaluate` report.

    The dataset is named after the report's `kind` unless `dataset_type` / `dataset_name` say otherwise.
    """
    missing = [key for key in ("kind", *(m for m, _ in REPORT_METRICS)) if key not in report]
    if missing:
        raise ValueError(f"eval report lacks {', '.join(missing)}; pass the dict `evaluate` returns")
    default_type, default_name = EVAL_DATASETS.get(report["kind"], (report["kind"], report["kind"]))
    return [
        EvalResult(
            task_type="text-generation",
            task_name="Text Generation",
            dataset_type=dataset_type or default_type,
            dataset_name=dataset_name or default_name,
            dataset_split=dataset_split,
            metric_type=metric,
            metric_name=name,
            metric_value=round(float(report[metric]), 4),
        )
        for metric, name in REPORT_METRICS
    ]


def _results_table(eval_results: Sequence[EvalResult], reports: Sequence[Mapping[str, Any]] | None) -> list[dict]:
    """Rows of the card's evaluation table: one per dataset, metrics as columns."""
    rows: dict[str, dict[str, Any]] = {}
    for result in eval_results:
        empty = {"n": "", "accuracy": 0.0, "well_formed": 0.0, "parallelism": 1.0, "mean_tokens": 0.0}
        row = rows.setdefault(result.dataset_name, {"dataset": result.dataset_name, **empty})
        row[result.metric_type] = result.metric_value
    for report in reports or ():
        name = EVAL_DATASETS.get(report["kind"], (None, report["kind"]))[1]
        if name in rows:
            rows[name].update(n=report.get("n", ""), mean_tokens=report.get("mean_tokens", 0.0))
    return list(rows.values())


def render_model_card(
    *,
    repo_id: str,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    reports: Sequence[Mapping[str, Any]] | None = None,
    license: str = "apache-2.0",
    language: str = "en",
    tags: Sequence[str] = (),
    summary: str | None = None,
    training: Mapping[str, Any] | None = None,
    limitations: str | None = None,
    spec: str | None = SPEC_FILE,
    kind: CardKind = "multiverse",
) -> ModelCard:
    """A `ModelCard` for a model folder (save it as the folder's README.md).

    `kind="multiverse"` (default) describes a Multiverse model: fork/merge decoding, loaded with its remote code.
    `kind="baseline"` describes the autoregressive baseline saved as its base's own class (`trl_recipes/plain.py`):
    loaded with plain `AutoModelForCausalLM.from_pretrained`, served by stock servers; only its accuracy goes
    into the model-index (well-formedness and parallelism say nothing about a model that never forks).
    `eval_results` become the card's model-index; `reports` (the `evaluate` dicts they came from)
    add problem counts and mean tokens to the evaluation table. `training` is a {setting: value} table.
    `summary` defaults to a sentence for the kind. `spec` is the specification's path in a Multiverse folder
    (`save_pretrained` of a Multiverse model writes it), linked from the card; None for a folder without it.
    The baseline's card never links it.

    >>> card = render_model_card(repo_id="me/smollm2-ar", kind="baseline")  # doctest: +SKIP
    >>> "trust_remote_code" in card.text  # doctest: +SKIP
    False
    """
    if not repo_id or "/" not in repo_id:
        raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}")
    if kind not in _STYLES:
        raise ValueError(f"kind must be one of {', '.join(_STYLES)}, got {kind!r}")
    style = _STYLES[kind]
    eval_results = [r for r in eval_results or () if r.metric_type not in style.omitted_metrics]
    model_name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        eval_results=eval_results or None,
        model_name=model_name,
        language=language,
        library_name="transformers",
        license=license,
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys([*style.tags, *tags])),
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(style.template),
        model_title=model_name,
        repo_id=repo_id,
        summary=summary or style.summary,
        results=_results_table(eval_results, reports),
        training=dict(training) if training else None,
        limitations=limitations,
        parallel_instruction=PARALLEL_INSTRUCTION,
        spec=spec if kind == "multiverse" else None,
    )


def size_category(num_examples: int) -> str:
    """The Hub's `size_categories` bucket for a number of examples.

    >>> size_category(1000)
    '1K<n<10K'
    """
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    for bound, name in bounds:
        if num_examples < bound:
            return name
    return "n>1M"


def render_dataset_card(
    *,
    repo_id: str,
    pretty_name: str,
    num_examples: int,
    source_datasets: Sequence[str] | None = None,
    license: str = "apache-2.0",
    language: str = "en",
    tags: Sequence[str] = (),
    summary: str = "Reasoning traces in the Multiverse format, for supervised fine-tuning of Multiverse models.",
    fields: Mapping[str, str] | None = None,
    stats: Mapping[str, Any] | None = None,
) -> DatasetCard:
    """A `DatasetCard` for a Multiverse-format dataset folder (save it as the folder's README.md).

    `fields` documents the columns ({name: meaning}); `stats` is a {measure: value} table (e.g. the
    mean number of paths per block).
    """
    if not repo_id or "/" not in repo_id:
        raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}")
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    card_data = DatasetCardData(
        pretty_name=pretty_name,
        license=license,
        language=language,
        task_categories=["text-generation"],
        size_categories=[size_category(num_examples)],
        source_datasets=list(source_datasets) if source_datasets else None,
        tags=list(dict.fromkeys([*DATASET_TAGS, *tags])),
    )
    return DatasetCard.from_template(
        card_data,
        template_path=str(DATASET_TEMPLATE),
        repo_id=repo_id,
        summary=summary,
        num_examples=num_examples,
        fields=dict(fields) if fields else None,
        stats=dict(stats) if stats else None,
    )


__all__ = [
    "EVAL_DATASETS",
    "CardKind",
    "eval_results_from_report",
    "render_dataset_card",
    "render_model_card",
    "size_category",
]
