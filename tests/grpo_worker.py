"""One process of a data-parallel GRPO run (`torchrun --nproc-per-node 2 tests/grpo_worker.py OUT`), CPU and gloo.

Every rank builds the same tag-happy tiny model (`test_grpo.tag_happy_model`), decodes its own rollouts with the
Multiverse engine and scores them; TRL gathers the rewards across processes, and DDP averages the gradients.
`rank_reward` is each rollout's rank, so a logged mean of 0.5 means the log covers both ranks' rollouts.
Each rank writes `OUT/rank{r}.json`: its world, steps, log, the rollouts it scored and a weight checksum.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from test_grpo import CPU, blocks_reward, problems, tag_happy_model

from trl_recipes.grpo import MultiverseGRPOConfig
from trl_recipes.rollout import MultiverseGRPOTrainer, resolve_engine_options

SCORED: list[int] = []  # completions this rank's reward function scored, per call


def rank_reward(completions, **kwargs) -> list[float]:
    """The rank of the process that decoded each completion."""
    SCORED.append(len(completions))
    return [float(dist.get_rank())] * len(completions)


def checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def main(out: Path) -> None:
    model, tokenizer = tag_happy_model()
    args = MultiverseGRPOConfig(
        output_dir=str(out / "run"), num_generations=2, per_device_train_batch_size=4, max_completion_length=60,
        temperature=1.0, learning_rate=1e-2, max_steps=2, seed=0, **CPU,
    )
    trainer = MultiverseGRPOTrainer(
        model=model, reward_funcs=[rank_reward, blocks_reward], args=args, train_dataset=problems(8),
        processing_class=tokenizer, engine_options=resolve_engine_options(max_branches=4, max_depth=2),
    )
    before = checksum(trainer.model)
    torch.manual_seed(dist.get_rank())  # each rank samples its own rollouts
    trainer.train()
    rank = dist.get_rank()
    report = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "backend": dist.get_backend(),
        "distributed_type": str(trainer.accelerator.distributed_type),
        "global_step": trainer.state.global_step,
        "log_history": trainer.state.log_history,
        "scored": SCORED,
        "checksum_before": before,
        "checksum_after": checksum(trainer.model),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    main(Path(sys.argv[1]))
