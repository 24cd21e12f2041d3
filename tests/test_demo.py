"""The quick demo end to end on the embedded default: every stage, the summary, the report, resume."""

import json

import pytest

from multiverse.demo import DemoSettings, run_demo

SUMMARY_KEYS = {"n_eval", "accuracy_multiverse", "accuracy_autoregressive", "well_formed", "parallelism", "speedup"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    return out, run_demo(out, DemoSettings.quick())


def test_quick_demo_writes_summary_report_plots_and_two_hub_ready_models(quick_run):
    out, summary = quick_run
    assert SUMMARY_KEYS <= set(summary)
    assert json.loads((out / "summary.json").read_text())["n_eval"] == summary["n_eval"] == DemoSettings.quick().n_eval
    assert 0.0 <= summary["accuracy_multiverse"] <= 1.0 and summary["parallelism"] >= 1.0 and summary["speedup"] > 0
    assert set(summary["stage_seconds"]) >= {"synth", "curate", "convert", "train-multiverse", "train-autoregressive"}
    report = (out / "report.md").read_text()
    assert "accuracy" in report and "Wall-clock speedup" in report
    for plot in ("accuracy.png", "parallelism.png", "speedup.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for model in ("multiverse-model", "autoregressive-model"):
        folder = out / model
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_multiverse.MultiverseForCausalLM"
        assert (folder / "custom_generate" / "generate.py").is_file()
        assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in (folder / "README.md").read_text()


def test_a_rerun_reuses_every_stage_and_other_settings_are_refused(quick_run, capsys):
    out, summary = quick_run
    before = json.loads((out / "stages.json").read_text())
    again = run_demo(out, DemoSettings.quick())
    assert again["accuracy_multiverse"] == summary["accuracy_multiverse"]
    assert "reused" in capsys.readouterr().out
    assert json.loads((out / "stages.json").read_text()) == before  # nothing ran again
    with pytest.raises(ValueError, match="other settings"):
        run_demo(out, DemoSettings(n_train=10, n_eval=2))
