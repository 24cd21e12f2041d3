"""Train and evaluate both demo models for several seeds: the mean and spread behind the demo's claim.

One demo run is one draw of the training's randomness (data order, dropout-free but seed-dependent packing);
issue 27 saw the baseline's accuracy range from 0.09 to 0.83 across runs of the same settings. This script
takes a finished (or at least curated and converted) `multiverse demo --out RUN` folder, reuses its
synthesized and curated data, its held-out problems and its converted base, and for each seed trains the
Multiverse model and the autoregressive baseline with the demo's settings (the seed replaced), evaluates
both on the held-out problems and times the first problems at batch 1. It prints, per model, the mean,
the standard deviation and the spread (max - min) of accuracy, step accuracy, well-formedness,
parallelism and the per-problem speedup, and writes everything to `OUT/seeds.json`.

The run's own seed, when the settings are the run's, is not trained again: its models and reports are
read from RUN. Every stage of every other seed is resumable: a model folder counts as done once its stage is recorded in
`OUT/seed-S/stages.json` (written atomically after the stage), and every report is written atomically.
Accuracy, step accuracy, well-formedness and parallelism do not depend on the machine's load; wall times
and the speedup do (run it on an unshared machine for timings).

Example:
    $ multiverse demo --out runs/demo
    $ nice -n 10 python benchmarks/demo_seeds.py --run runs/demo --out runs/seeds --seeds 7 8 9
    $ python benchmarks/demo_seeds.py --run runs/demo --out runs/seeds-lr2 --learning-rate 2e-4 --max-steps 24
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.arguments import OneLineParser  # noqa: E402

METRICS = ("accuracy", "step_accuracy", "well_formed", "parallelism")
"""Per-model measures of an eval report that the table summarises (plus the per-problem speedup)."""
OVERRIDES = (
    "max_steps", "learning_rate", "warmup_steps", "batch_size", "gradient_accumulation", "n_eval", "latency_problems"
)
"""DemoSettings fields a flag may change (the data stays the run's: n_train, parts, bags cannot)."""


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min, max and spread (max - min) of `values`.

    >>> spread([0.8, 0.9, 0.85])["spread"]
    0.1
    """
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "spread": round(max(values) - min(values), 4),
    }


def seed_result(seed_dir: Path) -> dict:
    """The measures of one finished seed from its eval and latency reports."""
    from multiverse.comparison import soundness

    names = ("multiverse", "autoregressive")
    reports = {name: json.loads((seed_dir / f"eval-{name}.json").read_text()) for name in names}
    latency = {name: json.loads((seed_dir / f"latency-{name}.json").read_text()) for name in reports}
    result = {name: {metric: reports[name].get(metric) for metric in METRICS} for name in reports}
    for name in reports:
        result[name]["accuracy_interval"] = reports[name]["accuracy_interval"]
        result[name]["step_counts"] = reports[name].get("step_counts")
    result["speedup_batch1"] = round(latency["autoregressive"]["wall_time_s"] / latency["multiverse"]["wall_time_s"], 4)
    result["sound"] = soundness(reports["multiverse"], reports["autoregressive"])
    return result


def aggregate(results: dict[int, dict]) -> dict:
    """Mean and spread of every measure over the seeds (a measure missing from a report is left out)."""
    table = {}
    for name in ("multiverse", "autoregressive"):
        table[name] = {}
        for metric in METRICS:
            values = [r[name][metric] for r in results.values() if r[name][metric] is not None]
            if values:
                table[name][metric] = spread(values)
    table["speedup_batch1"] = spread([r["speedup_batch1"] for r in results.values()])
    table["all_sound"] = all(r["sound"]["sound"] for r in results.values())
    return table


def format_table(table: dict, seeds: list[int]) -> str:
    """A Markdown table of the aggregate: mean ± std and [min, max] per measure and model."""
    def cell(stats: dict | None) -> str:
        if stats is None:
            return "-"
        return f"{stats['mean']:.3f} ± {stats['std']:.3f} [{stats['min']:.3f}, {stats['max']:.3f}]"

    lines = [
        f"seeds {', '.join(map(str, seeds))}: mean ± std [min, max]",
        "",
        "| measure | Multiverse | autoregressive |",
        "| --- | --- | --- |",
    ]
    for metric in METRICS:
        lines.append(f"| {metric.replace('_', ' ')} | {cell(table['multiverse'].get(metric))} | "
                     f"{cell(table['autoregressive'].get(metric) if metric != 'well_formed' else None)} |")
    lines.append(f"| per-problem speedup (batch 1) | {cell(table['speedup_batch1'])} | - |")
    lines.append(f"\nevery seed sound (both models above the floors): {table['all_sound']}")
    return "\n".join(lines)


SEED_STAGES = ("train-multiverse", "train-autoregressive", "eval-multiverse", "eval-autoregressive",
               "latency-multiverse", "latency-autoregressive")
"""The stages of one seed; a demo run that finished them all with the same settings is that seed's result."""


def finished_run(run: Path, settings) -> bool:
    """Whether RUN itself is a finished demo of exactly `settings` (then its seed need not be trained again)."""
    from multiverse.demo import StageLog

    saved = json.loads((run / "settings.json").read_text())
    done = StageLog.load(run / "stages.json").seconds
    return saved == json.loads(json.dumps(asdict(settings))) and all(stage in done for stage in SEED_STAGES)


def run_seed(run: Path, out: Path, settings, seed: int) -> dict:
    """Train, evaluate and time both models for one seed into `out/seed-S` (resuming); returns its measures.

    The demo run's own seed, with the run's settings unchanged, is read from the run folder instead.
    """
    from multiverse.demo import StageLog, _evaluate, _train
    from runtime.paths import write_text_atomic
    from runtime.precision import choose_precision

    settings = replace(settings, seed=seed)
    if finished_run(run, settings):
        log = StageLog.load(run / "stages.json")
        result = seed_result(run)
        result["stage_seconds"] = {stage: log.seconds[stage] for stage in SEED_STAGES}
        result["stage_cpu_seconds"] = {stage: log.cpu_seconds.get(stage) for stage in SEED_STAGES}
        result["from_run"] = str(run)
        return result
    seed_dir = out / f"seed-{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(seed_dir / "settings.json", json.dumps(asdict(settings), indent=2) + "\n")
    precision = choose_precision(settings.precision, "cpu")
    log = StageLog.load(seed_dir / "stages.json")
    base, datasets_dir, held_out = run / "smollm2-multiverse-base", run / "datasets", run / "held_out.jsonl"
    for recipe in ("multiverse", "autoregressive"):
        folder = seed_dir / f"{recipe}-model"
        log.run(f"train-{recipe}", [folder], lambda r=recipe, f=folder: _train(r, base, datasets_dir, f, settings))
    for recipe in ("multiverse", "autoregressive"):
        folder, report = seed_dir / f"{recipe}-model", seed_dir / f"eval-{recipe}.json"
        log.run(
            f"eval-{recipe}", [report],
            lambda f=folder, r=report: _evaluate(f, held_out, r, settings, precision.dtype, settings.eval_batch_size,
                                                 settings.n_eval),
        )
    for recipe in ("multiverse", "autoregressive"):
        folder, report = seed_dir / f"{recipe}-model", seed_dir / f"latency-{recipe}.json"
        log.run(
            f"latency-{recipe}", [report],
            lambda f=folder, r=report: _evaluate(
                f, held_out, r, settings, precision.dtype, 1, settings.latency_problems
            ),
        )
    result = seed_result(seed_dir)
    result["stage_seconds"] = dict(log.seconds)
    result["stage_cpu_seconds"] = dict(log.cpu_seconds)
    return result


def load_run_settings(run: Path, overrides: dict):
    """The demo settings of RUN with `overrides` applied; ValueError naming what RUN lacks."""
    from multiverse.demo import DemoSettings

    if not run.is_dir():
        raise ValueError(f"--run {run}: no such folder (run `multiverse demo --out {run}` first)")
    needed = ("settings.json", "datasets", "smollm2-multiverse-base", "held_out.jsonl")
    missing = [name for name in needed if not (run / name).exists()]
    if missing:
        raise ValueError(f"--run {run}: not a demo run past its convert stage (no {', '.join(missing)})")
    saved = json.loads((run / "settings.json").read_text())
    known = {f.name for f in fields(DemoSettings)}
    settings = DemoSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known})
    settings = replace(settings, **overrides)
    held_out = sum(1 for line in (run / "held_out.jsonl").open(encoding="utf-8") if line.strip())
    if settings.n_eval > held_out or settings.latency_problems > held_out:
        raise ValueError(f"--run {run} holds {held_out} held-out problems; --n-eval/--latency-problems ask for more")
    return settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="demo_seeds.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a `multiverse demo --out` folder (data, base)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the seeds' models and reports (resumed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9], help="training seeds (default 7 8 9)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="default: the run's")
    for name in OVERRIDES:
        kind = float if name == "learning_rate" else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help="default: the run's setting")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}")
    for name in OVERRIDES:
        value = getattr(args, name)
        if value is not None and (value <= 0 if name != "warmup_steps" else value < 0):
            least = ">= 0" if name == "warmup_steps" else "> 0"
            parser.error(f"--{name.replace('_', '-')} must be {least}, got {value}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {name: getattr(args, name) for name in (*OVERRIDES, "precision") if getattr(args, name) is not None}
    try:
        settings = load_run_settings(args.run.expanduser(), overrides)
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out}: is a file, expected a folder")
        if args.out.resolve() == args.run.resolve():
            raise ValueError(f"--out {args.out} is the run folder; the seeds need a folder of their own")
        config_file = args.out / "settings.json"
        if config_file.is_file() and json.loads(config_file.read_text()) != json.loads(json.dumps(asdict(settings))):
            raise ValueError(f"--out {args.out} holds seeds of other settings ({config_file}); use another --out")
    except ValueError as err:
        print(f"demo_seeds.py: {err}", file=sys.stderr)
        return 2
    from runtime.paths import write_text_atomic

    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(config_file, json.dumps(asdict(settings), indent=2) + "\n")
    results = {}
    for seed in args.seeds:
        print(f"[seeds] seed {seed}", flush=True)
        results[seed] = run_seed(args.run.expanduser(), args.out, settings, seed)
        print(f"[seeds] seed {seed}: {json.dumps({k: v for k, v in results[seed].items() if 'seconds' not in k})}",
              flush=True)
    table = aggregate(results)
    from runtime.precision import hardware_line, hardware_report

    hardware = hardware_report("cpu")
    summary = {"run": str(args.run), "settings": asdict(settings), "seeds": results, "aggregate": table,
               "hardware": hardware}
    write_text_atomic(args.out / "seeds.json", json.dumps(summary, indent=2) + "\n")
    print(format_table(table, args.seeds))
    print(f"hardware: {hardware_line(hardware)}")
    print(f"written: {args.out / 'seeds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
