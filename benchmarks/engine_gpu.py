"""GPU benchmark of the Multiverse Engine: random models with the real shapes of Qwen2.5-1.5B and -7B.

For each model (bf16, sdpa, tags added), workload (skeletons forced through a logits processor: flat
4x256, flat 8x256, nested 2x(2x128); one replayed trace from ../shared/traces) and batch (1, 8, 32):
(a) transformers `generate` decoding the same number of tokens per row,
(b) the engine with parallelism off (`max_depth=0`: paths one after another),
(c) the engine with fork/merge,
and the structural ideal (SPEC.md §8). Reported: tokens/s, speedup of (c) over (a), fraction of the ideal,
peak GPU memory, and the per-step host overhead: step wall time minus model forward time (CUDA events).
Writes `<out>.json`, `<out>.png` and `<out>.md` (a README table). One run, < 8 min on one H100/H200.

`--dry-run` runs the same code on tiny shapes on CPU (fp32, forward time by the wall clock); the test
suite runs it. Weights are random: the numbers measure decoding cost, not answers. The forcing
processor runs in every engine alike and its host time counts as overhead in all three.

    $ python benchmarks/engine_gpu.py                 # on a GPU
    $ python benchmarks/engine_gpu.py --dry-run --out /tmp/engine_gpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList, Qwen2Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from engine_skeleton import SkeletonProcessor, block, replay_template, skeleton_template  # noqa: E402
from tiny import tiny_tokenizer  # noqa: E402

from modeling_multiverse import (  # noqa: E402
    MultiverseConfig,
    MultiverseForCausalLM,
    add_multiverse_tokens,
    add_tag_tokens,
    prompt_ids,
    structure_of_ids,
    tag_ids_from_tokenizer,
)

TRACES = ROOT.parent / "shared" / "traces" / "math500_multiverse_responses.jsonl"

# Qwen2.5 shapes (config.json of Qwen/Qwen2.5-1.5B-Instruct and -7B-Instruct)
MODELS = {
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
TINY = {"tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)}


def skeletons(scale: int) -> dict[str, list]:
    """Flat 4 x 256, flat 8 x 256 and nested 2 x (2 x 128) free tokens per path, at `scale` = 256."""
    half = scale // 2
    flat = lambda n: [8, block([str(i + 1) for i in range(n)], [[scale]] * n, outline=6, conclusion=16), 8]  # noqa: E731
    nested = [
        8,
        block(
            ["1", "2"], [[4, block([f"{k}.1", f"{k}.2"], [[half], [half]], outline=6), 4] for k in (1, 2)], outline=6
        ),
        8,
    ]
    return {f"flat4x{scale}": flat(4), f"flat8x{scale}": flat(8), f"nested2x(2x{half})": nested}


class InVocabulary(LogitsProcessor):
    """The tokenizer has fewer ids than the model's real-size vocabulary: choose among the tokenizer's."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, input_ids, scores):
        scores[:, self.size :] = -float("inf")
        return scores


def build_model(shape: dict, tokenizer, device: str, dtype: torch.dtype):
    text_config = Qwen2Config(
        **shape, max_position_embeddings=32768, rope_theta=1e6,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MultiverseForCausalLM(MultiverseConfig(text_config=text_config.to_dict()))
    finally:
        torch.set_default_dtype(previous)
    add_multiverse_tokens(model, tokenizer)
    model.set_attn_implementation("sdpa")
    return model.eval()


class ForwardClock:
    """Sums the model's forward time: CUDA events on a GPU, the wall clock on CPU."""

    def __init__(self, model):
        self.model, self.cuda = model, model.device.type == "cuda"
        self.calls, self.pairs, self.seconds = 0, [], 0.0

    @contextmanager
    def running(self):
        forward = self.model.forward

        def timed(*args, **kwargs):
            self.calls += 1
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = forward(*args, **kwargs)
                end.record()
                self.pairs.append((start, end))
                return out
            begin = time.perf_counter()
            out = forward(*args, **kwargs)
            self.seconds += time.perf_counter() - begin
            return out

        self.model.forward = timed
        try:
            yield self
        finally:
            del self.model.forward

    def forward_seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.pairs) / 1000
        return self.seconds


def timed_run(model, fn) -> dict:
    """Wall time, forward time, forward calls and peak memory of one decoding run."""
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    clock = ForwardClock(model)
    with clock.running(), torch.no_grad():
        begin = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - begin
    forward = clock.forward_seconds()
    steps = max(clock.calls, 1)
    return {
        "out": out,
        "seconds": wall,
        "forward_seconds": forward,
        "forward_calls": clock.calls,
        "host_ms_per_step": round(1000 * (wall - forward) / steps, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
    }


def prompts(tokenizer, batch: int):
    ids = [prompt_ids(tokenizer, f"Question {i}: how many divisors does {36 + 7 * i} have?") for i in range(batch)]
    return tokenizer.pad({"input_ids": ids}, padding=True, padding_side="left", return_tensors="pt")


def measure(model, tokenizer, template, batch: int) -> dict:
    enc = {k: v.to(model.device) for k, v in prompts(tokenizer, batch).items()}
    processors = LogitsProcessorList([InVocabulary(len(tokenizer)), SkeletonProcessor(template, tokenizer)])
    budget = len(template.ids) + 8

    def engine(depth: int):
        return lambda: model.generate(
            **enc, tokenizer=tokenizer, logits_processor=processors, do_sample=False,
            max_new_tokens=budget, return_dict_in_generate=True, max_depth=depth,
        )

    c = timed_run(model, engine(8))
    out_c = c.pop("out")
    tokens = max(out_c.generated_tokens)
    a = timed_run(
        model,
        lambda: model.generate(
            **enc, multiverse=False, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
            pad_token_id=tokenizer.pad_token_id, logits_processor=LogitsProcessorList([InVocabulary(len(tokenizer))]),
        ),
    )
    a.pop("out")
    b = timed_run(model, engine(0))
    out_b = b.pop("out")
    start = enc["input_ids"].shape[1]
    responses = [
        out_c.sequences[r, start : start + out_c.generated_tokens[r] + out_c.closing_tokens[r]].tolist()
        for r in range(batch)
    ]
    ideal = sum(len(r) for r in responses) / sum(
        structure_of_ids(r, tag_ids_from_tokenizer(tokenizer)).critical_path_tokens() for r in responses
    )
    total = sum(out_c.generated_tokens)
    result = {"batch": batch, "tokens_per_row": tokens, "structural_ideal": round(ideal, 3)}
    for key, run, generated in (
        ("a_hf_generate", a, batch * tokens),
        ("b_engine_sequential", b, total),
        ("c_engine", c, total),
    ):
        result[key] = {
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in run.items()},
            "tok_s": round(generated / run["seconds"], 1),
        }
    result["speedup_vs_a"] = round(result["c_engine"]["tok_s"] / result["a_hf_generate"]["tok_s"], 3)
    result["fraction_of_ideal"] = round(result["speedup_vs_a"] / ideal, 3)
    result["same_tokens_b_c"] = out_b.sequences.tolist() == out_c.sequences.tolist()
    return result


def table(results: dict) -> str:
    lines = [
        "| model | workload | batch | ideal | (a) tok/s | (b) tok/s | (c) tok/s | speedup | of ideal "
        "| host ms/step (a/c) | peak GiB (c) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        model, workload, _ = name.split("|")
        lines.append(
            f"| {model} | {workload} | {r['batch']} | {r['structural_ideal']:.2f} | {r['a_hf_generate']['tok_s']} | "
            f"{r['b_engine_sequential']['tok_s']} | {r['c_engine']['tok_s']} | {r['speedup_vs_a']:.2f}x | "
            f"{r['fraction_of_ideal']:.2f} | {r['a_hf_generate']['host_ms_per_step']:.2f} / "
            f"{r['c_engine']['host_ms_per_step']:.2f} | "
            f"{r['c_engine']['peak_memory_gib']} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 4))
    ax.bar([i - 0.2 for i in x], [results[n]["structural_ideal"] for n in names], 0.4, label="structural ideal")
    ax.bar(
        [i + 0.2 for i in x], [results[n]["speedup_vs_a"] for n in names], 0.4, label="engine vs transformers generate"
    )
    ax.set_xticks(list(x), [n.replace("|", " ") for n in names], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup (x)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny shapes on CPU (fp32): checks the script, not the GPU"
    )
    parser.add_argument("--models", default=None, help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32; dry run 1,2)")
    parser.add_argument(
        "--workloads", default=None, help="only workloads whose name contains one of these (comma-separated)"
    )
    parser.add_argument(
        "--max-trace-tokens", type=int, default=3000, help="replay the shortest trace if it is at most this long"
    )
    parser.add_argument("--out", default="benchmarks/engine_gpu", help="prefix of the .json, .png and .md written")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, dtype, shapes, scale, batches = "cpu", torch.float32, TINY, 8, [1, 2]
        args.max_trace_tokens = min(args.max_trace_tokens, 0)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run to check the script on CPU", file=sys.stderr)
            return 1
        device, dtype, scale, batches = "cuda", torch.bfloat16, 256, [1, 8, 32]
        names = args.models.split(",") if args.models else list(MODELS)
        shapes = {name: MODELS[name] for name in names}
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    tokenizer = tiny_tokenizer()
    add_tag_tokens(tokenizer)
    templates = {name: skeleton_template(tokenizer, body, answer=8) for name, body in skeletons(scale).items()}
    if TRACES.is_file() and args.max_trace_tokens:
        rows = [json.loads(line) for line in TRACES.open()]
        replays = sorted(
            ((r["id"], replay_template(tokenizer, r["response"])) for r in rows), key=lambda t: len(t[1].ids)
        )
        if replays and len(replays[0][1].ids) <= args.max_trace_tokens:
            templates[f"trace:{replays[0][0]}"] = replays[0][1]

    if args.workloads:
        wanted = args.workloads.split(",")
        templates = {name: t for name, t in templates.items() if any(w in name for w in wanted)}
    results = {}
    hardware = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    for model_name, shape in shapes.items():
        model = build_model(shape, tokenizer, device, dtype)
        if device == "cuda":  # warm-up: kernels, allocator
            measure(model, tokenizer, templates[next(iter(templates))], 1)
        for workload, template in templates.items():
            for batch in batches:
                name = f"{model_name}|{workload}|{batch}"
                r = results[name] = measure(model, tokenizer, template, batch)
                print(
                    f"{name:>40}  ideal {r['structural_ideal']:.2f}x | (a) {r['a_hf_generate']['tok_s']} tok/s | "
                    f"(b) {r['b_engine_sequential']['tok_s']} | (c) {r['c_engine']['tok_s']} tok/s | "
                    f"speedup {r['speedup_vs_a']:.2f}x = {r['fraction_of_ideal']:.2f} of ideal | "
                    f"host ms/step a {r['a_hf_generate']['host_ms_per_step']:.2f} c "
                    f"{r['c_engine']['host_ms_per_step']:.2f} | "
                    f"peak {r['c_engine']['peak_memory_gib']} GiB",
                    flush=True,
                )
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"hardware": hardware, "results": results}, indent=2))
    out.with_suffix(".md").write_text(
        f"Multiverse Engine on {hardware} (random weights, {dtype}, sdpa)\n\n{table(results)}\n"
    )
    plot(results, out.with_suffix(".png"), f"Multiverse Engine, {hardware}")
    print(table(results))
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.png')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
