"""Entropy-based advantage shaping: PPO clip on A + min(alpha * sg(H_cur), abs(A) / kappa), a detached, capped bonus.

Paper: Cheng et al. 2025, "Reasoning with Exploration: An Entropy Perspective" (arXiv:2506.14758, AAAI 2026).
No code released ("one line" in verl's `update_policy`); formula and settings from the paper:

    psi_t   = min(alpha * H_t^detach, |A_t| / kappa)          H_t: the current policy's entropy at token t
    A'_t    = A_t + psi_t                                     then the unchanged PPO clipped surrogate on A'
psi >= 0 never flips the sign of A (kappa > 1 keeps psi < |A|), vanishes where A = 0 (groups with one outcome),
and carries no gradient (H is detached): the gradient keeps PPO's form sum_t A'_t grad log pi, only the advantage
grows with the token's entropy. H is the toolkit's tempered full-vocabulary entropy of the update forward pass
(`entropy`, the same definition as `entropy/token_mean`), as the paper's H of pi_theta inside `update_policy`.

Why a loss-stage method and not an advantage estimator: estimators see only H_old from the pre-update pass
(AdvantageInputs.old_entropy, as empg/canon use it), computed once per step; the paper adds the term inside the
update on the entropy of the current forward pass. The two agree on the first mini-batch of an on-policy step
and drift apart on later mini-batches and PPO epochs. Here psi uses H_cur of every update pass, shapes whatever
advantage the configured estimator produced (QAE, GRPO, ...), and logs its size per step (estimators cannot
log). The cost: it is its own loss (PPO clip), not a term stacked onto another loss method.

Departures: none in the formula. Settings: the paper uses kappa = 2 in all runs and alpha = 0.4 with GRPO (0.1
with PPO + critic), on top of Clip-Higher and token-level loss; the variant `entropy_adv` sets those
(eps_high 0.28); the module defaults keep ppo_clip's symmetric 0.2 clip.

Params:
    eps_low (0.2), eps_high (0.2), clip_ratio_c (3.0): PPO clip, as ppo_clip.
    alpha (0.4): entropy scale (the paper's GRPO setting); 0 reduces to ppo_clip.
    kappa (2.0): cap psi <= |A| / kappa, kappa > 1 (the paper's value in every run).

Metrics:
    method/entropy_adv/psi: masked token mean of psi (advantage units).
    method/entropy_adv/capped_frac: share of valid tokens with A != 0 where the cap |A| / kappa binds.
    method/entropy_adv/entropy: masked token mean of H_cur (nats).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean


@dataclass(frozen=True)
class Params:
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high (the paper's runs: Clip-Higher 0.28)
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0
    alpha: float = 0.4  # entropy scale (paper: 0.4 GRPO, 0.1 PPO)
    kappa: float = 2.0  # cap |A| / kappa (paper: 2)

    def __post_init__(self) -> None:
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.kappa <= 1:
            raise ValueError(f"kappa must be > 1 (the cap |A| / kappa must stay below |A|), got {self.kappa}")


@register_policy_loss(
    "entropy_adv",
    Params,
    paper="arXiv:2506.14758",
    inputs={"entropy"},
    neutral={"alpha": 0.0},
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """PPO clip on the entropy-shaped advantage. In: [B, T] each (entropy used detached). Out: [B, T], metrics."""
    assert x.entropy is not None  # checked by policy_loss / the trainer
    h = x.entropy.detach()
    bonus = p.alpha * h  # [B, T]
    cap = x.adv.abs() / p.kappa
    psi = torch.minimum(bonus, cap)
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv + psi, p.eps_low, p.eps_high, p.clip_ratio_c)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    nonzero = x.mask * (x.adv != 0).to(x.mask.dtype)
    metrics["method/entropy_adv/psi"] = masked_mean(psi, x.mask)
    metrics["method/entropy_adv/capped_frac"] = masked_mean((cap < bonus).to(h.dtype), nonzero)
    metrics["method/entropy_adv/entropy"] = masked_mean(h, x.mask)
    return LossOutput(s.loss, metrics)
