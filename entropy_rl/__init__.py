"""entropy-rl: measure, predict and control policy entropy in RL with verifiable rewards."""

from entropy_rl.core.aggregate import AGG_MODES, aggregate
from entropy_rl.core.advantage import compute_advantages
from entropy_rl.core.entropy import token_entropy
from entropy_rl.core.policy_loss import policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, TokenWeights

# Registration of the built-in catalogue happens here, at the package root, so that `core` never imports
# upward: importing any `entropy_rl.*` module loads this file first.
import entropy_rl.advantages  # noqa: E402,F401  (registers the advantage estimators)
import entropy_rl.methods  # noqa: E402,F401  (registers the policy-loss methods)

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
