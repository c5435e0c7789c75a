"""Plain sampling: the engine as it is, `group_size` independent responses per prompt (the default strategy).

No paper: this is the standard GRPO rollout (DeepSeekMath, arXiv:2402.03300) every other strategy is compared to.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.rollout.base import Prompts, RolloutBatch, RolloutEngine, SamplingParams
from entropy_rl.rollout.strategies.base import (
    Metrics,
    RewardFn,
    Stateless,
    cost_metrics,
    register_strategy,
    sampled_tokens,
)


@dataclass(frozen=True)
class Params:
    """No settings: `rollout.temperature`, `top_p`, `top_k`, `max_new_tokens` and `group_size` say it all."""


@register_strategy("plain", Params)
class Plain(Stateless):
    """The engine as it is: G independent samples per prompt at the run's sampling settings."""

    def __init__(self, p: Params) -> None:
        self.p = p

    def generate(
        self,
        engine: RolloutEngine,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Prompts,
        sampling: SamplingParams,
        *,
        group_size: int,
        step: int,
        reward_fn: RewardFn | None = None,
        score_chunk: int = 0,
    ) -> tuple[RolloutBatch, Metrics]:
        """`engine.generate(prompts, sampling, group_size)`; see `RolloutStrategy.generate`."""
        batch = engine.generate(prompts, sampling, group_size)
        return batch, cost_metrics(sampled_tokens(batch), 0)
