"""`multiverse train --recipe grpo`: GRPO on a Multiverse model, with fork/merge rollouts from its own engine.

    multiverse train --recipe grpo --model runs/demo/multiverse-model --dataset held_out.jsonl --output out/grpo \\
        --max-steps 50 --num-generations 4 --max-completion-length 256
    multiverse train --config trl_recipes/configs/grpo-smollm2-cpu.yaml --model M --dataset D --output O

TRL's `GRPOTrainer`, `GRPOConfig` and `TrlParser`, every GRPOConfig / ModelConfig flag included. What changes:

- **Rollouts** come from the Multiverse engine (`model.generate`, SPEC 6) through TRL's `rollout_func`: the
  completions are the engine's canonical sequences (paths in label order), with the engine's per-token
  log-probabilities (`output_scores=True` -> `token_logprobs`). Tokens the engine forced (path and
  conclusion seeds, closing tags) are not the model's choices: they go into TRL's `env_mask`, out of the loss.
- **Log-probabilities in the loss** come from one forward over prompt + canonical completion with the SPEC 4
  mask and SPEC 5 positions (`batch_intervals`, `mask_for`, also for rows without a block, so that left padding
  never shifts positions), the logits divided by the temperature and restricted by the grammar exactly as the
  engine restricted them before sampling (`structure.tag_constraints`). This is the distribution the engine
  sampled from, so GRPO's ratio is exact (`tests/test_grpo.py` checks it against the engine's own numbers).
  TRL's fused LM head is bypassed (it calls the backbone without the Multiverse mask and cannot apply the
  grammar): the logits of one micro-batch are materialised, `[batch, completion, vocab]` in fp32.
- **Rewards** are plain TRL reward callables (below), each usable alone, weighted by `reward_weights`.

Reward design, against the three published RL recipes for parallel reasoning:

- *correctness* (1 or 0, the project's graders, `evaluation.grading`). All three papers reward the verified
  answer; NPR gives -1 for a wrong answer, which only shifts GRPO's group baseline.
- *format* (1 when the response parses as a complete `<Think>` ... `</Think>` answer, else 0; minus
  `format_forced_penalty` when the engine had to force closing tags, i.e. the model ran into a budget or ended
  a path with eos). NPR gates accuracy on a format check with a graded penalty; here format is its own term,
  since the engine's output always parses *partially*: what is left to reward is finishing cleanly.
- *parallel* (the saving in decode steps against writing the same tokens sequentially, SPEC 8:
  `1 - decode_steps / generated_tokens`, or with `parallel_measure="critical_path"` the share of tokens off the
  critical path, `1 - critical_path / tokens`), capped at `parallel_cap`, and **paid only when the answer is
  right**, so that forking cannot be farmed on wrong answers. This is ThreadWeaver's P-GRPO acceleration term
  (clipped, correct-only); it measures what the engine really saved, where Parallel-R1 rewards the mere use of
  a parallel block (and alternates it with accuracy-only windows because always paying for it cost accuracy),
  and NPR has no speed term (its parallelism is enforced by rejecting non-parallel rollouts).
- Advantages: `scale_rewards="none"` by default (TRL's default divides by the group's std). ThreadWeaver
  mean-centres only: with std scaling, a group whose answers are all right would blow its small parallel
  differences up to unit-size advantages.

From Python:

Example:
    >>> outcome = train_grpo(
    ...     GRPORecipeArguments(dataset_name="problems.jsonl"),
    ...     MultiverseGRPOConfig(output_dir="out/grpo", max_steps=2, num_generations=4, max_completion_length=256),
    ...     MultiverseModelConfig(model_name_or_path="runs/demo/multiverse-model"),
    ... )  # doctest: +SKIP
    >>> [h["rewards/parallel/mean"] for h in outcome.log_history if "loss" in h]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from transformers import PreTrainedModel
from trl import GRPOConfig, GRPOTrainer, TrlParser, get_peft_config
from trl.models.utils import unwrap_model_for_generation

from evaluation.grading import KINDS, grade
from modeling_multiverse import (
    TAGS,
    StructureError,
    batch_intervals,
    mask_for,
    parallel_user_turn,
    parse_ids,
    parse_text,
    tag_ids_from_tokenizer,
)
from modeling_multiverse.structure import (
    CONCLUSION_END,
    GOAL_END,
    OUTLINE_END,
    PARALLEL_END,
    PATH_END,
    kinds_of_ids,
    tag_constraints,
)

from .config import (
    CHECKPOINTING_HELP,
    HAS_ACTIVATION_CHECKPOINTING,
    OLD_CHECKPOINTING_HELP,
    MultiverseModelConfig,
    settle_checkpointing,
)
from .export import save_hub_ready
from .train import _check_paths, _hub_base, load_model

REWARDS = ("correctness", "format", "parallel")
_CLOSING_TAGS = tuple(TAGS[k] for k in (OUTLINE_END, GOAL_END, PATH_END, CONCLUSION_END, PARALLEL_END))


@dataclass
class GRPORecipeArguments:
    """Data, rewards and engine options of the GRPO recipe."""

    dataset_name: str = field(
        default=None,
        metadata={
            "help": "Problems: `multiverse data synth` JSONL (question, answer), or any .jsonl/.json/.parquet, "
            "save_to_disk folder or Hub dataset with `prompt` and `answer` columns.",
            "aliases": ["--dataset"],
        },
    )
    recipe: str = field(default="grpo", metadata={"help": "Always grpo here.", "choices": ["grpo"]})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    answer_kind: str = field(
        default="builtin",
        metadata={"help": "How answers are graded where the data has no `kind` column.", "choices": list(KINDS)},
    )
    rewards: list[str] = field(
        default_factory=lambda: list(REWARDS),
        metadata={"help": "Reward functions, in the order of `--reward_weights`.", "choices": list(REWARDS)},
    )
    format_forced_penalty: float = field(
        default=0.5, metadata={"help": "Subtracted from the format reward when the engine forced closing tags."}
    )
    parallel_measure: str = field(
        default="steps",
        metadata={
            "help": "steps: 1 - decode steps / tokens (what the engine saved); critical_path: 1 - critical path / tokens.",
            "choices": ["steps", "critical_path"],
        },
    )
    parallel_cap: float = field(default=0.6, metadata={"help": "Largest parallel reward (1 - 1/parallelism is 0.6 at 2.5)."})
    max_depth: int = field(default=2, metadata={"help": "Engine: deepest block decoded side by side."})
    max_branches: int = field(default=8, metadata={"help": "Engine: most outlines (paths) per goal."})
    max_branch_tokens: int = field(default=2048, metadata={"help": "Engine: most tokens one path writes."})


@dataclass
class MultiverseGRPOConfig(GRPOConfig):
    """GRPOConfig with `--output`, bf16 / activation checkpointing off without a GPU, and mean-centred advantages."""

    output_dir: str | None = field(default=None, metadata={"help": "Where the trained model goes.", "aliases": ["--output"]})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; default: on when a GPU is present."})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": OLD_CHECKPOINTING_HELP})
    if not HAS_ACTIVATION_CHECKPOINTING:  # transformers 5.17: take the new name too, so one config fits all releases
        activation_checkpointing: bool | None = field(default=None, metadata={"help": CHECKPOINTING_HELP})
    scale_rewards: str = field(
        default="none", metadata={"help": "none (mean-centre only, as P-GRPO), group or batch (divide by the std)."}
    )

    def __post_init__(self):
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning only speeds copies to a GPU; torch warns without one
        if self.bf16 is None and not torch.cuda.is_available():
            self.bf16 = False
        settle_checkpointing(self)
        super().__post_init__()


# ---------------------------------------------------------------------------------------------
# Data


def load_problems(
    source: str | Dataset, *, split: str = "train", config: str | None = None, parallel_prompt: bool = True
) -> Dataset:
    """Problems as a dataset with `prompt` (a user turn) and `answer`; `question` rows get the parallel instruction.

    >>> ds = load_problems("held_out.jsonl")  # doctest: +SKIP
    >>> ds[0]["prompt"][0]["role"], ds[0]["answer"]  # doctest: +SKIP
    ('user', '17')
    """
    if isinstance(source, Dataset):
        data = source
    else:
        path = Path(source)
        if path.is_dir():
            data = load_from_disk(str(path))
        elif path.suffix in (".jsonl", ".json", ".parquet"):
            if not path.is_file():
                raise FileNotFoundError(f"dataset {path} does not exist")
            data = load_dataset("parquet" if path.suffix == ".parquet" else "json", data_files=str(path), split="train")
        else:
            data = load_dataset(str(source), config, split=split)
        if isinstance(data, DatasetDict):
            if split not in data:
                raise ValueError(f"dataset {source} has no split {split!r} (it has {', '.join(data)})")
            data = data[split]
    columns = set(data.column_names)
    if "answer" not in columns or not ({"prompt", "question"} & columns):
        raise ValueError(f"dataset {source}: needs `answer` and `prompt` (or `question`) columns, has {sorted(columns)}")
    if "prompt" not in columns:
        turn = parallel_user_turn if parallel_prompt else str.strip
        data = data.map(lambda row: {"prompt": [{"role": "user", "content": turn(row["question"])}]})
    return data.map(lambda row: {"answer": str(row["answer"])})


# ---------------------------------------------------------------------------------------------
# Rewards: TRL reward callables. `multiverse_text` and the engine counters come from `multiverse_rollout`.


def _texts(completions, multiverse_text) -> list[str]:
    if multiverse_text is not None:
        return list(multiverse_text)
    return [c if isinstance(c, str) else c[-1]["content"] for c in completions]


def correctness_reward(completions, answer, kind=None, multiverse_text=None, answer_kind: str = "builtin", **kwargs) -> list[float]:
    """1.0 when the graded answer matches `answer` (`evaluation.grading.grade`), else 0.0."""
    kinds = kind if kind is not None else [answer_kind] * len(answer)
    return [float(grade(text, ref, k)) for text, ref, k in zip(_texts(completions, multiverse_text), answer, kinds)]


def format_reward(completions, multiverse_text=None, forced_closing_tags=None, forced_penalty: float = 0.5, **kwargs) -> list[float]:
    """1.0 for a complete, well-formed response (`<Think>` ... `</Think>` answer), else 0.0; minus
    `forced_penalty` where the engine had to force closing tags."""
    rewards = []
    for i, text in enumerate(_texts(completions, multiverse_text)):
        try:
            parse_text(text, require_think=True)
            value = 1.0
        except StructureError:
            value = 0.0
        if forced_closing_tags is not None and forced_closing_tags[i] > 0:
            value -= forced_penalty
        rewards.append(value)
    return rewards


def parallel_reward(
    completions, answer, kind=None, multiverse_text=None, generated_tokens=None, decode_steps=None, critical_path=None,
    measure: str = "steps", cap: float = 0.6, answer_kind: str = "builtin", **kwargs,
) -> list[float]:
    """The decode-step saving (`1 - steps / tokens`) or off-critical-path share (`1 - critical path / tokens`),
    capped at `cap`, for correct answers only (0.0 for wrong ones)."""
    if generated_tokens is None:
        raise ValueError("the parallel reward needs the Multiverse rollout's counters (generated_tokens, decode_steps)")
    correct = correctness_reward(completions, answer, kind, multiverse_text, answer_kind)
    rewards = []
    for i, ok in enumerate(correct):
        tokens = max(generated_tokens[i], 1)
        spent = decode_steps[i] if measure == "steps" else critical_path[i]
        rewards.append(ok * min(cap, max(0.0, 1.0 - spent / tokens)))
    return rewards


def reward_functions(args: GRPORecipeArguments) -> list:
    """The selected reward callables, named as TRL logs them (`rewards/<name>/mean`)."""

    def correctness(completions, answer, **kwargs):
        return correctness_reward(completions, answer, answer_kind=args.answer_kind, **kwargs)

    def format(completions, **kwargs):  # noqa: A001 - the name TRL logs
        return format_reward(completions, forced_penalty=args.format_forced_penalty, **kwargs)

    def parallel(completions, answer, **kwargs):
        return parallel_reward(
            completions, answer, measure=args.parallel_measure, cap=args.parallel_cap, answer_kind=args.answer_kind, **kwargs
        )

    table = {"correctness": correctness, "format": format, "parallel": parallel}
    unknown = [name for name in args.rewards if name not in table]
    if unknown or not args.rewards:
        raise ValueError(f"--rewards: unknown {unknown or 'none given'}; choose from {', '.join(REWARDS)}")
    return [table[name] for name in args.rewards]


# ---------------------------------------------------------------------------------------------
# Rollouts and the loss's log-probabilities


def multiverse_rollout(prompts: list, trainer: MultiverseGRPOTrainer) -> dict:
    """TRL `rollout_func`: one engine completion per prompt (TRL repeats prompts per group), canonical order.

    Returns TRL's `prompt_ids`, `completion_ids`, `logprobs` (NaN at forced tokens) and `env_mask` (0 at forced
    tokens: out of the loss), plus, for the rewards, `multiverse_text` (tags kept), `generated_tokens`,
    `decode_steps`, `critical_path` and `forced_closing_tags`.
    """
    tokenizer = trainer.processing_class
    prompt_ids = []
    for prompt in prompts:
        if isinstance(prompt, str):
            prompt_ids.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        else:
            prompt_ids.append(
                tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            )
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
    result = {key: [] for key in ("completion_ids", "logprobs", "env_mask", "multiverse_text", "critical_path", "forced_closing_tags")}
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
    """`GRPOTrainer` whose rollouts are fork/merge decoded and whose log-probabilities follow SPEC 4/5 and the
    engine's grammar constraints. `engine_options`: `max_depth`, `max_branches`, `max_branch_tokens`.

    >>> trainer = MultiverseGRPOTrainer(model=model, reward_funcs=reward_functions(GRPORecipeArguments()),
    ...                                 args=config, train_dataset=problems, processing_class=tokenizer)  # doctest: +SKIP
    """

    def __init__(self, *args, engine_options: dict | None = None, **kwargs):
        kwargs.setdefault("rollout_func", multiverse_rollout)
        super().__init__(*args, **kwargs)
        self.engine_options = dict(engine_options or {})
        # TRL's sampling settings, plus the engine's per-token log-probabilities
        self.rollout_config = copy.deepcopy(self.generation_config)
        self.rollout_config.update(return_dict_in_generate=True, output_scores=True)
        self.tag_ids = tag_ids_from_tokenizer(self.processing_class)
        self._tag_columns = torch.tensor([self.tag_ids[t] for t in TAGS])

    def _grammar_bias(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_length: int) -> torch.Tensor:
        """`[B, C, 12]`: -inf on the tags the engine would not have let the model sample at each completion token.

        A tag the engine forced (a seed's `<Path>`, a closing tag) may be outside the set; that position keeps the
        model's plain distribution (it is out of the loss anyway), so no log-probability is ever -inf.
        """
        batch, length = input_ids.shape
        start = length - completion_length
        bias = torch.zeros(batch, completion_length, len(TAGS))
        max_branches = self.engine_options.get("max_branches", 8)
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


# ---------------------------------------------------------------------------------------------
# Entry points


@dataclass
class GRPOOutcome:
    output_dir: Path
    log_history: list[dict]


def train_grpo(
    recipe_args: GRPORecipeArguments,
    config: MultiverseGRPOConfig,
    model_args: MultiverseModelConfig | None = None,
    *,
    model: PreTrainedModel | None = None,
    tokenizer=None,
    dataset: Dataset | None = None,
) -> GRPOOutcome:
    """GRPO on a Multiverse model; writes a Hub-ready folder to `config.output_dir`. As `train.train`: the model
    comes from `model_args` (name, dtype, attention, LoRA) or loaded as `model` with its `tokenizer`; the problems
    from `recipe_args.dataset_name` or as `dataset`."""
    model_args = model_args or MultiverseModelConfig()
    if (model is None) == (model_args.model_name_or_path is None):
        raise ValueError("give the model either as model_args.model_name_or_path or loaded as model=, not both")
    if (dataset is None) == (recipe_args.dataset_name is None):
        raise ValueError("give the problems either as recipe_args.dataset_name or loaded as dataset=, not both")
    # the model and output checks of the SFT recipe; problems are checked by `load_problems` (other columns)
    _check_paths(model_args.model_name_or_path if model is None else model, None, config.output_dir, "multiverse")
    if dataset is None and Path(recipe_args.dataset_name).resolve() == Path(config.output_dir).resolve():
        raise ValueError(f"--output {config.output_dir} would overwrite the problems (--dataset {recipe_args.dataset_name})")
    reward_funcs = reward_functions(recipe_args)
    problems = load_problems(
        dataset if dataset is not None else recipe_args.dataset_name,
        split=recipe_args.dataset_train_split,
        config=recipe_args.dataset_config,
    )
    if model is None:
        base_name = _hub_base(model_args.model_name_or_path)
        model, tokenizer = load_model(model_args, "multiverse")
    elif tokenizer is None:
        raise ValueError("train_grpo(model=<loaded model>) needs tokenizer=")
    else:
        base_name = model.config.name_or_path or None
    tokenizer.padding_side = "left"
    peft_config = get_peft_config(model_args)
    engine_options = {
        "max_depth": recipe_args.max_depth,
        "max_branches": recipe_args.max_branches,
        "max_branch_tokens": recipe_args.max_branch_tokens,
    }
    trainer = MultiverseGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=problems,
        processing_class=tokenizer,
        peft_config=peft_config,
        engine_options=engine_options,
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    training = {
        "problems": len(problems),
        "steps": trainer.state.global_step,
        "rewards": ", ".join(recipe_args.rewards),
        "reward_weights": config.reward_weights,
        "num_generations": config.num_generations,
        "lora": peft_config is not None,
    }
    output_dir = Path(config.output_dir)
    save_hub_ready(trainer, output_dir, recipe="grpo", base_model=base_name, training=training)
    return GRPOOutcome(output_dir, trainer.state.log_history)


def main(argv: list[str] | None = None) -> int:
    parser = TrlParser((GRPORecipeArguments, MultiverseGRPOConfig, MultiverseModelConfig), prog="multiverse train --recipe grpo")
    recipe_args, config, model_args = parser.parse_args_and_config(sys.argv[1:] if argv is None else argv)
    missing = [f for f, v in (("--model", model_args.model_name_or_path), ("--dataset", recipe_args.dataset_name), ("--output", config.output_dir)) if not v]
    if missing:
        parser.error(f"missing {', '.join(missing)}")
    outcome = train_grpo(recipe_args, config, model_args)  # bad input raises: the CLI prints it as one line
    steps = [h for h in outcome.log_history if "loss" in h]
    keys = ["loss"] + [f"rewards/{name}/mean" for name in recipe_args.rewards] + ["multiverse/parallelism"]
    for h in steps:
        print(json.dumps({"step": h.get("step"), **{k: round(h[k], 4) for k in keys if k in h}}))
    print(f"grpo: {len(steps)} logged steps; wrote {outcome.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
