"""Rollout strategies (`rollout.strategy`): one module per strategy; importing this package registers them all."""

from entropy_rl.rollout.strategies import (  # noqa: F401  (registration)
    adaptive_temperature,
    aepo_branching,
    arbitrary_entropy,
    cure,
    plain,
    top_h,
)
from entropy_rl.rollout.strategies.base import STRATEGIES, RewardFn, RolloutStrategy, make_strategy

__all__ = ["STRATEGIES", "RewardFn", "RolloutStrategy", "make_strategy"]
