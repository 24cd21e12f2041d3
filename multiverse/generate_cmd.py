"""`multiverse generate --model DIR --prompt TEXT`: answer one prompt with fork/merge decoding.

The prompt is built by the one prompt builder (`modeling_multiverse.prompt_ids`): a user turn that ends with
the "in parallel" instruction (SPEC.md §2), through the model's chat template. Prints the response and the
engine's statistics (SPEC.md §8), or one JSON object.

The autoregressive baseline (a plain Qwen2/Llama folder whose tokenizer keeps the tags, `trl_recipes/plain.py`)
is answered too, through the same engine with Multiverse Attention off (`evaluation/baseline.py`): one token per
step, parallelism 1.0. A plain model without the tags is a base to convert first and is refused.

Under `torchrun --nproc-per-node N` (or `accelerate launch`) the model is split over the N processes with
transformers' tensor parallelism (`runtime/distributed.py`); every process decodes in lockstep, rank 0 prints.

Example:
    $ multiverse generate --model out/smollm2-multiverse --prompt "What is 12 * 13?" --max-new-tokens 256
    $ multiverse generate --model runs/demo/autoregressive-model --prompt "What is 12 * 13?"
    $ torchrun --nproc-per-node 2 -m multiverse.cli generate --model out/smollm2-multiverse --prompt "What is 12 * 13?"
"""

from __future__ import annotations

import json
import math
import sys
import time

from runtime.arguments import OneLineParser


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="multiverse generate", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True,
        help="a Multiverse model folder (from `multiverse convert` or training), or an autoregressive baseline's",
    )
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="budget over all branches (default 512)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold, in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    parser.add_argument("--max-branches", type=int, default=None, help="most paths per block")
    parser.add_argument("--max-depth", type=int, default=None, help="deepest block decoded in parallel")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto",
        help="decoding precision; auto: bf16 where this CPU runs it natively, else fp32 (default)",
    )
    parser.add_argument("--no-instruction", action="store_true", help="do not append the 'in parallel' instruction")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise ValueError(f"--temperature must be a number >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_p is not None and args.temperature == 0:
        raise ValueError("--top-p needs sampling: pass --temperature > 0 as well")
    if args.max_branches is not None and args.max_branches < 1:
        raise ValueError(f"--max-branches must be >= 1, got {args.max_branches}")
    if args.max_depth is not None and args.max_depth < 0:
        raise ValueError(f"--max-depth must be >= 0, got {args.max_depth}")
    if not args.prompt.strip():
        raise ValueError("--prompt is empty")

    from transformers import AutoTokenizer

    from runtime.paths import context_length, model_config, multiverse_config

    config = model_config(args.model, "--model")  # read before anything loads: a bad folder fails fast
    plain = config["model_type"] != "multiverse"
    if not plain:
        config = multiverse_config(args.model, "--model")  # its tag ids checked too
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    # a plain folder decodes as the autoregressive baseline; one that is not a baseline is refused before it loads
    baseline = _baseline_config(config, tokenizer, args.model) if plain else None
    context = context_length(config)
    if context is not None and args.max_new_tokens >= context:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} exceeds the model's context of {context} tokens")

    import torch

    from modeling_multiverse import MultiverseForCausalLM, prompt_ids
    from runtime.distributed import Launch, finish, tensor_parallel_kwargs
    from runtime.precision import choose_precision

    launch = Launch.from_env()  # under torchrun: tensor parallel over the launched processes
    # one process decodes on the CPU; tensor parallel slices go to cuda:LOCAL_RANK where there is a GPU
    precision = choose_precision(args.precision, "cuda" if launch.distributed and torch.cuda.is_available() else "cpu")
    ids = prompt_ids(tokenizer, args.prompt, parallel=not args.no_instruction)  # a tag in the prompt is text
    if context is not None and len(ids) + args.max_new_tokens > context:
        raise ValueError(
            f"--max-new-tokens {args.max_new_tokens}: with the prompt's {len(ids)} tokens that exceeds the model's "
            f"context of {context} tokens; pass --max-new-tokens {context - len(ids)} or less"
        )
    parallel = tensor_parallel_kwargs(launch, config.get("text_config") or config)
    if baseline is not None:  # the baseline's weights load as they are into the engine's class, attention off
        parallel = {**parallel, "config": baseline}
    model = MultiverseForCausalLM.from_pretrained(args.model, dtype=precision.dtype, **parallel)
    model.eval()
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {"do_sample": False}
    if args.top_p is not None:
        sampling["top_p"] = args.top_p
    options = {k: v for k, v in (("max_branches", args.max_branches), ("max_depth", args.max_depth)) if v is not None}
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    out = model.generate(
        **inputs,
        tokenizer=tokenizer,
        max_new_tokens=args.max_new_tokens,
        return_dict_in_generate=True,
        **sampling,
        **options,
    )
    seconds = time.perf_counter() - start
    response_ids = out.sequences[0, inputs["input_ids"].shape[1] :]
    response = tokenizer.decode(response_ids, skip_special_tokens=False)
    eos = tokenizer.eos_token or ""
    if eos and response.endswith(eos):
        response = response[: -len(eos)]
    stats = {
        "generated_tokens": out.generated_tokens[0],
        "closing_tokens": out.closing_tokens[0],
        "decode_steps": out.decode_steps[0],
        "parallelism": round(out.parallelism[0], 3),
        "blocks": out.blocks[0],
        "seconds": round(seconds, 3),
        "tokens_per_second": round(out.generated_tokens[0] / seconds, 2) if seconds else None,
        "precision": precision.name,
    }
    if launch.distributed:
        stats["tensor_parallel"] = launch.world_size
    finish(launch)
    if not launch.main:
        return 0
    if args.json:
        print(json.dumps({"prompt": args.prompt, "response": response, **stats}))
    else:
        print(response)
        print(
            f"\n[{stats['generated_tokens']} tokens in {stats['decode_steps']} decode steps, "
            f"parallelism {stats['parallelism']}, {len(stats['blocks'])} block(s), "
            f"{stats['seconds']} s, {stats['tokens_per_second']} tok/s]",
            file=sys.stderr,
        )
    return 0


def _baseline_config(config: dict, tokenizer, name: str):
    """The engine's `MultiverseConfig` for a plain folder; ValueError if the folder is no trained baseline: a family
    the engine does not decode, or a tokenizer without the tags (a base to convert first)."""
    from evaluation.baseline import engine_config, require_baseline_tokenizer
    from modeling_multiverse import SUPPORTED_BASES

    if config["model_type"] not in SUPPORTED_BASES:
        raise ValueError(
            f"--model {name} is a {config['model_type']!r} model: generate decodes Multiverse models and the plain "
            f"{' and '.join(SUPPORTED_BASES)} baselines trained beside them"
        )
    require_baseline_tokenizer(config["model_type"], tokenizer, name, "--model")
    return engine_config(config, tokenizer)


if __name__ == "__main__":
    sys.exit(main())
