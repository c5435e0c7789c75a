"""Signed reward: A_i = 2 r_i - 1, a binary outcome as +1 (correct) / -1 (incorrect), with no baseline.

The advantage of REINFORCE on +-1 rewards, as in Zhu et al. 2025 (arXiv:2506.01347), whose official
`compute_psr_nsr_outcome_advantage` (`TianHongZXY/RLVR-Decomposed` @ a5d4e7c) gives a correct response +1 and an
incorrect one -1 before its positive-sample weight; pair it with the `w_reinforce` method for W-REINFORCE / NSR.
Rewards in [0, 1] map linearly onto [-1, 1]; no group statistics are used, so groups where every response got the
same reward still train (unlike grpo / rloo).

Params: none.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from entropy_rl.core.advantage import AdvantageInputs, register_advantage


@dataclass(frozen=True)
class Params:
    pass


@register_advantage("signed_reward", Params)
def signed_reward(x: AdvantageInputs, p: Params) -> Tensor:
    """A = 2 r - 1 per response (+1 correct, -1 incorrect for binary rewards). rewards [N] -> [N]."""
    return 2.0 * x.rewards - 1.0
