"""`generate()` for Multiverse models: fork/merge decoding with transformers' generation arguments (SPEC.md §6-8).

`multiverse_generate` validates the request, builds a `MultiverseEngine` (`engine.py`), runs it and packages
the output as transformers does (`sequences`, or a `MultiverseGenerateOutput` with the SPEC.md §8 statistics).
transformers' private generation helpers are reached only through `transformers_generation.py`.

Arguments that would silently decode something else are refused with a ValueError: a non-finite or
negative temperature, top_p outside (0, 1], num_return_sequences > 1 without sampling, an empty
prompt, beam search. Without `tokenizer=`, the tokenizer beside the weights is loaded without remote code.

Logits processors and stopping criteria (yours, a harness's, `stop_strings`) get transformers' fixed
`[batch x num_return_sequences, length]` rows, row i always sequence i (`criteria_view.py`). A stop ends
the sequence: at once when it fires at the root; when it fires while a path decides, the block's paths
run to their ends and the root then closes instead of sampling (so the text before the stop is exactly
what an unstopped run writes). eos inside a path ends only that path (`engine.py`).

Example:
    >>> out = model.generate(input_ids, tokenizer=tokenizer, max_new_tokens=256,
    ...                      return_dict_in_generate=True)  # doctest: +SKIP
    >>> out.parallelism[0], out.blocks[0]  # doctest: +SKIP
    (1.9, [{'labels': ['1', '2'], 'branch_lengths': [60, 41], 'depth': 0, 'start': 12}])

This file imports only torch, transformers and the modules of `SHIPPED_MODULES`, so it ships with a
checkpoint both as remote code and as `custom_generate/generate.py` (`write_custom_generate`).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationMixin, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria
from transformers.utils import ModelOutput

from .decode_attention import engine_attention
from .engine import MERGE_MODES, MultiverseEngine, StepInputs, pack_step
from .engine_state import _FORCED, _Sequence
from .streaming import GenerationStream
from .structure import parse_ids
from .transformers_generation import (
    checkpoint_path,
    logits_processors,
    prepare_generation_config,
    prepare_special_tokens,
)

ENGINE_DEFAULTS = {"max_depth": 2, "max_branches": 16, "max_branch_tokens": 2048, "merge": MERGE_MODES[0]}
"""Engine options, read from `generate(...)` kwargs, else from `generation_config` attributes, else here
(`resolve_engine_options`):
- `max_depth`: deepest block whose paths are decoded side by side (1 = top-level blocks only).
- `max_branches`: most outlines (hence paths) one goal may have. Real Multiverse-32B traces open blocks
  of up to 10 paths; a lower cap would reshape them.
- `max_branch_tokens`: most tokens one path may write itself (its nested paths count on their own).
- `merge`: "exact" (the conclusion reads the paths from the cache, SPEC.md §6) or "reprefill" (the paths are fed
  again causally before the conclusion, as a stock vLLM/SGLang must serve the model; `engine.MERGE_MODES`).
"""


def resolve_engine_options(model=None, generation_config=None, **options) -> dict:
    """The engine options `generate()` uses: keyword arguments, else `generation_config` attributes, else
    the model's `generation_config` attributes, else `ENGINE_DEFAULTS`. Build them once and pass the same
    dict to rollouts (`generate(**options)`) and to a loss that must read the text under the same rules.

    >>> resolve_engine_options(max_branches=4)
    {'max_depth': 2, 'max_branches': 4, 'max_branch_tokens': 2048, 'merge': 'exact'}
    """
    unknown = sorted(set(options) - set(ENGINE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown engine options {', '.join(unknown)}; expected {', '.join(ENGINE_DEFAULTS)}")
    configs = [generation_config, getattr(model, "generation_config", None)]
    resolved = {}
    for name, default in ENGINE_DEFAULTS.items():
        value = options.get(name)
        for config in configs:
            if value is None and config is not None:
                value = getattr(config, name, None)
        resolved[name] = default if value is None else value
    return resolved


@dataclass
class MultiverseGenerateOutput(ModelOutput):
    """What `generate(..., return_dict_in_generate=True)` returns; lists have one entry per prompt.

    - `sequences`: prompts (as given) then canonical responses, right-padded with the pad token.
    - `generated_tokens`: tokens generated within `max_new_tokens` (all branches, forced seeds included).
    - `closing_tokens`: tags appended after the budget ran out to close open blocks.
    - `decode_steps`: forward passes that fed this prompt at least one token (SPEC.md §8).
    - `parallelism`: generated_tokens / decode_steps (SPEC.md §8).
    - `blocks`: every block of the response, in order: `labels`, `branch_lengths` (tokens of each path
      unit), `depth` (0 = top level), `start` (index of `<Parallel>` in the response).
    - `cache_tokens`: peak KV cache length (tokens per row, padding slots included).
    - `reprefill_tokens`: path tokens fed again at merges (`merge="reprefill"`; 0 for exact): extra prefill.
    - `token_logprobs` (with `output_scores=True`): `[B, response width]` float32, aligned with the
      response part of `sequences` (canonical order): the log-probability of each sampled token under
      the distribution it was drawn from (logits after the processors, temperature included, and the
      grammar mask of `structure.allowed_tags`; greedy: the same log-softmax at the argmax). NaN where
      the engine forced the token (path and conclusion seeds, closing tags) and after the response.
      A sampled eos inside a path is not in the output (the path is closed instead), nor is its score.
    """

    sequences: torch.LongTensor | None = None
    generated_tokens: list | None = None
    closing_tokens: list | None = None
    decode_steps: list | None = None
    parallelism: list | None = None
    blocks: list | None = None
    cache_tokens: int | None = None
    reprefill_tokens: list | None = None
    token_logprobs: torch.FloatTensor | None = None


_TOKENIZERS: dict[str, object] = {}


def _tokenizer_for(model, tokenizer):
    """The tokenizer given, else the one saved beside the weights, loaded without running remote code."""
    if tokenizer is not None:
        return tokenizer
    source = checkpoint_path(model)
    if not source:
        raise ValueError(
            "the Multiverse engine needs the tokenizer (to write path seeds and read outline labels): "
            "pass generate(..., tokenizer=tokenizer) or load the model from a folder that has one"
        )
    if source not in _TOKENIZERS:
        # never trust_remote_code here (a prompt would wait in a terminal, and code would run unasked);
        # config= keeps AutoTokenizer from reloading the config, which would ask to trust remote code
        try:
            _TOKENIZERS[source] = AutoTokenizer.from_pretrained(source, config=model.config, trust_remote_code=False)
        except Exception as err:  # noqa: BLE001 - any failure to load means: pass the tokenizer explicitly
            raise ValueError(
                f"the Multiverse engine could not load the tokenizer of {source!r} without remote code "
                f"({type(err).__name__}); pass generate(..., tokenizer=tokenizer)"
            ) from None
    return _TOKENIZERS[source]


def _check_sampling(config) -> None:
    """Refuse sampling settings that would silently decode something else."""
    temperature, top_p, top_k = config.temperature, config.top_p, config.top_k
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if config.do_sample and temperature == 0:
        raise ValueError("temperature=0 with do_sample=True is greedy decoding: pass do_sample=False instead")
    if top_p is not None and not (0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"top_k must be an integer >= 0, got {top_k}")


def _new_token_budget(config, prompt_length: int) -> int:
    if config.max_new_tokens is not None:
        budget = config.max_new_tokens
    else:
        budget = max(0, (config.max_length or prompt_length + 20) - prompt_length)
    if isinstance(budget, float) and budget.is_integer():
        budget = int(budget)
    if not isinstance(budget, int) or budget < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {budget!r}")
    return budget


def multiverse_generate(
    model,
    inputs: torch.Tensor | None = None,
    generation_config=None,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    tokenizer=None,
    **kwargs,
):
    """Fork/merge decoding (SPEC.md §6) with transformers' generation config, processors and warpers.

    Greedy or sampling (`do_sample`, `temperature`, `top_k`, `top_p`, `repetition_penalty`, ...),
    `num_return_sequences` (sampling), `eos_token_id`, `stop_strings`, `max_new_tokens` or `max_length`,
    plus the engine options of `ENGINE_DEFAULTS`. Returns `sequences` (prompt + canonical response), or a
    `MultiverseGenerateOutput`. `streamer` (put/end, one prompt) receives the canonical response as it
    becomes final; `branch_callback` receives a `BranchEvent` as each branch advances (`streaming.py`).

    >>> out = multiverse_generate(model, input_ids, tokenizer=tok, max_new_tokens=64)  # doctest: +SKIP
    """
    request = _Request.read(model, inputs, generation_config, logits_processor, stopping_criteria, tokenizer, kwargs)
    engine = MultiverseEngine(
        model, request.tokenizer, request.config, request.processors, request.stopping, request.options, request.stream
    )
    with torch.no_grad(), engine_attention(model):
        seqs = engine.run(request.prompts, request.max_new_tokens, request.input_ids)
    return _package(engine, seqs, request)


@dataclass
class _Request:
    """A validated `generate` call: what the engine needs, the prompts repeated `num_return_sequences` times."""

    input_ids: torch.Tensor  # [B x returns, P] as given (padding included)
    prompts: list[list[int]]  # the same without padding
    config: object  # the prepared GenerationConfig
    processors: LogitsProcessorList
    stopping: StoppingCriteriaList
    options: dict
    stream: GenerationStream
    tokenizer: object
    max_new_tokens: int

    @classmethod
    def read(cls, model, inputs, generation_config, logits_processor, stopping_criteria, tokenizer, kwargs: dict):
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        if input_ids is None:
            raise ValueError("the Multiverse engine needs input_ids (the tokenized prompts)")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        attention_mask = kwargs.pop("attention_mask", None)
        options = resolve_engine_options(model, generation_config, **{k: kwargs.pop(k, None) for k in ENGINE_DEFAULTS})
        streamer, branch_callback = kwargs.pop("streamer", None), kwargs.pop("branch_callback", None)
        config = _generation_config(model, generation_config, kwargs)
        returns = config.num_return_sequences or 1
        if streamer is not None and input_ids.shape[0] * returns != 1:
            raise ValueError(
                f"a streamer takes one prompt, got a batch of {input_ids.shape[0] * returns}; "
                "use branch_callback for batches"
            )
        max_new_tokens = _new_token_budget(config, input_ids.shape[1])
        _check_prompts(input_ids, attention_mask)
        tokenizer = _tokenizer_for(model, tokenizer)
        prepare_special_tokens(model, config, attention_mask is not None, model.device)
        processors = logits_processors(model, config, input_ids, logits_processor, model.device)
        stopping = StoppingCriteriaList(stopping_criteria or [])
        if config.stop_strings is not None:
            stopping.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=config.stop_strings))
        if returns > 1:  # each prompt `returns` times, one after another, as transformers orders them
            input_ids = input_ids.repeat_interleave(returns, 0)
            attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(returns, 0)
        stream = GenerationStream(streamer, branch_callback)
        stream.prompt(input_ids)
        prompts = _unpadded(input_ids, attention_mask)
        return cls(input_ids, prompts, config, processors, stopping, options, stream, tokenizer, max_new_tokens)


def _generation_config(model, generation_config, kwargs: dict):
    """The prepared generation config; arguments the engine cannot honour are refused, ignorable ones dropped."""
    for unsupported in ("assistant_model", "prefix_allowed_tokens_fn", "negative_prompt_ids"):
        if kwargs.pop(unsupported, None) is not None:
            raise ValueError(f"{unsupported} is not supported by the Multiverse engine; pass multiverse=False")
    for ignored in ("synced_gpus", "negative_prompt_attention_mask", "use_cache"):
        kwargs.pop(ignored, None)
    config, model_kwargs = prepare_generation_config(model, generation_config, kwargs)
    unexpected = sorted(k for k, v in model_kwargs.items() if v is not None)
    if unexpected:
        raise ValueError(f"unexpected arguments to the Multiverse engine: {', '.join(unexpected)}")
    if (config.num_beams or 1) > 1:
        raise ValueError("the Multiverse engine decodes greedily or by sampling; for beam search pass multiverse=False")
    _check_sampling(config)
    returns = config.num_return_sequences or 1
    if returns > 1 and not config.do_sample:
        raise ValueError(
            f"num_return_sequences={returns} needs do_sample=True: greedy decoding returns one sequence per prompt"
        )
    return config


def _check_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    if attention_mask is not None:
        empty = [row for row in range(input_ids.shape[0]) if not bool(attention_mask[row].any())]
        if empty:
            raise ValueError(f"prompt {empty[0]} is empty: its attention_mask is all zeros")
    if input_ids.shape[1] == 0:
        raise ValueError("the prompts are empty: the engine needs at least one prompt token to start from")


def _unpadded(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[list[int]]:
    ids = input_ids.detach().cpu()
    if attention_mask is None:
        return ids.tolist()
    keep = attention_mask.detach().cpu().bool()
    return [ids[row][keep[row]].tolist() for row in range(ids.shape[0])]


def _package(engine: MultiverseEngine, seqs: list[_Sequence], request: _Request):
    """`sequences` (prompts as given, then canonical responses right-padded), or the full output."""
    responses = [s.root.view[s.prompt_length :] for s in seqs]
    width = max(len(r) for r in responses)
    generated = torch.full((len(seqs), width), engine.pad_id, dtype=torch.long)
    for row, response in enumerate(responses):
        generated[row, : len(response)] = torch.tensor(response, dtype=torch.long)
    device = request.input_ids.device
    sequences = torch.cat([request.input_ids, generated.to(device)], 1)
    if not request.config.return_dict_in_generate:
        return sequences
    token_logprobs = None
    if request.config.output_scores:
        token_logprobs = torch.full((len(seqs), width), _FORCED)
        for row, seq in enumerate(seqs):
            scored = seq.root.logprobs[seq.prompt_length :]
            token_logprobs[row, : len(scored)] = torch.tensor(scored, dtype=torch.float32)
        token_logprobs = token_logprobs.to(device)
    return MultiverseGenerateOutput(
        sequences=sequences,
        generated_tokens=[s.generated for s in seqs],
        closing_tokens=[s.closing_tokens for s in seqs],
        decode_steps=[s.steps for s in seqs],
        parallelism=[s.generated / max(s.steps, 1) for s in seqs],
        blocks=[block_stats(engine, s) for s in seqs],
        cache_tokens=engine.cache_length,
        reprefill_tokens=[s.reprefill_tokens for s in seqs],
        token_logprobs=token_logprobs,
    )


def block_stats(engine: MultiverseEngine, seq: _Sequence) -> list[dict]:
    """The response's blocks; parsed with the prompt, which may have opened `<Think>` or written blocks of its own."""
    view, start = seq.root.view, seq.prompt_length
    structure = parse_ids(view, engine.tag_ids, partial=True)
    return [
        {
            "labels": [engine._label(view, o, k) for k, o in enumerate(block.outlines)],
            "branch_lengths": [(u.end or len(view)) - u.start for u in block.paths],
            "depth": block.depth,
            "start": block.open - start,
        }
        for block in structure.iter_blocks()
        if block.open >= start
    ]


def generate(*args, model, multiverse: bool = True, **kwargs):
    """Entry point of `custom_generate/generate.py`: `model.generate(..., custom_generate=DIR, trust_remote_code=True)`.

    `multiverse=False` falls back to transformers' own decoding.
    """
    kwargs.pop("custom_generate", None)
    if not multiverse:
        return GenerationMixin.generate(model, *args, **kwargs)
    return multiverse_generate(model, *args, **kwargs)


SHIPPED_MODULES = (
    "engine.py",
    "engine_state.py",
    "criteria_view.py",
    "transformers_generation.py",
    "structure.py",
    "attention.py",
    "decode_attention.py",
    "streaming.py",
)
"""The modules `generate.py` imports relatively, directly or not; they ship beside it."""


def write_custom_generate(save_directory: str | Path) -> Path:
    """Write this engine as `custom_generate/generate.py` (+ the modules it imports) next to a saved model.

    >>> write_custom_generate("out/smollm2-multiverse")  # doctest: +SKIP
    PosixPath('out/smollm2-multiverse/custom_generate')
    """
    here = Path(__file__).resolve()
    target = Path(save_directory) / "custom_generate"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(here, target / "generate.py")
    for name in SHIPPED_MODULES:
        shutil.copyfile(here.with_name(name), target / name)
    (target / "requirements.txt").write_text("torch\ntransformers\n")
    return target


__all__ = [
    "ENGINE_DEFAULTS",
    "MultiverseEngine",
    "MultiverseGenerateOutput",
    "StepInputs",
    "generate",
    "multiverse_generate",
    "pack_step",
    "resolve_engine_options",
    "write_custom_generate",
]
