"""KL-Cov: unclipped policy gradient plus beta |logp - old_logp| on the top-k Cov(logp, A) tokens (Cui et al. 2025).

Paper: "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv:2505.22617.
Official code: PRIME-RL/Entropy-Mechanism-of-RL `core_algos.py` (compute_policy_loss_kl_cov) and its verl
port (`loss_mode=kl_cov`). Spec: methods.md section 1 item 6.

Per token over the valid tokens of the optimizer mini-batch (`select`):
    Cov_t = (logp_t - mean logp)(A_t - mean A)              logp = current policy, detached
    I     = top-k tokens by Cov (largest first, ties broken by torch.topk), k = max(1, floor(kl_ratio * N_valid))
Loss (`loss`, per micro-batch), for EVERY token: l_t = -A_t r_t (no PPO clip, no dual clip), and on t in I
additionally + kl_coef * |logp_t - old_logp_t| (an "abs" KL surrogate pulling log pi back to pi_old).

No neutral setting: KL-Cov never clips, so no parameter value reproduces ppo_clip (registered neutral=None).
kl_ratio = 0 selects nothing (as the official `if k != 0`), leaving plain unclipped -A r.

On-policy degeneracy: with one mini-batch and one epoch logp == old_logp, so the penalty and its
(sub)gradient are exactly 0 and KL-Cov is unclipped policy gradient (PRIME issue #1; the paper uses 8
mini-batches per rollout). `select` warns once per process (warnings.warn) when the penalty is identically zero
on the selected tokens in two consecutive calls. One such call alone is normal: the first mini-batch of every
rollout is on-policy. Watch `method/kl_cov/abs_logratio_mean`.

Departures from the official code (deliberate):
    - Selection over the whole optimizer mini-batch, not per micro-batch (toolkit rule).
    - The ratio uses the log-ratio clamped to [-20, 20] (core.ppo) so it stays finite; the penalty uses the raw
      |logp - old_logp|. Official KL-Cov does not clamp.
    - kl_ratio is a fraction (verl's unit). PRIME's `k_percent` is a percent: divide it by 100.

Variants (entropy_rl/presets/methods/, `entropy-rl compare --methods NAME`):
    kl_cov        kl_ratio 2e-3, kl_coef 1.0 (recipe/dapo/7b_kl_cov.sh, k_percent 0.2 = 2e-3)
    kl_cov_32b    kl_ratio 2e-4, kl_coef 1.0 (recipe/dapo/32b_kl_cov.sh, k_percent 0.02 = 2e-4)
    kl_cov_verl   the defaults (verl PolicyLossConfig: kl_cov_ratio 2e-4, ppo_kl_coef 0.1)

Params:
    kl_ratio (2e-4): fraction of the mini-batch's valid tokens that get the penalty (verl kl_cov_ratio).
    kl_coef (0.1): beta, weight of |logp - old_logp| on the selected tokens (verl ppo_kl_coef; paper 1.0).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean, zero_scalar


@dataclass(frozen=True)
class Params:
    kl_ratio: float = 2e-4  # fraction (not percent) of valid tokens penalised (verl kl_cov_ratio)
    kl_coef: float = 0.1  # beta on |logp - old_logp| (verl ppo_kl_coef yaml default; paper recipes 1.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.kl_ratio <= 1.0:
            raise ValueError(f"kl_ratio must be a fraction in [0, 1] (PRIME's k_percent / 100), got {self.kl_ratio}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")


# Once-per-process on-policy warning: count consecutive selections whose penalty is identically zero.
_ON_POLICY: dict[str, Any] = {"streak": 0, "warned": False}
ON_POLICY_STREAK_TO_WARN = 2


def n_to_penalise(kl_ratio: float, n_valid: int) -> int:
    """max(1, floor(kl_ratio * N_valid)), or 0 when kl_ratio == 0 or there is no valid token (official `k != 0`)."""
    if kl_ratio == 0.0 or n_valid == 0:
        return 0
    return max(1, math.floor(kl_ratio * n_valid))


def _note_on_policy(on_policy: bool) -> bool:
    """Update the on-policy streak; True exactly once per process, when the streak first reaches the threshold."""
    state = _ON_POLICY
    state["streak"] = state["streak"] + 1 if on_policy else 0
    if state["streak"] >= ON_POLICY_STREAK_TO_WARN and not state["warned"]:
        state["warned"] = True
        return True
    return False


ON_POLICY_MESSAGE = (
    "kl_cov: |logp - old_logp| is exactly 0 on every selected token in consecutive mini-batches: the run is "
    "on-policy, so the KL-Cov penalty and its gradient vanish and the loss is unclipped policy gradient. "
    "Use several mini-batches or epochs per rollout (the paper uses 8 mini-batches)."
)


def select(x: PolicyInputs, p: Params, ctx: StepContext, generator: torch.Generator | None) -> TokenWeights:
    """Top-k Cov tokens over the mini-batch. In: [B, T] detached. Out: {"penalize": bool [B, T]}, metrics."""
    valid = x.mask.bool()
    n_valid = int(valid.sum())
    cov = ppo.token_covariance(x.logp, x.adv, x.mask)
    k = n_to_penalise(p.kl_ratio, n_valid)
    penalize = torch.zeros_like(valid).flatten()
    if k > 0:
        scores = torch.where(valid, cov, torch.full_like(cov, -math.inf)).flatten()
        penalize[torch.topk(scores, k, largest=True).indices] = True
    penalize = penalize.view_as(valid)  # [B, T]
    abs_lr = (x.logp - x.old_logp).abs()
    if k > 0 and _note_on_policy(bool((abs_lr[penalize] == 0).all())):
        warnings.warn(ON_POLICY_MESSAGE, stacklevel=2)
    sel_mean = masked_mean(abs_lr, penalize.to(abs_lr.dtype)) if k > 0 else zero_scalar(abs_lr)
    metrics = {
        "method/kl_cov/n_selected": torch.tensor(float(k), dtype=x.logp.dtype, device=x.logp.device),
        "method/kl_cov/cov_mean": masked_mean(cov, x.mask),
        "method/kl_cov/abs_logratio_mean": masked_mean(abs_lr, x.mask),
        "method/kl_cov/abs_logratio_selected_mean": sel_mean,
    }
    return TokenWeights({"penalize": penalize}, metrics)


@register_policy_loss("kl_cov", Params, select=select, paper="arXiv:2505.22617", neutral=None)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """Per-token -A r everywhere plus kl_coef |logp - old_logp| on selected tokens. In: [B, T]. Out: [B, T], metrics."""
    penalize = sel["penalize"]
    lr = ppo.log_ratio(x.logp, x.old_logp)
    ratio = torch.exp(lr)
    pg = -x.adv * ratio
    penalty = p.kl_coef * (x.logp - x.old_logp).abs()
    per_token = torch.where(penalize, pg + penalty, pg)
    with torch.no_grad():
        zero = zero_scalar(x.logp)
        metrics = {
            "policy/clipfrac": zero,  # KL-Cov never clips
            "policy/approx_kl": masked_mean(torch.exp(lr) - 1.0 - lr, x.mask),
            "policy/ratio_mean": masked_mean(ratio, x.mask),
            "method/kl_cov/penalty_mean": masked_mean(
                torch.where(penalize, penalty, torch.zeros_like(penalty)), x.mask
            ),
        }
    return LossOutput(per_token, metrics)
