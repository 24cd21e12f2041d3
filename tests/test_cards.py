"""Card rendering: the YAML metadata parses back to what was rendered, the body carries the results."""

import pytest
from huggingface_hub import DatasetCard, ModelCard

from cards import eval_results_from_report, render_dataset_card, render_model_card, size_category

REPORTS = [
    {"kind": "math", "n": 500, "accuracy": 0.4567, "well_formed": 0.98, "parallelism": 1.17, "mean_tokens": 812.4},
    {"kind": "aime", "n": 30, "accuracy": 0.1, "well_formed": 0.9, "parallelism": 1.12, "mean_tokens": 4000.0},
]


def test_model_card_round_trip(tmp_path):
    results = [r for report in REPORTS for r in eval_results_from_report(report)]
    card = render_model_card(
        repo_id="someone/smollm2-multiverse",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        datasets=["someone/multiverse-synth"],
        eval_results=results,
        reports=REPORTS,
        training={"epochs": 3, "learning_rate": 1e-5},
    )
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data.to_dict()
    assert data["license"] == "apache-2.0" and data["library_name"] == "transformers"
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["datasets"] == ["someone/multiverse-synth"] and data["pipeline_tag"] == "text-generation"
    assert "multiverse" in data["tags"]
    assert data["model-index"][0]["name"] == "smollm2-multiverse"
    parsed = {(r.dataset_type, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert parsed[("HuggingFaceH4/MATH-500", "accuracy")] == 0.4567
    assert parsed[("AIME", "parallelism")] == 1.12
    assert len(parsed) == 6
    assert "| MATH-500 | 500 | 45.7% | 98.0% | 1.170 | 812 |" in loaded.text
    assert "| learning_rate | 1e-05 |" in loaded.text
    assert 'from_pretrained("someone/smollm2-multiverse"' in loaded.text


def test_model_card_without_results_has_no_model_index():
    card = render_model_card(repo_id="someone/tiny")
    data = ModelCard(str(card)).data.to_dict()
    assert "model-index" not in data and "base_model" not in data
    assert "## Evaluation" not in card.text


def test_dataset_card_round_trip(tmp_path):
    card = render_dataset_card(
        repo_id="someone/multiverse-synth",
        pretty_name="Multiverse synthetic arithmetic",
        num_examples=1200,
        source_datasets=["simplescaling/s1K-1.1"],
        fields={"id": "problem id", "response": "the Multiverse-format answer"},
        stats={"mean paths per block": 2.4},
    )
    card.save(tmp_path / "README.md")
    loaded = DatasetCard.load(tmp_path / "README.md")
    data = loaded.data.to_dict()
    assert data["pretty_name"] == "Multiverse synthetic arithmetic"
    assert data["size_categories"] == ["1K<n<10K"] and data["task_categories"] == ["text-generation"]
    assert data["source_datasets"] == ["simplescaling/s1K-1.1"] and "multiverse" in data["tags"]
    assert "| `response` | the Multiverse-format answer |" in loaded.text
    assert "**Examples:** 1200" in loaded.text


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="owner/name"):
        render_model_card(repo_id="no-owner")
    with pytest.raises(ValueError, match="lacks accuracy"):
        eval_results_from_report({"kind": "math", "well_formed": 1.0, "parallelism": 1.0})
    assert size_category(999) == "n<1K" and size_category(2_000_000) == "n>1M"


def test_model_card_links_the_spec_shipped_beside_the_weights():
    assert "[SPEC.md](SPEC.md)" in render_model_card(repo_id="someone/tiny").text
    assert "SPEC.md" not in render_model_card(repo_id="someone/baseline", spec=None).text


def test_baseline_card_loads_plainly_and_reports_accuracy_only(tmp_path):
    results = [r for report in REPORTS for r in eval_results_from_report(report)]
    card = render_model_card(
        repo_id="someone/smollm2-autoregressive",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        eval_results=results,
        reports=REPORTS,
        training={"recipe": "autoregressive"},
        kind="baseline",
    )
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    text, data = loaded.text, loaded.data.to_dict()
    assert "trust_remote_code" not in text and "SPEC.md" not in text
    assert 'AutoModelForCausalLM.from_pretrained("someone/smollm2-autoregressive")' in text
    assert "autoregressive baseline" in text and "vllm serve someone/smollm2-autoregressive" in text
    assert "multiverse" not in data["tags"] and "multiverse-baseline" in data["tags"]
    assert {r.metric_type for r in loaded.data.eval_results} == {"accuracy"}  # no fork/merge measures
    assert "| MATH-500 | 500 | 45.7% | 812 |" in text
    assert "parallelism" not in text.lower() and "well-formed" not in text


def test_the_multiverse_card_is_what_it_was(tmp_path):
    """`kind` defaults to the Multiverse card, and the baseline's template leaves it as it was."""
    results = eval_results_from_report(REPORTS[0])
    default = render_model_card(repo_id="someone/tiny", eval_results=results, reports=REPORTS[:1])
    explicit = render_model_card(repo_id="someone/tiny", eval_results=results, reports=REPORTS[:1], kind="multiverse")
    assert str(default) == str(explicit)
    assert "trust_remote_code=True" in default.text and "well-formed" in default.text
    assert len(default.data.eval_results) == 3
    with pytest.raises(ValueError, match="kind"):
        render_model_card(repo_id="someone/tiny", kind="plain")
