"""W-REINFORCE / NSR: down-weight positive samples by lambda (NSR: lambda = 0, learn from negative samples only).

Paper: Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning"
(arXiv:2506.01347). Official code: `TianHongZXY/RLVR-Decomposed` @ a5d4e7c (a verl fork):
`compute_psr_nsr_outcome_advantage` and `compute_policy_loss` in `verl/trainer/ppo/core_algos.py`, the run script
`run_qwen2.5-math-7b_psr_nsr.sh`. There the advantage of a response is its +-1 outcome with no baseline, scaled by
lambda (`positive_advantage_weight`, README: 0.1) when correct, and the actor loss is verl's PPO clip (eps 0.2, no
dual clip; 4 mini-batches per rollout in the script). The same weighting also exists there at the loss level
(`positive_learning_weight`): the per-token loss of correct samples times lambda. Here, per token:

    A'_t = lambda A_t   if A_t > 0        A'_t = A_t   otherwise
    l_t  = max(-A' r, -A' clip(r, 1 - eps_low, 1 + eps_high)), dual-clipped at -c A' for A < 0 (off by default)

Since lambda >= 0 this equals lambda times PPO's loss on the tokens with A > 0, i.e. the official loss-level form.
With the `signed_reward` estimator (A = +1 correct, -1 incorrect) it is exactly the paper's W-REINFORCE (lambda on
correct responses, -1 on incorrect ones); the `w_reinforce` and `nsr` variants pair them so. With group-relative
advantages (grpo, rloo) the weight falls on the A > 0 tokens, the correct responses of mixed groups: a loss-level
analogue, not the paper's objective (there, all-correct and all-wrong groups train too).

Departures from the official code:
    - NSR (lambda = 0): the official trainer drops the correct responses from the batch (`batch.subset`), so they
      leave the token-mean denominator; here they stay with zero loss and count in the trainer's aggregation,
      which scales the step by the share of tokens from incorrect responses (the direction is the same).
    - The official runs also carried verl's default entropy bonus of that version (`entropy_coeff` 0.001, not
      overridden by the script); it is not part of this method.
    - The log-ratio is clamped to [-20, 20] before exp (core.ppo; the official loss does not clamp).
Metrics: `policy/clipfrac*` keep their PPO meaning; `method/w_reinforce/neg_frac` is the fraction of tokens with
A < 0 (those trained at full weight).

Neutral setting: positive_weight = 1 is `ppo_clip`.

Params:
    positive_weight (0.1): lambda, the weight of tokens with A > 0 (>= 0; 0 is NSR, 1 is plain PPO).
    eps_low (0.2): ratio floor 1 - eps_low.
    eps_high (0.2): ratio ceiling 1 + eps_high.
    clip_ratio_c (None): dual-clip constant c > 1 for A < 0, or None (the official loss has none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean


@dataclass(frozen=True)
class Params:
    positive_weight: float = 0.1  # lambda (README recommendation); 0 = NSR, 1 = PPO
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high
    clip_ratio_c: float | None = None  # dual clip for A < 0; the official loss has none

    def __post_init__(self) -> None:
        if self.positive_weight < 0:
            raise ValueError(f"positive_weight must be >= 0, got {self.positive_weight}")
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)


@register_policy_loss("w_reinforce", Params, paper="arXiv:2506.01347", neutral={"positive_weight": 1.0})
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """PPO loss on A' = lambda A (A > 0) or A (A <= 0). In: [B, T] each. Out: loss [B, T] and policy/* metrics."""
    adv = torch.where(x.adv > 0, p.positive_weight * x.adv, x.adv)  # [B, T]
    s = ppo.clipped_surrogate(x.logp, x.old_logp, adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    metrics["method/w_reinforce/neg_frac"] = masked_mean((x.adv < 0).to(x.mask.dtype), x.mask)
    return LossOutput(s.loss, metrics)
