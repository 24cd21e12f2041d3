"""Exact merge against re-prefill merge (how a stock vLLM/SGLang must serve a Multiverse model), same model and data.

Evaluates one model on held-out problems twice with `multiverse eval`'s loop, greedy: `merge="exact"` (the
conclusion reads the paths' cache, SPEC.md §6) and `merge="reprefill"` (the paths re-fed causally before the
conclusion, so path k sees paths 1..k-1). Prints per mode accuracy with its 95% Wilson interval,
well-formedness, parallelism and the re-prefilled tokens; then conclusion-token agreement: per problem,
the fraction of conclusion tokens (all `<Conclusion>` bodies, in order) equal position by position
between the two outputs, over the longer of the two, averaged over the problems where either has one.

With `--traces` (gold responses, e.g. a demo run's `curated.jsonl`, questions from `--problems`), it also reads
each gold response with one block, not nested, both ways, teacher-forced: the exact merge's reading is one forward
under SPEC.md §4 and 5, the re-prefill's is one plain causal forward (for such a response that is exactly what a
stock engine computes from the first `<Conclusion>` on). Over the tokens after that tag it prints the top-1
agreement of the two readings and the mean gold-token log-probability under each, and what re-prefill costs:
path tokens re-fed and how many positions later the conclusion sits (sum of the paths minus the longest).

    $ python benchmarks/merge_modes.py --model runs/demo/multiverse-model --data runs/demo/held_out.jsonl --limit 200
    $ python benchmarks/merge_modes.py --model M --data runs/demo/held_out.jsonl \
        --traces runs/demo/curated.jsonl --problems runs/demo/problems.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.evaluate import evaluate, load_records  # noqa: E402
from evaluation.intervals import wilson_interval  # noqa: E402
from modeling_multiverse import parse_ids, prompt_ids, tag_ids_from_tokenizer  # noqa: E402
from modeling_multiverse.engine import MERGE_MODES  # noqa: E402
from modeling_multiverse.structure import CONCLUSION, TAGS  # noqa: E402
from runtime.jsonl import iter_jsonl  # noqa: E402
from runtime.precision import (  # noqa: E402
    PRECISIONS,
    choose_precision,
    hardware_line,
    hardware_report,
)

CONCLUSION_BODY = re.compile(r"<Conclusion>(.*?)</Conclusion>", re.DOTALL)


def conclusion_tokens(tokenizer, response: str) -> list[int]:
    """The token ids of every `<Conclusion>` body of a response, in order (nested ones where they stand)."""
    bodies = CONCLUSION_BODY.findall(response)
    return [t for body in bodies for t in tokenizer(body, add_special_tokens=False)["input_ids"]]


def agreement(a: list[int], b: list[int]) -> float | None:
    """Fraction of positions where two token lists agree, over the longer; None when both are empty.

    >>> agreement([1, 2, 3], [1, 5, 3, 4])
    0.5
    """
    if not a and not b:
        return None
    return sum(x == y for x, y in zip(a, b)) / max(len(a), len(b))


def compare(tokenizer, reports: dict[str, dict]) -> dict:
    """Headline numbers per mode and the conclusion-token agreement of the two modes' outputs."""
    summary = {}
    for mode, report in reports.items():
        correct = sum(bool(r["correct"]) for r in report["records"])
        low, high = wilson_interval(correct, report["n"])
        summary[mode] = {
            "n": report["n"],
            "accuracy": report["accuracy"],
            "accuracy_wilson95": [round(low, 4), round(high, 4)],
            "well_formed": report["well_formed"],
            "parallelism": report["parallelism"],
            "mean_reprefill_tokens": report["mean_reprefill_tokens"],
            "wall_time_s": report["wall_time_s"],
        }
    exact, refill = reports["exact"]["records"], reports["reprefill"]["records"]
    scores = [
        agreement(conclusion_tokens(tokenizer, a["response"]), conclusion_tokens(tokenizer, b["response"]))
        for a, b in zip(exact, refill)
    ]
    counted = [s for s in scores if s is not None]
    summary["conclusion_agreement"] = sum(counted) / len(counted) if counted else None
    summary["problems_with_conclusions"] = len(counted)
    summary["identical_responses"] = sum(a["response"] == b["response"] for a, b in zip(exact, refill)) / len(exact)
    summary["same_answer"] = sum(a["predicted"] == b["predicted"] for a, b in zip(exact, refill)) / len(exact)
    return summary


@torch.inference_mode()
def teacher_forced(model, tokenizer, traces: list[dict], questions: dict[str, str], kind: str) -> dict:
    """Gold one-block responses read under exact merge and under re-prefill (see the module docstring)."""
    tag_ids = tag_ids_from_tokenizer(tokenizer)
    agree = scored = read = refed = shift = response_tokens = 0
    gold = {"exact": 0.0, "reprefill": 0.0}
    for trace in traces:
        response = tokenizer(trace["multiverse"], add_special_tokens=False)["input_ids"]
        blocks = list(parse_ids(response, tag_ids).iter_blocks())
        if len(blocks) != 1 or trace["id"] not in questions:
            continue
        paths = [unit.end - unit.start for unit in blocks[0].paths]
        prompt = prompt_ids(tokenizer, questions[trace["id"]], kind, parallel=True)
        ids = torch.tensor([prompt + response], device=model.device)
        first = len(prompt) + response.index(tag_ids[TAGS[CONCLUSION]]) + 1  # tokens from here on read differently
        exact = model(ids).logits[0, first - 1 : -1].float().log_softmax(-1)
        stock = model.lm_head(model.model(input_ids=ids).last_hidden_state)[0, first - 1 : -1].float().log_softmax(-1)
        targets = ids[0, first:, None]
        agree += int((exact.argmax(-1) == stock.argmax(-1)).sum())
        gold["exact"] += float(exact.gather(1, targets).sum())
        gold["reprefill"] += float(stock.gather(1, targets).sum())
        scored += targets.shape[0]
        read += 1
        refed += sum(paths)
        shift += sum(paths) - max(paths)
        response_tokens += len(response)
    if not read:
        return {"traces": 0}
    return {
        "traces": read,
        "tokens_scored": scored,
        "top1_agreement": agree / scored,
        "gold_logprob_exact": gold["exact"] / scored,
        "gold_logprob_reprefill": gold["reprefill"] / scored,
        "reprefill_tokens": refed / read,
        "reprefill_share_of_response": refed / response_tokens,
        "conclusion_position_shift": shift / read,
    }


def run_mode(model, tokenizer, records: list[dict], kind: str, mode: str, args) -> dict:
    """One `multiverse eval` pass under `merge=mode`, with the mean re-prefilled tokens per problem added."""
    model.generation_config.merge = mode
    refed: list[int] = []
    generate = model.generate

    def counting_generate(*a, **kw):  # the engine reports the re-fed tokens per prompt; evaluate() drops them
        out = generate(*a, **kw)
        refed.extend(out.reprefill_tokens)
        return out

    model.generate = counting_generate
    try:
        report = evaluate(model, tokenizer, records, kind, args.max_new_tokens, args.batch_size, parallel_prompt=True)
    finally:
        del model.generate
    report["mean_reprefill_tokens"] = sum(refed) / len(refed) if refed else 0.0
    return report


def format_table(summary: dict) -> str:
    lines = [
        "| merge | n | accuracy (95% Wilson) | well-formed | parallelism | re-prefilled tokens / problem | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode in MERGE_MODES:
        s = summary[mode]
        low, high = s["accuracy_wilson95"]
        lines.append(f"| {mode} | {s['n']} | {s['accuracy']:.1%} [{low:.1%}, {high:.1%}] | {s['well_formed']:.1%} "
                     f"| {s['parallelism']:.3f} | {s['mean_reprefill_tokens']:.1f} | {s['wall_time_s']:.0f} |")
    agree = summary["conclusion_agreement"]
    lines.append(f"\nconclusion-token agreement: {'n/a' if agree is None else f'{agree:.1%}'} "
                 f"over {summary['problems_with_conclusions']} problems with a conclusion; "
                 f"identical responses {summary['identical_responses']:.1%}, same answer {summary['same_answer']:.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a Multiverse model folder")
    parser.add_argument("--data", required=True, help="held-out problems (JSONL, as `multiverse eval` reads)")
    parser.add_argument("--kind", help="answer kind; detected when left out")
    parser.add_argument("--limit", type=int, help="the first N problems")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--output", help="write both reports and the comparison to this JSON file")
    parser.add_argument("--traces", help="gold responses (JSONL with `id` and `multiverse`) to read teacher-forced")
    parser.add_argument("--problems", help="the questions of --traces (JSONL with `id` and `question`)")
    parser.add_argument("--trace-limit", type=int, help="read only the first N gold responses of --traces")
    parser.add_argument("--skip-decoding", action="store_true", help="only the teacher-forced reading of --traces")
    args = parser.parse_args(argv)
    for name in ("limit", "trace_limit", "max_new_tokens", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from transformers import AutoTokenizer

    from modeling_multiverse import MultiverseForCausalLM

    precision = choose_precision(args.precision, args.device)
    # the engine of this checkout by its class, not the copy saved beside the weights (which a process that
    # loaded a model's remote code before would pick through the Auto registry)
    model = MultiverseForCausalLM.from_pretrained(args.model, dtype=precision.dtype)
    model = model.to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    records, kind = load_records(args.data, args.kind, args.limit)
    reports, summary = {}, {}
    if not args.skip_decoding:
        reports = {mode: run_mode(model, tokenizer, records, kind, mode, args) for mode in MERGE_MODES}
        summary = compare(tokenizer, reports)
        print(format_table(summary))
    if args.traces:
        questions = {str(r["id"]): r["question"] for _, r in iter_jsonl(args.problems or args.data)}
        traces = [t for _, t in iter_jsonl(args.traces) if t.get("multiverse")][: args.trace_limit]
        summary["teacher_forced"] = teacher_forced(model, tokenizer, traces, questions, kind)
        print("teacher-forced gold responses:", json.dumps(summary["teacher_forced"]))
    summary.update(model=args.model, data=args.data, max_new_tokens=args.max_new_tokens,
                   precision=precision.as_dict(), hardware=hardware_line(hardware_report(args.device, 256, 0.2)))
    print(summary["hardware"])
    if args.output:
        Path(args.output).write_text(json.dumps({"summary": summary, "reports": reports}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
