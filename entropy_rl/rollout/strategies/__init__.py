"""Rollout strategies (`rollout.strategy`): one module per strategy; importing this package registers them all.

Not here: ETTRL's entropy-fork tree rollout (arXiv:2508.11356). No code was released and only the abstract could be
read: the fork-point rule, branching factor, tree depth and the EAR formula are unknown, so it cannot be
implemented faithfully (shared/methods.md section 13). It is also a test-time method (majority-vote pseudo-labels),
not a verifiable-reward one.
"""

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
