"""The demo flags a broken baseline: a finished run whose baseline writes wrong sums fails the comparison.

No training: a run folder is laid out as the demo leaves it after evaluation (stages.json names every stage
done), with eval reports graded from hand-written responses; `multiverse demo --out DIR` then resumes into
the summary and the report, which is the code under test.
"""

import json
import re
from dataclasses import asdict

import pytest

from curator.synth import synthesize, write_jsonl
from evaluation.evaluate import grade_record, summarize
from multiverse.comparison import ACCURACY_FLOOR, PARITY_TARGET, SOUND_TARGET, STEP_FLOOR, soundness
from multiverse.demo import DemoSettings, main

N = 200
HARDWARE = {"name": "test CPU", "threads": 2, "fp32_gflops": 10.0, "bf16_gflops": 20.0, "matmul_size": 256}


def _break_sums(sequential: str) -> str:
    """The broken baseline of issue 27: the right format, every sum one off, totals and answer following it."""
    broken = re.sub(r"(\d+) \+ (\d+) = (\d+)", lambda m: f"{m[1]} + {m[2]} = {int(m[3]) + 1}", sequential)
    return re.sub(r"(total is |most is |boxed\{)(\d+)", lambda m: f"{m[1]}{int(m[2]) + 1}", broken)


def _report(rows, respond, steps_per_problem: int) -> dict:
    records = [dict(row, kind="builtin") for row in rows]
    results = []
    for record in records:
        response = respond(record)
        tokens = len(response.split())
        results.append(grade_record(record, response, tokens, max(1, tokens // steps_per_problem), True, 0.01))
    return summarize(results, "builtin", 2.0 * steps_per_problem)


def _finished_run(out, baseline_response) -> None:
    """A run folder after every stage but the report, with eval reports of hand-written responses."""
    settings = DemoSettings()
    rows = synthesize(N, seed=3, k=settings.parts, bags=settings.bags, task="most")
    out.mkdir()
    (out / "settings.json").write_text(json.dumps(asdict(settings)))
    (out / "hardware.json").write_text(json.dumps(HARDWARE))
    write_jsonl(rows, out / "problems.jsonl")
    write_jsonl(rows, out / "held_out.jsonl")
    (out / "curated.jsonl").write_text("")
    for folder in ("datasets", "smollm2-multiverse-base", "multiverse-model", "autoregressive-model"):
        (out / folder).mkdir()
    reports = {
        "multiverse": _report(rows, lambda r: r["sequential"], 2),  # right, two tokens per step
        "autoregressive": _report(rows, baseline_response, 1),
    }
    for name, report in reports.items():
        (out / f"eval-{name}.json").write_text(json.dumps(report))
        latency = summarize(report["records"][:10], "builtin", 1.0 if name == "multiverse" else 2.0)
        (out / f"latency-{name}.json").write_text(json.dumps(latency))
    stages = ["hardware", "synth", "curate", "convert", "train-multiverse", "train-autoregressive"]
    stages += ["eval-multiverse", "eval-autoregressive", "latency-multiverse", "latency-autoregressive"]
    (out / "stages.json").write_text(json.dumps({"seconds": dict.fromkeys(stages, 1.0), "cpu_seconds": {}}))


def test_a_baseline_with_wrong_sums_voids_the_comparison(tmp_path, capsys):
    out = tmp_path / "run"
    _finished_run(out, lambda r: _break_sums(r["sequential"]))
    assert main(["--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("[demo] NO BASELINE") and "the autoregressive model (the baseline)" in last
    assert "below the floor" in last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sound_baseline"] is False and summary["step_accuracy_autoregressive"] == 0.0
    assert summary["accuracy_autoregressive"] == 0.0 and summary["step_accuracy_multiverse"] == 1.0
    # the accuracy target alone would pass (1.0 against 0.0): it is false because there is no baseline
    assert summary["targets"][SOUND_TARGET] is False and summary["targets"][PARITY_TARGET] is False
    assert not any(ok for name, ok in summary["targets"].items() if "speedup" in name)
    low, high = summary["accuracy_interval_autoregressive"]
    assert low == 0.0 and 0.0 < high < 0.03
    first = (out / "report.md").read_text().splitlines()[:4]
    assert any("NO BASELINE" in line and "sums and totals right" in line for line in first)


def test_a_sound_baseline_keeps_the_comparison(tmp_path, capsys):
    out = tmp_path / "run"
    _finished_run(out, lambda r: r["sequential"])
    assert main(["--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "NO BASELINE" not in last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sound_baseline"] is True and summary["targets"][PARITY_TARGET] is True
    assert summary["step_accuracy_autoregressive"] == 1.0
    report = (out / "report.md").read_text()
    assert "NO BASELINE" not in report and "step accuracy" in report and "Wilson 95% interval" in report


@pytest.mark.parametrize(
    ("accuracy", "step", "sound"),
    [(ACCURACY_FLOOR, STEP_FLOOR, True), (ACCURACY_FLOOR - 0.01, 1.0, False), (1.0, STEP_FLOOR - 0.01, False)],
)
def test_the_floors_apply_to_either_model(accuracy, step, sound):
    good = {"accuracy": 0.9, "step_accuracy": 0.97}
    weak = {"accuracy": accuracy, "step_accuracy": step}
    assert soundness(good, weak)["sound"] is sound and soundness(weak, good)["sound"] is sound
