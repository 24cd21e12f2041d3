"""GRPO on 2 real torchrun processes (gloo, CPU): each rank decodes and scores its own Multiverse rollouts, TRL
gathers the rewards of both, DDP keeps the weights equal, and both ranks take the same 2 optimizer steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_tensor_parallel import torchrun

WORKER = Path(__file__).resolve().parent / "grpo_worker.py"


def test_two_process_grpo_steps_with_rewards_gathered_from_both_ranks(tmp_path):
    run = torchrun([str(WORKER), str(tmp_path)], timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, report in enumerate(ranks):
        assert (report["rank"], report["world_size"], report["backend"]) == (rank, 2, "gloo")
        assert report["distributed_type"].endswith("MULTI_CPU")
        assert report["global_step"] == 2
        assert report["scored"] == [4, 4], "each rank scores its own 4 rollouts per step"
    # DDP: the steps moved the weights, identically on both ranks
    assert ranks[0]["checksum_before"] == ranks[1]["checksum_before"]
    assert ranks[0]["checksum_after"] == pytest.approx(ranks[1]["checksum_after"], abs=1e-9)
    assert abs(ranks[0]["checksum_after"] - ranks[0]["checksum_before"]) > 1e-6
    steps = [h for h in ranks[0]["log_history"] if "loss" in h]
    assert len(steps) == 2
    for logged in steps:
        # rank 0's rollouts score 0 and rank 1's score 1: the logged mean and spread cover all 8, both ranks'
        assert logged["rewards/rank_reward/mean"] == pytest.approx(0.5)
        assert logged["rewards/rank_reward/std"] == pytest.approx((8 / 7 * 0.25) ** 0.5, abs=1e-4)
        assert logged["multiverse/parallelism"] > 1.0, "the rollouts forked"



def test_grpo_refuses_reprefill_rollouts(tmp_path):
    from test_grpo import CPU, blocks_reward, problems, tag_happy_model

    from trl_recipes.grpo import MultiverseGRPOConfig
    from trl_recipes.rollout import MultiverseGRPOTrainer, resolve_engine_options

    model, tokenizer = tag_happy_model()
    args = MultiverseGRPOConfig(output_dir=str(tmp_path), num_generations=2, per_device_train_batch_size=2, **CPU)
    with pytest.raises(ValueError, match="merge='exact'"):
        MultiverseGRPOTrainer(
            model=model, reward_funcs=[blocks_reward], args=args, train_dataset=problems(), processing_class=tokenizer,
            engine_options=resolve_engine_options(merge="reprefill"),
        )
