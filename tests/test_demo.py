"""The demo end to end on the embedded default: every stage, the summary, the report, resume.

The default suite runs a micro demo (a few problems, one training step, a few new tokens): every stage
and every output, in about a minute of two cores. The quick demo (`multiverse demo --quick`) is marked slow.
"""

import json
import os

import pytest

from multiverse.demo import DemoSettings, _cards, run_demo

SUMMARY_KEYS = {
    "n_eval", "accuracy_multiverse", "accuracy_autoregressive", "well_formed", "parallelism", "speedup",
    "speedup_batch1", "precision", "hardware", "total_seconds", "total_cpu_seconds",
}
MICRO = DemoSettings(
    n_train=8, n_eval=2, parts=(2, 2), bags=(2, 2), max_length=256, max_steps=1, batch_size=1,
    gradient_accumulation=1, train_layers=1, max_new_tokens=24, eval_batch_size=2, latency_problems=1,
    warmup_steps=0, precision="fp32",
)


def check_run(out, summary, settings):
    assert SUMMARY_KEYS <= set(summary)
    assert json.loads((out / "summary.json").read_text())["n_eval"] == summary["n_eval"] == settings.n_eval
    assert 0.0 <= summary["accuracy_multiverse"] <= 1.0 and summary["parallelism"] >= 1.0 and summary["speedup"] > 0
    assert summary["latency_problems"] == settings.latency_problems and summary["speedup_batch1"] > 0
    assert summary["precision"]["requested"] == settings.precision and summary["hardware"]["fp32_gflops"] > 0
    stages = {
        "hardware",
        "synth",
        "curate",
        "convert",
        "train-multiverse",
        "train-autoregressive",
        "latency-multiverse",
    }
    assert stages <= set(summary["stage_seconds"]) and stages <= set(summary["stage_cpu_seconds"])
    report = (out / "report.md").read_text()
    assert "accuracy" in report and "Wall-clock speedup" in report and "Hardware: " in report
    for plot in ("accuracy.png", "parallelism.png", "speedup.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for model in ("multiverse-model", "autoregressive-model"):
        folder = out / model
        config = json.loads((folder / "config.json").read_text())
        if model == "multiverse-model":
            assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_multiverse.MultiverseForCausalLM"
            assert (folder / "custom_generate" / "generate.py").is_file()
        else:  # the baseline is the base's own class: stock engines load it without remote code (issue 27)
            assert config["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in config
            assert not (folder / "custom_generate").exists()
        card = (folder / "README.md").read_text()
        assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
        assert ("trust_remote_code=True" in card) == (model == "multiverse-model")  # the baseline loads plainly
    summary_file = json.loads((out / "summary.json").read_text())
    for name in ("multiverse", "autoregressive"):
        assert 0.0 <= summary_file[f"step_accuracy_{name}"] <= 1.0
        low, high = summary_file[f"accuracy_interval_{name}"]
        assert low <= summary_file[f"accuracy_{name}"] <= high
    assert isinstance(summary_file["sound_baseline"], bool) and summary_file["verdict"]


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    return out, run_demo(out, MICRO)


def test_micro_demo_writes_summary_report_plots_and_two_hub_ready_models(micro_run):
    check_run(*micro_run, MICRO)


def test_only_the_top_layers_and_the_embeddings_were_trained(micro_run):
    from safetensors.torch import load_file

    out, _ = micro_run
    base = load_file(out / "smollm2-multiverse-base" / "model.safetensors")
    trained = load_file(out / "multiverse-model" / "model.safetensors")
    changed = {name for name, weight in trained.items() if not weight.equal(base[name])}
    top = max(int(name.split(".layers.")[1].split(".")[0]) for name in base if ".layers." in name)
    trained_names = (f".layers.{top}.", "embed_tokens", "lm_head")
    assert changed and all(
        any(part in name for part in trained_names) or name.endswith(".norm.weight") for name in changed
    )
    assert any(f".layers.{top}." in name for name in changed)


def test_a_rerun_reuses_every_stage_and_other_settings_are_refused(micro_run, capsys):
    out, summary = micro_run
    before = json.loads((out / "stages.json").read_text())
    again = run_demo(out, MICRO)
    assert again["accuracy_multiverse"] == summary["accuracy_multiverse"]
    assert "reused" in capsys.readouterr().out
    assert json.loads((out / "stages.json").read_text()) == before  # nothing ran again
    with pytest.raises(ValueError, match="other settings"):
        run_demo(out, DemoSettings(n_train=10, n_eval=2))


@pytest.mark.slow
def test_quick_demo(tmp_path):
    out = tmp_path / "run"
    settings = DemoSettings.quick()
    check_run(out, run_demo(out, settings), settings)


def test_demo_seeds_trains_two_seeds_on_the_runs_data_and_resumes(micro_run, tmp_path, capsys):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    from demo_seeds import main as seeds_main

    run, _ = micro_run
    out = tmp_path / "seeds"
    argv = ["--run", str(run), "--out", str(out), "--seeds", "1", "2", "--n-eval", "1", "--latency-problems", "1"]
    assert seeds_main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "seeds.json").read_text())
    assert set(result["seeds"]) == {"1", "2"} and result["settings"]["max_steps"] == MICRO.max_steps
    assert (
        result["settings"]["n_eval"] == 1
        and json.loads((out / "seed-1" / "eval-multiverse.json").read_text())["n"] == 1
    )
    for seed in ("1", "2"):
        assert json.loads((out / f"seed-{seed}" / "settings.json").read_text())["seed"] == int(seed)
        assert 0.0 <= result["seeds"][seed]["autoregressive"]["step_accuracy"] <= 1.0
    accuracy = result["aggregate"]["multiverse"]["accuracy"]
    assert accuracy["min"] <= accuracy["mean"] <= accuracy["max"] and "per-problem speedup" in printed
    # the two seeds trained different models from the same data and base
    weights = [(out / f"seed-{s}" / "multiverse-model" / "model.safetensors").read_bytes() for s in ("1", "2")]
    assert weights[0] != weights[1]
    assert seeds_main(argv) == 0  # a rerun reuses every stage
    again = capsys.readouterr().out
    assert "reused" in again and "train-multiverse ..." not in again
    bad = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "demo_seeds.py"), "--run", str(run), "--out", str(out),
         "--learning-rate", "-1"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--learning-rate" in bad.stderr
    # the run's own seed with the run's settings is the run itself: read, not trained again
    own = tmp_path / "own"
    assert seeds_main(["--run", str(run), "--out", str(own), "--seeds", str(MICRO.seed)]) == 0
    reused = json.loads((own / "seeds.json").read_text())["seeds"][str(MICRO.seed)]
    assert reused["from_run"] == str(run) and not (own / f"seed-{MICRO.seed}" / "multiverse-model").exists()
    want = json.loads((run / "eval-multiverse.json").read_text())["accuracy"]
    assert reused["multiverse"]["accuracy"] == want


def test_the_demo_gives_each_model_the_card_of_its_kind(tmp_path):
    report = {"kind": "builtin", "n": 4, "accuracy": 0.5, "well_formed": 1.0, "parallelism": 1.3, "mean_tokens": 90.0}
    reports, models = {}, {}
    for recipe in ("multiverse", "autoregressive"):
        reports[recipe] = tmp_path / f"{recipe}.json"
        reports[recipe].write_text(json.dumps(report))
        models[recipe] = tmp_path / recipe
        models[recipe].mkdir()
    _cards({"n_train": 8}, reports, models)
    multiverse, baseline = ((models[r] / "README.md").read_text() for r in ("multiverse", "autoregressive"))
    assert "trust_remote_code=True" in multiverse and "trust_remote_code" not in baseline
    assert "AutoModelForCausalLM.from_pretrained(" in baseline and "autoregressive baseline" in baseline
    assert "type: parallelism" in multiverse and "type: parallelism" not in baseline  # model-index
