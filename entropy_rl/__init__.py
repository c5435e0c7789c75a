"""entropy-rl: measure, predict and control policy entropy in RL with verifiable rewards."""

from entropy_rl.core.aggregate import AGG_MODES, aggregate
from entropy_rl.core.advantage import compute_advantages
from entropy_rl.core.entropy import token_entropy
from entropy_rl.core.policy_loss import policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, TokenWeights

__version__ = "0.1.0"

__all__ = [
    "AGG_MODES",
    "LossOutput",
    "PolicyInputs",
    "TokenWeights",
    "aggregate",
    "compute_advantages",
    "policy_loss",
    "token_entropy",
]
