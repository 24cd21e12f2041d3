"""The GRPO recipe's rewards: plain TRL reward callables, each usable alone, weighted by `reward_weights`.

`multiverse_text` (the response with its tags) and the engine's counters (`generated_tokens`, `decode_steps`,
`critical_path`, `forced_closing_tags`) come from the Multiverse rollout (`trl_recipes.rollout`); `answer` and
`kind` are columns of the problems (`trl_recipes.problems`).

Reward design, against the three published RL recipes for parallel reasoning:

- *correctness* (1 or 0, the project's graders, `evaluation.grading`). All three papers reward the verified
  answer; NPR gives -1 for a wrong answer, which only shifts GRPO's group baseline.
- *format* (1 when the response parses as a complete `<Think>` ... `</Think>` answer, else 0; minus
  `format_forced_penalty` when the engine had to force closing tags, i.e. the model ran into a budget or ended
  a path with eos). NPR gates accuracy on a format check with a graded penalty; here format is its own term,
  since the engine's output always parses *partially*: what is left to reward is finishing cleanly.
- *parallel* (the saving in decode steps against writing the same tokens sequentially, SPEC.md §8:
  `1 - decode_steps / generated_tokens`, or with `parallel_measure="critical_path"` the share of tokens off the
  critical path, `1 - critical_path / tokens`), capped at `parallel_cap`, and **paid only when the answer is
  right**, so that forking cannot be farmed on wrong answers. This is ThreadWeaver's P-GRPO acceleration term
  (clipped, correct-only); it measures what the engine really saved, where Parallel-R1 rewards the mere use of
  a parallel block (and alternates it with accuracy-only windows because always paying for it cost accuracy),
  and NPR has no speed term (its parallelism is enforced by rejecting non-parallel rollouts).

Example:
    >>> correctness_reward([[{"role": "assistant", "content": "So \\\\boxed{4}."}]], ["4"])
    [1.0]
"""

from __future__ import annotations

from evaluation.grading import grade
from modeling_multiverse import StructureError, parse_text

REWARDS = ("correctness", "format", "parallel")


def _texts(completions, multiverse_text) -> list[str]:
    if multiverse_text is not None:
        return list(multiverse_text)
    return [c if isinstance(c, str) else c[-1]["content"] for c in completions]


def correctness_reward(
    completions, answer, kind=None, multiverse_text=None, answer_kind: str = "builtin", **kwargs
) -> list[float]:
    """1.0 when the graded answer matches `answer` (`evaluation.grading.grade`), else 0.0. `kind` is the
    problems' column; `answer_kind` grades rows without one."""
    kinds = kind if kind is not None else [answer_kind] * len(answer)
    return [float(grade(text, ref, k)) for text, ref, k in zip(_texts(completions, multiverse_text), answer, kinds)]


def format_reward(
    completions, multiverse_text=None, forced_closing_tags=None, forced_penalty: float = 0.5, **kwargs
) -> list[float]:
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
