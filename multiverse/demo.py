"""`multiverse demo --out DIR [--quick]`: the paper's claim in miniature, on a laptop CPU.

Stages, each resumable (a rerun reuses every stage whose outputs are there):
  1. synth     built-in problems with natural parallelism, sequential chains of thought (train + held out)
  2. curate    chains → Multiverse format with the offline `rules` structurer
  3. convert   the embedded default (SmolLM2-135M-Instruct) → a Multiverse model
  4. train     SFT on the curated examples (Multiverse recipe) and, on the same examples with the
               structure flattened, the autoregressive baseline
  5. evaluate  both models on the held-out problems (batched greedy decoding, same max_new_tokens)
  6. report    summary.json, report.md, PNG plots, model cards

Example:
    $ multiverse demo --out runs/demo --quick
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from runtime.arguments import OneLineParser
from runtime.paths import write_text_atomic


@dataclass
class DemoSettings:
    """Sizes of a run. `quick()` is the CI-sized run; the defaults are the full one.

    The sizes aim at a 2-core CPU (a 16-step run took 28.6 minutes on 2 AVX2-held Xeon cores in fp32; today's 24
    steps need about 30 minutes of a 2-core Zen 4's CPU time in bf16, evaluated in static batches). SmolLM2-135M
    costs 0.27 GFLOP per token forward and 0.81 to train (`benchmarks/demo_costs.py` prints the measured costs;
    the README's Timings section has the arithmetic and each stage).
    """

    n_train: int = 1000
    n_eval: int = 200
    seed: int = 7
    # Five people with two bags each: a 298-token response (231 written sequentially) whose five paths run
    # side by side. With four people (245 tokens) a full fp32 run met every target but the speedup (1.26 per
    # problem): the trunk (outlines, conclusion) is sequential either way, and on a CPU a step of n paths
    # costs about twice a step of one, so the paths must carry enough of the response to pay for it.
    parts: tuple[int, int] = (5, 5)  # people per problem, each a parallel path
    bags: tuple[int, int] = (2, 2)  # one-digit counts a person adds up
    max_length: int = 1024  # packed rows of several examples
    epochs: float = 1.0
    # Optimizer steps of `batch_size` x `gradient_accumulation` packed rows of `max_length` tokens;
    # -1 trains `epochs` in full. Sixteen steps at a 4e-4 peak reached after 2 warm-up steps left the baseline
    # on a knife edge (issue 27: its accuracy ranged from 0.09 to 0.83 across runs); 24 steps at 3e-4 after
    # 4 warm-up steps give Adam's moments more than two gradients before the peak and both models room to
    # learn the sums. Over seeds 7-9 every model was sound, yet accuracy still spread by 7.5 points
    # (`benchmarks/demo_seeds.py`, README): one wrong sum in ten steps costs the answer.
    max_steps: int = 24
    batch_size: int = 2
    gradient_accumulation: int = 2
    # Decoder layers trained, counted from the top, with the embeddings and the final norm; -1 trains every
    # parameter. A full run with the top 8 and 12 steps left every response malformed (the model looped
    # inside its first outline), so the default trains everything, as the run that met the targets did.
    train_layers: int = -1
    # A high rate for a fine-tune: in few steps the twelve new tag tokens must be learned from scratch
    # (lower rates left many responses malformed; higher ones cost arithmetic).
    learning_rate: float = 3e-4
    warmup_steps: int = 4
    # auto: bf16 (training autocast and decoding) only where the CPU runs it natively, else fp32;
    # emulated bf16 is tens of times slower (`python benchmarks/hardware.py`)
    precision: str = "auto"
    max_new_tokens: int = 384  # room for a five-path response (298 tokens on average in the curated data, at most 306)
    eval_batch_size: int = 8
    # The paper's speedup is per-problem latency: the first `latency_problems` held-out problems are
    # decoded once more one at a time (batch 1) by both models.
    latency_problems: int = 10

    @classmethod
    def quick(cls) -> DemoSettings:
        """Every stage on a few problems: about two minutes of two AVX2 cores in fp32 (README, Timings)."""
        return cls(
            n_train=48, n_eval=4, max_length=512, max_steps=2, batch_size=1, gradient_accumulation=1,
            train_layers=4, warmup_steps=1, max_new_tokens=96, eval_batch_size=4, latency_problems=1,
        )


@dataclass
class StageLog:
    """Which stages are done and how long each took; kept in DIR/stages.json so a rerun resumes.

    Besides wall seconds it keeps each stage's process CPU seconds: on a shared machine the wall time
    counts the other processes too.
    """

    path: Path
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> StageLog:
        saved = json.loads(path.read_text()) if path.is_file() else {}
        return cls(path, saved.get("seconds", {}), saved.get("cpu_seconds", {}))

    def run(self, name: str, outputs: list[Path], work: Callable[[], None]) -> None:
        if name in self.seconds and all(p.exists() for p in outputs):
            print(f"[demo] {name}: done before ({self.seconds[name]:.0f} s), reused", flush=True)
            return
        print(f"[demo] {name} ...", flush=True)
        start, cpu_start = time.perf_counter(), time.process_time()
        work()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        self.cpu_seconds[name] = round(time.process_time() - cpu_start, 1)
        write_text_atomic(
            self.path, json.dumps({"seconds": self.seconds, "cpu_seconds": self.cpu_seconds}, indent=2) + "\n"
        )
        print(f"[demo] {name}: {self.seconds[name]:.0f} s ({self.cpu_seconds[name]:.0f} CPU s)", flush=True)


def run_demo(out: str | Path, settings: DemoSettings) -> dict:
    """Run (or resume) every stage into `out`; returns the summary."""
    from curator.export import to_datasets
    from curator.pipeline import curate_file
    from curator.synth import synthesize, write_jsonl
    from runtime.precision import choose_precision

    from .convert import convert

    precision = choose_precision(settings.precision, "cpu")  # the demo trains and decodes on the CPU
    print(f"[demo] precision {precision.name} ({precision.reason})", flush=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != json.loads(json.dumps(asdict(settings))):
        raise ValueError(f"{out} holds a run with other settings ({settings_file}); use another --out")
    write_text_atomic(settings_file, json.dumps(asdict(settings), indent=2) + "\n")
    log = StageLog.load(out / "stages.json")
    problems, held_out, curated = out / "problems.jsonl", out / "held_out.jsonl", out / "curated.jsonl"
    datasets_dir, base = out / "datasets", out / "smollm2-multiverse-base"
    models = {"multiverse": out / "multiverse-model", "autoregressive": out / "autoregressive-model"}
    reports = {name: out / f"eval-{name}.json" for name in models}
    latency = {name: out / f"latency-{name}.json" for name in models}
    hardware = out / "hardware.json"

    def synth() -> None:
        rows = synthesize(
            settings.n_train + settings.n_eval, settings.seed, k=settings.parts, bags=settings.bags, task="most"
        )
        write_jsonl(rows[: settings.n_train], problems)
        write_jsonl(rows[settings.n_train :], held_out)

    def curate() -> None:
        curate_file(problems, curated, backend="rules")
        to_datasets(curated, problems).save_to_disk(datasets_dir)

    log.run("hardware", [hardware], lambda: _measure_hardware(hardware))
    log.run("synth", [problems, held_out], synth)
    log.run("curate", [curated, datasets_dir], curate)
    log.run("convert", [base], lambda: convert("smollm2", base, overwrite=True))
    for recipe, folder in models.items():
        log.run(f"train-{recipe}", [folder], lambda r=recipe, f=folder: _train(r, base, datasets_dir, f, settings))
    for recipe, folder in models.items():
        log.run(
            f"eval-{recipe}", [reports[recipe]],
            lambda f=folder, r=reports[recipe]: _evaluate(
                f, held_out, r, settings, precision.dtype, settings.eval_batch_size
            ),
        )
    for recipe, folder in models.items():
        log.run(
            f"latency-{recipe}", [latency[recipe]],
            lambda f=folder, r=latency[recipe]: _evaluate(
                f, held_out, r, settings, precision.dtype, 1, settings.latency_problems
            ),
        )
    summary = _summarize(out, settings, log, reports, latency)
    summary["precision"] = precision.as_dict()
    summary["hardware"] = json.loads(hardware.read_text())
    log.run("report", [], lambda: _report(out, summary, reports, models))
    return summary


def _measure_hardware(path: Path) -> None:
    from runtime.precision import hardware_line, hardware_report

    report = hardware_report("cpu")
    print(f"[demo] {hardware_line(report)}", flush=True)
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")


def sft_config(output: Path, settings: DemoSettings):
    """The SFT config both demo models train with (the same steps, learning rate and rows for each)."""
    from trl_recipes import MultiverseSFTConfig

    return MultiverseSFTConfig(
        output_dir=str(output),
        max_length=settings.max_length,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_steps,
        precision=settings.precision,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
    )


def _train(recipe: str, base: Path, datasets_dir: Path, output: Path, settings: DemoSettings) -> None:
    from trl_recipes import MultiverseModelConfig, RecipeArguments
    from trl_recipes.loading import load_model
    from trl_recipes.train import train

    model, tokenizer = load_model(MultiverseModelConfig(model_name_or_path=str(base)), recipe)
    if settings.train_layers >= 0:
        _train_top_layers(model, settings.train_layers)
    outcome = train(
        RecipeArguments(recipe=recipe, dataset_name=str(datasets_dir), dataset_train_split=recipe, pack_examples=True),
        sft_config(output, settings),
        model=model,
        tokenizer=tokenizer,
    )
    print(f"[demo] {recipe}: {len(outcome.losses)} steps, loss {outcome.losses[0]:.3f} -> {outcome.losses[-1]:.3f}")


def _train_top_layers(model, layers: int) -> None:
    """Freeze all but the top `layers` decoder layers, the final norm and the embeddings.

    The frozen lower layers run forward only (backward stops at the first trained layer), which saves
    most of a CPU's training compute; the embeddings keep training for the new tag tokens.
    """
    backbone = model.get_decoder()
    model.requires_grad_(False)
    for layer in backbone.layers[len(backbone.layers) - layers :] if layers else []:
        layer.requires_grad_(True)
    backbone.norm.requires_grad_(True)
    model.get_input_embeddings().requires_grad_(True)
    model.get_output_embeddings().requires_grad_(True)


def _evaluate(
    model_dir: Path, held_out: Path, report_path: Path, settings: DemoSettings, dtype, batch_size: int,
    limit: int | None = None,
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.baseline import engine_model
    from evaluation.continuous import use_continuous
    from evaluation.evaluate import evaluate, load_records

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = engine_model(model, tokenizer)  # the plain baseline decodes through the same engine
    records, _ = load_records(held_out, "builtin", limit)
    # both models were trained on the same prompts, the parallel instruction included
    report = evaluate(
        model, tokenizer, records, "builtin", max_new_tokens=settings.max_new_tokens,
        batch_size=batch_size, parallel_prompt=True, continuous=use_continuous("auto", model.device),
    )
    write_text_atomic(report_path, json.dumps(report, indent=2) + "\n")


def _summarize(
    out: Path, settings: DemoSettings, log: StageLog, reports: dict[str, Path], latency: dict[str, Path]
) -> dict:
    from .comparison import comparison_targets, verdict_line

    mv = json.loads(reports["multiverse"].read_text())
    ar = json.loads(reports["autoregressive"].read_text())
    mv_latency = json.loads(latency["multiverse"].read_text())
    ar_latency = json.loads(latency["autoregressive"].read_text())
    summary = {
        "n_eval": len(mv["records"]),
        "accuracy_multiverse": mv["accuracy"],
        "accuracy_autoregressive": ar["accuracy"],
        "accuracy_interval_multiverse": mv["accuracy_interval"],
        "accuracy_interval_autoregressive": ar["accuracy_interval"],
        "step_accuracy_multiverse": mv.get("step_accuracy"),
        "step_accuracy_autoregressive": ar.get("step_accuracy"),
        "step_counts_multiverse": mv.get("step_counts"),
        "step_counts_autoregressive": ar.get("step_counts"),
        "well_formed": mv["well_formed"],
        "parallelism": mv["parallelism"],
        "speedup": round(ar["wall_time_s"] / mv["wall_time_s"], 4),
        "eval_batch_size": settings.eval_batch_size,
        "speedup_batch1": round(ar_latency["wall_time_s"] / mv_latency["wall_time_s"], 4),
        "latency_problems": mv_latency["n"],
        "latency_multiverse_s": round(mv_latency["wall_time_s"] / mv_latency["n"], 4),
        "latency_autoregressive_s": round(ar_latency["wall_time_s"] / ar_latency["n"], 4),
        "wall_time_multiverse_s": mv["wall_time_s"],
        "wall_time_autoregressive_s": ar["wall_time_s"],
        "mean_tokens_multiverse": mv["mean_tokens"],
        "mean_tokens_autoregressive": ar["mean_tokens"],
        "n_train": settings.n_train,
        "quick": replace(settings, precision="auto") == DemoSettings.quick(),
        "stage_seconds": dict(log.seconds),
        "stage_cpu_seconds": dict(log.cpu_seconds),
        "total_seconds": round(sum(log.seconds.values()), 1),
        "total_cpu_seconds": round(sum(log.cpu_seconds.values()), 1),
    }
    # the comparison targets (multiverse/comparison.py) hold only against a sound baseline; the Multiverse
    # model's own targets (format, parallelism) and the sample size stand apart
    comparison, verdict = comparison_targets(mv, ar, summary["speedup_batch1"])
    summary["sound_baseline"] = verdict["sound"]
    summary["targets"] = {
        **comparison,
        "well_formed >= 0.95": summary["well_formed"] >= 0.95,
        "parallelism >= 1.5": summary["parallelism"] >= 1.5,
        "n_eval >= 200": summary["n_eval"] >= 200,
    }
    summary["verdict"] = verdict_line(verdict, summary["targets"])
    return summary


def _report(out: Path, summary: dict, reports: dict[str, Path], models: dict[str, Path]) -> None:
    from evaluation.intervals import PARITY_MARGIN
    from runtime.precision import hardware_line

    from .comparison import ACCURACY_FLOOR, STEP_FLOOR

    def accuracy(name: str) -> str:
        low, high = summary[f"accuracy_interval_{name}"]
        return f"{summary[f'accuracy_{name}']:.3f} ({low:.3f} to {high:.3f})"

    def steps(name: str) -> str:
        value, counts = summary[f"step_accuracy_{name}"], summary[f"step_counts_{name}"]
        return "-" if value is None else f"{value:.3f} ({counts['step_units_right']} of {counts['step_units']})"

    summary["stage_seconds"]["report"] = 0.0
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    per_problem = {name: json.loads(path.read_text())["records"] for name, path in reports.items()}
    _plots(out, summary, per_problem)
    lines = [
        "# Multiverse demo",
        "",
        f"**{summary['verdict']}**" if summary["sound_baseline"] else f"**{summary['verdict']}.** Both models must "
        f"reach the floors (final accuracy {ACCURACY_FLOOR:.2f}, step accuracy {STEP_FLOOR:.2f}) before they are "
        "compared; the numbers below compare against a model that did not learn the task.",
        "",
        f"SmolLM2-135M-Instruct trained on {summary['n_train']} curated problems, "
        f"evaluated on {summary['n_eval']} held-out ones.",
        "Each problem: several people add up their bags one at a time (independent paths), then the largest",
        "count is picked (the conclusion). Both models decode greedily through the same engine, in the same",
        "batches and with the same `max_new_tokens`; the baseline writes no blocks, so it decodes one token per step.",
        "",
        "| measure | Multiverse | autoregressive |",
        "| --- | --- | --- |",
        f"| accuracy (Wilson 95% interval) | {accuracy('multiverse')} | {accuracy('autoregressive')} |",
        f"| step accuracy (sums and totals right) | {steps('multiverse')} | {steps('autoregressive')} |",
        f"| well-formed responses | {summary['well_formed']:.3f} | - |",
        f"| degree of parallelism (tokens / decode steps) | {summary['parallelism']:.3f} | 1.000 |",
        f"| generation wall time (s) | {summary['wall_time_multiverse_s']:.1f} | "
        f"{summary['wall_time_autoregressive_s']:.1f} |",
        f"| mean generated tokens | {summary['mean_tokens_multiverse']:.1f} | "
        f"{summary['mean_tokens_autoregressive']:.1f} |",
        "",
        f"Wall-clock speedup (autoregressive time / Multiverse time): **{summary['speedup']:.3f}** at the eval batch "
        f"of {summary['eval_batch_size']}, **{summary['speedup_batch1']:.3f}** per problem at batch 1 (the paper's "
        f"latency; first {summary['latency_problems']} problems: {summary['latency_autoregressive_s']:.2f} s vs "
        f"{summary['latency_multiverse_s']:.2f} s). On a compute-bound CPU a step of n paths costs nearly n steps "
        "of one, so the gain shrinks as the batch widens.",
        "",
        f"Precision: {summary['precision']['precision']} ({summary['precision']['reason']}).",
        f"Hardware: {hardware_line(summary['hardware'])}.",
        "",
        "## Targets",
        "",
        f"Accuracy parity: the Multiverse model within {PARITY_MARGIN} below the baseline, or the two Wilson 95% "
        "intervals overlapping (the gap is then within the sampling noise of the held-out problems). Comparison "
        f"targets count only when both models are sound: accuracy >= {ACCURACY_FLOOR:.2f} and step accuracy >= "
        f"{STEP_FLOOR:.2f}.",
        "",
        *[f"- {'met' if ok else 'NOT met'}: {name}" for name, ok in summary["targets"].items()],
        "",
        "## Stage times (s)",
        "",
        *[f"- {name}: {seconds}" for name, seconds in summary["stage_seconds"].items()],
        f"- total: {summary['total_seconds']} ({summary['total_seconds'] / 60:.1f} minutes; "
        f"{summary['total_cpu_seconds']} CPU seconds)",
        "",
        "![accuracy](accuracy.png) ![parallelism](parallelism.png) ![speedup](speedup.png)",
        "",
    ]
    write_text_atomic(out / "report.md", "\n".join(lines))
    _cards(summary, reports, models)


def _plots(out: Path, summary: dict, per_problem: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = ["Multiverse", "autoregressive"]
    ax.bar(
        names, [summary["accuracy_multiverse"], summary["accuracy_autoregressive"]], color=["tab:purple", "tab:gray"]
    )
    ax.bar(["well-formed"], [summary["well_formed"]], color="tab:green")
    ax.set_ylim(0, 1)
    ax.set_title("held-out accuracy and well-formedness")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    parallelism = [r["parallelism"] for r in per_problem["multiverse"]]
    ax.hist(parallelism, bins=20, color="tab:purple")
    ax.axvline(summary["parallelism"], color="black", linestyle="--", label=f"mean {summary['parallelism']:.2f}")
    ax.set_xlabel("degree of parallelism (tokens / decode steps)")
    ax.set_ylabel("problems")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "parallelism.png", dpi=120)
    plt.close(fig)

    # per problem: decode steps the baseline needed / decode steps the Multiverse model needed
    ar_steps = {r["id"]: r["decode_steps"] for r in per_problem["autoregressive"]}
    ratios = [
        ar_steps[r["id"]] / r["decode_steps"]
        for r in per_problem["multiverse"]
        if r["id"] in ar_steps and r["decode_steps"]
    ]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(ratios, bins=20, color="tab:orange")
    ax.axvline(summary["speedup"], color="black", linestyle="--", label=f"wall-clock {summary['speedup']:.2f}x")
    ax.set_xlabel("decode steps: autoregressive / Multiverse")
    ax.set_ylabel("problems")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "speedup.png", dpi=120)
    plt.close(fig)


def _cards(summary: dict, reports: dict[str, Path], models: dict[str, Path]) -> None:
    from cards import eval_results_from_report, render_model_card

    for recipe, folder in models.items():
        report = json.loads(reports[recipe].read_text())
        card = render_model_card(
            repo_id=f"your-name/smollm2-135m-{recipe}-demo",
            base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
            eval_results=eval_results_from_report(
                report, dataset_type="multiverse-synth", dataset_name="held-out synthetic problems"
            ),
            reports=[report],
            summary=(
                "SmolLM2-135M-Instruct trained by `multiverse demo` on curated synthetic problems"
                + (" in the Multiverse format: it forks into parallel paths and merges them." if recipe == "multiverse"
                   else ", flattened to plain sequential text: the autoregressive baseline.")
            ),
            training={"recipe": recipe, "examples": summary["n_train"]},
            kind="multiverse" if recipe == "multiverse" else "baseline",  # the baseline loads as its base's class
        )
        card.save(folder / "README.md")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="multiverse demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="run folder (a rerun resumes it)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run: small data and few steps")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto",
        help="training and decoding precision; auto (default): bf16 only where this CPU runs it natively, else fp32",
    )
    args = parser.parse_args(argv)
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    summary = run_demo(args.out, replace(settings, precision=args.precision))
    print(
        json.dumps(
            {k: v for k, v in summary.items() if k not in ("stage_seconds", "stage_cpu_seconds", "hardware")}, indent=2
        )
    )
    print(f"[demo] report: {Path(args.out) / 'report.md'}")
    print(f"[demo] {summary['verdict']}")
    return 0
