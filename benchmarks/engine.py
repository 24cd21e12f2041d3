"""Benchmark of the Multiverse Engine against transformers' `generate` on the embedded default (SmolLM2-135M).

Workloads: forced skeletons (n branches x m free tokens per path; outlines, tags and lengths forced,
content chosen by the model) and responses from ../shared/traces replayed as forced tokens. For each:
(a) transformers `generate` (plain autoregressive) producing the same number of tokens,
(b) the engine with parallelism off (`max_depth=0`: paths one after another),
(c) the engine.
Prints wall time, tokens/s, decode steps, peak KV bytes, the structural ideal (SPEC.md §8) and the
wall-clock speedup of (c) over (a) as a fraction of that ideal; writes a PNG. Runs alternate (a),
(b), (c) `--repeats` times and keep each one's fastest, since the CPU is shared.

    $ python benchmarks/engine.py                   # short default grid (a few minutes on 2 cores)
    $ python benchmarks/engine.py --full --traces 3  # 2/4/8 branches x 32..256 tokens, 3 traces
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LogitsProcessorList

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from engine_skeleton import SkeletonProcessor, block, replay_template, skeleton_template  # noqa: E402

from modeling_multiverse import MultiverseForCausalLM, prompt_ids, structure_of_ids, tag_ids_from_tokenizer  # noqa: E402

DEFAULT_GRID = [(2, 64), (4, 64), (8, 32)]
FULL_GRID = [(n, m) for n in (2, 4, 8) for m in (32, 64, 128, 256)]
TRACES = ROOT.parent / "shared" / "traces" / "math500_multiverse_responses.jsonl"


def load_model(path: str | None):
    if path is None:
        from multiverse.convert import main as convert

        path = str(Path(tempfile.gettempdir()) / "multiverse-bench-smollm2")
        if not (Path(path) / "config.json").is_file():
            convert(["--base", "smollm2", "--out", path])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = MultiverseForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, tokenizer


def kv_bytes_per_token(model) -> int:
    c = model.config.text_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * model.dtype.itemsize


def timed(fn):
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return time.perf_counter() - start, out


def measure(model, tokenizer, prompt_ids, template, repeats: int) -> dict:
    processors = LogitsProcessorList([SkeletonProcessor(template, tokenizer)])
    budget = len(template.ids) + 8

    def engine(depth):
        return model.generate(
            prompt_ids, tokenizer=tokenizer, logits_processor=processors, do_sample=False,
            max_new_tokens=budget, return_dict_in_generate=True, max_depth=depth,
        )

    best = {}
    for _ in range(repeats):
        t_c, out_c = timed(lambda: engine(8))
        tokens = out_c.generated_tokens[0]
        t_a, _ = timed(
            lambda: model.generate(
                prompt_ids, multiverse=False, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        t_b, out_b = timed(lambda: engine(0))
        for key, value in (("a", t_a), ("b", t_b), ("c", t_c)):
            best[key] = min(best.get(key, float("inf")), value)
    response = out_c.sequences[0, prompt_ids.shape[1] :].tolist()
    assert out_b.sequences[0, prompt_ids.shape[1] :].tolist() == response, "parallelism changed the tokens"
    arrays = structure_of_ids(response, tag_ids_from_tokenizer(tokenizer))
    ideal = len(response) / arrays.critical_path_tokens()
    per_token = kv_bytes_per_token(model)
    prompt = prompt_ids.shape[1]
    canonical_kv = (prompt + len(response)) * per_token
    speedup = best["a"] / best["c"]
    return {
        "tokens": tokens,
        "structural_ideal": round(ideal, 3),
        "a_hf_generate": {
            "seconds": round(best["a"], 3), "tok_s": round(tokens / best["a"], 2),
            "steps": tokens, "peak_kv_bytes": (prompt + tokens) * per_token,
        },
        "b_engine_sequential": {
            "seconds": round(best["b"], 3), "tok_s": round(tokens / best["b"], 2),
            "steps": out_b.decode_steps[0], "peak_kv_bytes": out_b.cache_tokens * per_token,
        },
        "c_engine": {
            "seconds": round(best["c"], 3), "tok_s": round(tokens / best["c"], 2),
            "steps": out_c.decode_steps[0], "peak_kv_bytes": out_c.cache_tokens * per_token,
        },
        "step_ratio_vs_ideal": round(tokens / out_c.decode_steps[0] / ideal, 3),
        "speedup_vs_a": round(speedup, 3),
        "speedup_fraction_of_ideal": round(speedup / ideal, 3),
        "peak_kv_over_canonical": round(out_c.cache_tokens * per_token / canonical_kv, 3),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4))
    ax.bar([i - 0.2 for i in x], [results[n]["structural_ideal"] for n in names], 0.4, label="structural ideal")
    ax.bar(
        [i + 0.2 for i in x], [results[n]["speedup_vs_a"] for n in names], 0.4, label="engine vs transformers generate"
    )
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel("speedup (x)")
    ax.set_title("Multiverse Engine, wall clock, SmolLM2-135M fp32 on CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="converted model folder (default: convert the embedded SmolLM2)")
    parser.add_argument("--full", action="store_true", help="the full grid: 2/4/8 branches x 32/64/128/256 tokens")
    parser.add_argument(
        "--cases", default=None, help="comma-separated NxM skeletons, e.g. 4x64,8x32 (overrides the grid)"
    )
    parser.add_argument("--traces", type=int, default=1, help="how many (shortest) traces to replay")
    parser.add_argument("--max-trace-tokens", type=int, default=900, help="skip longer traces")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/engine", help="prefix of the .json and .png written")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    question = "What is the smallest positive integer n such that 3n is a perfect square and 2n is a perfect cube?"
    question_ids = torch.tensor([prompt_ids(tokenizer, question)])

    workloads = {}
    grid = FULL_GRID if args.full else DEFAULT_GRID
    if args.cases:
        grid = [tuple(int(v) for v in case.split("x")) for case in args.cases.split(",")]
    for n, m in grid:
        labels = [str(i + 1) for i in range(n)]
        workloads[f"{n}x{m}"] = skeleton_template(
            tokenizer, [8, block(labels, [[m]] * n, outline=6, conclusion=16), 8], answer=8
        )
    if args.traces and TRACES.is_file():
        rows = [json.loads(line) for line in TRACES.open()]
        replays = [(r["id"], replay_template(tokenizer, r["response"])) for r in rows]
        replays = sorted((t for t in replays if len(t[1].ids) <= args.max_trace_tokens), key=lambda t: len(t[1].ids))
        for trace_id, template in replays[: args.traces]:
            workloads[f"trace:{trace_id}"] = template

    results = {}
    for name, template in workloads.items():
        results[name] = measure(model, tokenizer, question_ids, template, args.repeats)
        r = results[name]
        print(
            f"{name:>28}  tokens {r['tokens']:4d}  ideal {r['structural_ideal']:.2f}x | "
            f"(a) {r['a_hf_generate']['seconds']:.2f}s {r['a_hf_generate']['tok_s']:.1f} tok/s | "
            f"(b) {r['b_engine_sequential']['seconds']:.2f}s {r['b_engine_sequential']['steps']} steps | "
            f"(c) {r['c_engine']['seconds']:.2f}s {r['c_engine']['tok_s']:.1f} tok/s {r['c_engine']['steps']} steps | "
            f"speedup {r['speedup_vs_a']:.2f}x = {r['speedup_fraction_of_ideal']:.2f} of ideal | "
            f"KV {r['peak_kv_over_canonical']:.3f}x canonical",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
