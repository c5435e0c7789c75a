"""Entropy bonus: PPO clip minus coef * H_cur per token, pushing the policy's entropy up (static coefficient).

Papers: Williams & Peng 1991 (entropy regularisation); as used in RLVR by verl `entropy_coeff` and TRL
`entropy_coef`. The bonus is aggregated with the same mode and normaliser as the policy loss (verl
behaviour; under seq-mean-token-sum* it is a per-sequence sum). H_cur is the tempered full-vocabulary entropy
of the update forward pass, with gradient: the same definition as the `entropy/token_mean` metric.

Params:
    eps_low (0.2), eps_high (0.2), clip_ratio_c (3.0): as ppo_clip.
    coef (0.001): entropy coefficient c_H >= 0; 0 reduces to ppo_clip.
"""

from __future__ import annotations

from dataclasses import dataclass

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, TokenWeights, masked_mean


@dataclass(frozen=True)
class Params:
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0
    coef: float = 0.001  # entropy coefficient c_H (verl default before 2025-05)

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError(f"coef must be >= 0, got {self.coef}")


@register_policy_loss(
    "entropy_bonus", Params, stage="regularizer", paper="verl entropy_coeff / TRL entropy_coef",
    needs_entropy=True, neutral={"coef": 0.0},
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights | None = None) -> LossOutput:
    """Per-token PPO loss minus coef * H_cur. In: [B, T] each (entropy with grad). Out: [B, T], metrics."""
    assert x.entropy is not None  # checked by policy_loss / the trainer
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    metrics["method/entropy_bonus/entropy"] = masked_mean(x.entropy.detach(), x.mask)
    return LossOutput(s.loss - p.coef * x.entropy, metrics)
