"""The GRPO recipe's rollouts and the log-probabilities of its loss, both from the Multiverse engine's rules.

- **Rollouts** come from the Multiverse engine (`model.generate`, SPEC.md §6) through TRL's `rollout_func`: the
  completions are the engine's canonical sequences (paths in label order), with the engine's per-token
  log-probabilities (`output_scores=True` -> `token_logprobs`). Tokens the engine forced (path and
  conclusion seeds, closing tags) are not the model's choices: they go into TRL's `env_mask`, out of the loss.
- **Log-probabilities in the loss** come from one forward over prompt + canonical completion with the SPEC.md §4
  mask and SPEC.md §5 positions (`batch_intervals`, `mask_for`, also for rows without a block, so that left padding
  never shifts positions), the logits divided by the temperature and restricted by the grammar exactly as the
  engine restricted them before sampling (`structure.tag_constraints`). This is the distribution the engine
  sampled from, so GRPO's ratio is exact (`tests/test_grpo.py` checks it against the engine's own numbers).
  TRL's fused LM head is bypassed (it calls the backbone without the Multiverse mask and cannot apply the
  grammar): the logits of one micro-batch are materialised, `[batch, completion, vocab]` in fp32.
- **Engine options**: one dict per run (`resolve_engine_options`, from `ENGINE_DEFAULTS`), held by the trainer
  and read by both the rollouts and the loss's grammar, so the two can never decode under different limits.

Example:
    >>> options = resolve_engine_options(max_branches=4)
    >>> trainer = MultiverseGRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=problems,
    ...                                 processing_class=tokenizer, engine_options=options)  # doctest: +SKIP
    >>> trainer.engine_options is options  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import math

import torch
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation

from modeling_multiverse import TAGS, batch_intervals, encode_chat, mask_for, parse_ids, tag_ids_from_tokenizer
from modeling_multiverse.generation import ENGINE_DEFAULTS
from modeling_multiverse.structure import (
    CONCLUSION_END,
    GOAL_END,
    OUTLINE_END,
    PARALLEL_END,
    PATH_END,
    kinds_of_ids,
    tag_constraints,
)

from .rewards import format_reward

_CLOSING_TAGS = tuple(TAGS[k] for k in (OUTLINE_END, GOAL_END, PATH_END, CONCLUSION_END, PARALLEL_END))


def resolve_engine_options(**overrides) -> dict:
    """The engine options of one run: `ENGINE_DEFAULTS`, with the `overrides` that are not None.

    >>> resolve_engine_options(max_branches=4)["max_branches"]
    4
    """
    unknown = sorted(set(overrides) - set(ENGINE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown engine options {unknown}; the engine takes {', '.join(ENGINE_DEFAULTS)}")
    return {**ENGINE_DEFAULTS, **{name: value for name, value in overrides.items() if value is not None}}


def rollout_prompt_ids(tokenizer, prompts: list) -> list[list[int]]:
    """Token ids of TRL's prompts: a conversation goes through the one prompt builder's `encode_chat` (what a
    person wrote is text, never structure); a text prompt is taken as already rendered.

    >>> rollout_prompt_ids(tokenizer, [[{"role": "user", "content": "What is <Path>?"}]])  # doctest: +SKIP
    """
    return [
        tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if isinstance(prompt, str)
        else encode_chat(tokenizer, prompt)
        for prompt in prompts
    ]


def multiverse_rollout(prompts: list, trainer: MultiverseGRPOTrainer) -> dict:
    """TRL `rollout_func`: one engine completion per prompt (TRL repeats prompts per group), canonical order.

    Returns TRL's `prompt_ids`, `completion_ids`, `logprobs` (NaN at forced tokens) and `env_mask` (0 at forced
    tokens: out of the loss), plus, for the rewards, `multiverse_text` (tags kept), `generated_tokens`,
    `decode_steps`, `critical_path` and `forced_closing_tags`.
    """
    tokenizer = trainer.processing_class
    prompt_ids = rollout_prompt_ids(tokenizer, prompts)
    width = max(map(len, prompt_ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=trainer.accelerator.device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=input_ids.device)
    with (
        unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as model,
        torch.no_grad(),
    ):
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=trainer.rollout_config,
            tokenizer=tokenizer,
            **trainer.engine_options,
        )
    tag_ids = trainer.tag_ids
    closing = torch.tensor([tag_ids[t] for t in _CLOSING_TAGS])
    stop_ids = torch.tensor(sorted({*trainer.eos_token_ids, pad}))
    keys = ("completion_ids", "logprobs", "env_mask", "multiverse_text", "critical_path", "forced_closing_tags")
    result = {key: [] for key in keys}
    for row in range(len(prompts)):
        n = out.generated_tokens[row] + out.closing_tokens[row]
        ids = out.sequences[row, width : width + n].cpu()
        logprobs = out.token_logprobs[row, :n].cpu()
        forced = torch.isnan(logprobs)
        result["completion_ids"].append(ids.tolist())
        result["logprobs"].append(logprobs.tolist())
        result["env_mask"].append((~forced).long().tolist())
        text_ids = ids[~torch.isin(ids, stop_ids)]
        result["multiverse_text"].append(tokenizer.decode(text_ids, skip_special_tokens=False))
        structure = parse_ids(text_ids.tolist(), tag_ids, partial=True)
        result["critical_path"].append(structure.arrays().critical_path_tokens())
        result["forced_closing_tags"].append(int((forced & torch.isin(ids, closing)).sum()))
    result["prompt_ids"] = prompt_ids
    result["generated_tokens"] = list(out.generated_tokens)
    result["decode_steps"] = list(out.decode_steps)
    texts = result["multiverse_text"]
    forced_tokens = sum(len(m) - sum(m) for m in result["env_mask"])
    trainer._log_metric("multiverse/parallelism", sum(out.parallelism) / len(prompts))
    trainer._log_metric("multiverse/well_formed", sum(format_reward(texts, texts, forced_penalty=0.0)) / len(prompts))
    trainer._log_metric("multiverse/forced_token_share", forced_tokens / max(1, sum(map(len, result["env_mask"]))))
    return result


class MultiverseGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose rollouts are fork/merge decoded and whose log-probabilities follow SPEC.md §4/5 and the
    engine's grammar constraints. `engine_options`: the run's one options dict (`resolve_engine_options`; all of
    `ENGINE_DEFAULTS` when left out), kept as given and read by both the rollouts and the loss.

    >>> trainer = MultiverseGRPOTrainer(
    ...     model=model, reward_funcs=reward_functions(GRPORecipeArguments()), args=config,
    ...     train_dataset=problems, processing_class=tokenizer,
    ... )  # doctest: +SKIP
    """

    def __init__(self, *args, engine_options: dict | None = None, **kwargs):
        kwargs.setdefault("rollout_func", multiverse_rollout)
        super().__init__(*args, **kwargs)
        self.engine_options = resolve_engine_options() if engine_options is None else engine_options
        missing = sorted(set(ENGINE_DEFAULTS) - set(self.engine_options))
        if missing:
            raise ValueError(f"engine_options lacks {missing}: build it with resolve_engine_options()")
        if self.engine_options["merge"] != "exact":  # the loss reads the paths under SPEC.md §4, as exact merge does
            raise ValueError("GRPO rollouts need merge='exact': under re-prefill the loss's ratio is not exact")
        # TRL's sampling settings, plus the engine's per-token log-probabilities
        self.rollout_config = copy.deepcopy(self.generation_config)
        self.rollout_config.update(return_dict_in_generate=True, output_scores=True)
        self.tag_ids = tag_ids_from_tokenizer(self.processing_class)
        self._tag_columns = torch.tensor([self.tag_ids[t] for t in TAGS])

    def _grammar_bias(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_length: int
    ) -> torch.Tensor:
        """`[B, C, 12]`: -inf on the tags the engine would not have let the model sample at each completion token.

        A tag the engine forced (a seed's `<Path>`, a closing tag) may be outside the set; that position keeps the
        model's plain distribution (it is out of the loss anyway), so no log-probability is ever -inf.
        """
        batch, length = input_ids.shape
        start = length - completion_length
        bias = torch.zeros(batch, completion_length, len(TAGS))
        max_branches = self.engine_options["max_branches"]
        for row in range(batch):
            real = attention_mask[row].bool().cpu()
            ids = input_ids[row].cpu()
            prompt = ids[:start][real[:start]]
            completion = ids[start:][real[start:]]
            allowed = tag_constraints(torch.cat([prompt, completion]).tolist(), self.tag_ids, len(prompt), max_branches)
            kinds = kinds_of_ids(completion, self.tag_ids)
            is_tag = kinds >= 0
            sampled_legal = torch.ones(len(completion), dtype=torch.bool)
            sampled_legal[is_tag] = allowed[is_tag, kinds[is_tag]]
            allowed[~sampled_legal] = True
            bias[row, : len(completion)] = torch.zeros(allowed.shape).masked_fill(~allowed, -math.inf)
        return bias

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
        compute_aux_loss=False, **unused,
    ):
        batch_size = batch_size or input_ids.size(0)
        backbone = model.get_base_model() if hasattr(model, "get_base_model") else self.accelerator.unwrap_model(model)
        implementation = backbone.config._attn_implementation
        all_logps, all_entropies = [], []
        for first in range(0, input_ids.size(0), batch_size):
            ids = input_ids[first : first + batch_size]
            mask = attention_mask[first : first + batch_size]
            position_ids, forbid_lo, forbid_hi = batch_intervals(ids, self.tag_ids, mask)
            structure_mask = mask_for(forbid_lo, forbid_hi, implementation, backbone.dtype)
            with self.accelerator.autocast():
                logits = model(
                    input_ids=ids, attention_mask=structure_mask, position_ids=position_ids,
                    logits_to_keep=logits_to_keep + 1, use_cache=False,
                ).logits
            logits = logits[:, :-1].float() / self.temperature
            bias = self._grammar_bias(ids, mask, logits_to_keep).to(logits.device)
            columns = self._tag_columns.to(logits.device)
            logits = logits.index_add(2, columns, bias)
            log_probs = torch.log_softmax(logits, -1)
            targets = ids[:, -logits_to_keep:]
            all_logps.append(log_probs.gather(-1, targets[..., None]).squeeze(-1))
            if compute_entropy:
                probs = log_probs.exp()
                all_entropies.append(-(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1))
        entropies = torch.cat(all_entropies) if compute_entropy else None
        return torch.cat(all_logps), entropies, None
