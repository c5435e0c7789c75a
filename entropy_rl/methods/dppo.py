"""DPPO: a trust region on the probability change itself (binary TV or binary KL), not on the ratio.

Paper: Qi et al. 2026, "Rethinking the Trust Region in LLM Reinforcement Learning" (arXiv:2602.04879). Matched
against verl 0.9.1 `compute_policy_loss_dppo_tv` / `compute_policy_loss_dppo_kl` (`verl/trainer/ppo/core_algos.py`,
read in the PyPI wheel verl-0.9.1), which the authors' repo `sail-sg/Stable-RL` @ c6af1d1 points to; its own
`_compute_token_mask_for_policy_loss` (modes `dppo_binary_tv_recompute` / `dppo_binary_kl_recompute`) gives the same
masks. With p = exp(logp), p_old = exp(old_logp):

    TV:  valid_t = (p - p_old <= delta_high)                          if A_t > 0
                   (p - p_old >= -delta_low)                          otherwise
    KL:  D_t = p_old log(p_old / p) + (1 - p_old) log((1 - p_old + 1e-8) / (1 - p + 1e-8))   (binary KL)
         valid_t = (D_t <= delta_high) or (p <= p_old)                if A_t > 0
                   (D_t <= delta_low) or (p >= p_old)                 otherwise
    w_t = sg(min(r_t, ratio_cap)),  r_t = exp(clamp(logp - old_logp, -20, 20))     (truncated IS weight)
    l_t = -A_t w_t logp_t sg(valid_t)            gradient: -A_t w_t grad logp_t on valid tokens, 0 elsewhere

A token leaves the trust region only in the direction its advantage pushes it (as PPO's clip), but the region is
measured in probability, so a rare token may move a lot in ratio and a likely token little. The loss value is
-A w log pi (REINFORCE with a truncated weight), as verl writes it; it is not PPO's surrogate value.

Departures: none from verl 0.9.1 in the loss. Log-probs are clamped at 0 before the divergence (probabilities <= 1),
which changes nothing for valid log-probs and keeps the binary KL finite on corrupted ones. The authors' repo
measures the region against the rollout engine's log-probs (`bypass_mode`); here old_logp is the trainer's
pre-update pass (verl's "recompute" form), the only one this trainer has. Metrics: `policy/clipfrac` is the
fraction of tokens outside the region (verl's pg_clipfrac), split into `_high` (A > 0) and `_low` (A <= 0);
`method/dppo/truncated_frac` is the fraction of valid tokens whose weight hit ratio_cap (verl's
pg_clipfrac_lower); `method/dppo/divergence_mean` is the token mean of |p - p_old| (TV) or D_t (KL).

Defaults: delta_low / delta_high None mean the authors' recipe value for the divergence (verl
`examples/dppo_trainer/run_qwen30b_dppo.sh`: TV 0.15, KL 0.05). ratio_cap 20 is the fallback written in verl's
function; note that verl's `ActorConfig.clip_ratio_c` default (3.0) takes precedence there unless set, and the
recipe disables the truncation (10000, the paper's §5.4 advises a large cap). The `dppo` / `dppo_kl` variants
follow the recipe: no truncation, Dr.GRPO advantages (no std scaling), `seq-mean-token-sum-norm`.

Neutral setting: none (a probability-difference mask and a REINFORCE-form value; never PPO's surrogate).

Params:
    divergence ("tv"): "tv" (binary total variation, |p - p_old|) or "kl" (binary KL D_t).
    delta_low (None): threshold when A <= 0; None = recipe value (TV 0.15, KL 0.05).
    delta_high (None): threshold when A > 0; None = recipe value (TV 0.15, KL 0.05).
    ratio_cap (20.0): truncation C of the detached IS weight (> 0), or None for no truncation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean

RECIPE_DELTA = {"tv": 0.15, "kl": 0.05}  # verl examples/dppo_trainer/run_qwen30b_dppo.sh
BINARY_KL_EPS = 1e-8  # verl: log((1 - p_old + 1e-8) / (1 - p + 1e-8))


@dataclass(frozen=True)
class Params:
    divergence: str = "tv"  # "tv" | "kl"
    delta_low: float | None = None  # threshold for A <= 0; None = recipe value of the divergence
    delta_high: float | None = None  # threshold for A > 0; None = recipe value of the divergence
    ratio_cap: float | None = 20.0  # truncation of the detached IS weight; None = no truncation

    def __post_init__(self) -> None:
        if self.divergence not in RECIPE_DELTA:
            raise ValueError(f"divergence must be 'tv' or 'kl', got '{self.divergence}'")
        for name in ("delta_low", "delta_high"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 (or None), got {value}")
        if self.ratio_cap is not None and self.ratio_cap <= 0:
            raise ValueError(f"ratio_cap must be > 0 (or None), got {self.ratio_cap}")

    @property
    def bounds(self) -> tuple[float, float]:
        """(delta_low, delta_high) with None replaced by the recipe value of the divergence."""
        default = RECIPE_DELTA[self.divergence]
        return (
            default if self.delta_low is None else self.delta_low,
            default if self.delta_high is None else self.delta_high,
        )


def binary_kl(old_logp: Tensor, logp: Tensor) -> Tensor:
    """D = p_old log(p_old / p) + (1 - p_old) log((1 - p_old + 1e-8) / (1 - p + 1e-8)), elementwise; [B, T] -> [B, T].

    The KL between Bernoulli(p_old) and Bernoulli(p) of the sampled token (verl's form, eps included); log-probs
    are clamped at 0 so that the probabilities are <= 1.
    """
    old_logp, logp = old_logp.clamp(max=0.0), logp.clamp(max=0.0)
    p_old, p = torch.exp(old_logp), torch.exp(logp)
    tail = torch.log((1.0 - p_old + BINARY_KL_EPS) / (1.0 - p + BINARY_KL_EPS))
    return p_old * (old_logp - logp) + (1.0 - p_old) * tail


def trust_region(x: PolicyInputs, p: Params) -> tuple[Tensor, Tensor]:
    """(valid bool [B, T], divergence [B, T]) of the DPPO trust region, on detached log-probs."""
    logp, old_logp = x.logp.detach(), x.old_logp.detach()
    prob, old_prob = torch.exp(logp.clamp(max=0.0)), torch.exp(old_logp.clamp(max=0.0))
    low, high = p.bounds
    if p.divergence == "tv":
        diff = prob - old_prob
        valid_pos, valid_neg, div = diff <= high, diff >= -low, diff.abs()
    else:
        div = binary_kl(old_logp, logp)
        valid_pos, valid_neg = (div <= high) | (prob <= old_prob), (div <= low) | (prob >= old_prob)
    return torch.where(x.adv > 0, valid_pos, valid_neg), div


@register_policy_loss("dppo", Params, paper="arXiv:2602.04879", neutral=None)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """-A sg(min(r, C)) logp on tokens inside the trust region. In: [B, T] each. Out: loss [B, T], metrics."""
    valid, div = trust_region(x, p)  # [B, T] bool, [B, T]
    with torch.no_grad():
        lr = ppo.log_ratio(x.logp, x.old_logp)
        ratio = torch.exp(lr)
        weight = ratio if p.ratio_cap is None else ratio.clamp(max=p.ratio_cap)  # [B, T], detached
    per_token = -x.adv * weight * x.logp * valid.to(x.logp.dtype)
    with torch.no_grad():
        out = (~valid).to(x.mask.dtype)
        capped = torch.zeros_like(out) if p.ratio_cap is None else (ratio > p.ratio_cap).to(out.dtype) * (1.0 - out)
        metrics = {
            "policy/clipfrac": masked_mean(out, x.mask),
            "policy/clipfrac_low": masked_mean(out * (x.adv <= 0).to(out.dtype), x.mask),
            "policy/clipfrac_high": masked_mean(out * (x.adv > 0).to(out.dtype), x.mask),
            "policy/approx_kl": masked_mean(ratio - 1.0 - lr, x.mask),
            "policy/ratio_mean": masked_mean(ratio, x.mask),
            "method/dppo/truncated_frac": masked_mean(capped, x.mask),
            "method/dppo/divergence_mean": masked_mean(div, x.mask),
        }
    return LossOutput(per_token, metrics)
