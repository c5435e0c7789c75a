"""PPO clipped-surrogate pieces every method reuses (Schulman et al. 2017, arXiv:1707.06347; dual clip
Ye et al. 2020, arXiv:1912.09729; decoupled bounds from DAPO, arXiv:2503.14476)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core.types import masked_mean

LOG_RATIO_CLAMP = 20.0  # verl clamps log-ratios to [-20, 20] before exp; so do we


def token_covariance(logp: Tensor, adv: Tensor, mask: Tensor) -> Tensor:
    """Centred product Cov_t = (logp_t - mean logp)(A_t - mean A), means over valid tokens; 0 off the mask. [B, T].

    The per-token covariance of Cui et al. 2025 (arXiv:2505.22617), used by Clip-Cov and KL-Cov selection.
    """
    centred = (logp - masked_mean(logp, mask)) * (adv - masked_mean(adv, mask))
    return centred * mask.to(centred.dtype)


def log_ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    """log r = logp - old_logp, clamped to [-20, 20] so exp stays finite. [B, T]."""
    return (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@dataclass(frozen=True)
class Surrogate:
    """Per-token pieces of the clipped surrogate, all [B, T].

    Attributes:
        loss: max(-A r, -A clip(r)) then dual-clipped where A < 0 (if enabled).
        ratio: r = exp(logp - old_logp).
        clipped_low: bool, the lower bound binds (A < 0 and r < 1 - eps_low).
        clipped_high: bool, the upper bound binds (A > 0 and r > 1 + eps_high).
        clipped_dual: bool, the dual clip binds (A < 0 and -A r > -c A).
    """

    loss: Tensor
    ratio: Tensor
    clipped_low: Tensor
    clipped_high: Tensor
    clipped_dual: Tensor

    @property
    def clipped(self) -> Tensor:
        """bool [B, T]: any bound binds, so the token gets no policy gradient."""
        return self.clipped_low | self.clipped_high | self.clipped_dual


def check_clip_params(eps_low: float, eps_high: float, clip_ratio_c: float | None) -> None:
    """Validate PPO clip parameters (for Params.__post_init__): eps >= 0, dual-clip c > 1 or None."""
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"eps_low and eps_high must be >= 0, got {eps_low}, {eps_high}")
    if clip_ratio_c is not None and clip_ratio_c <= 1:
        raise ValueError(f"clip_ratio_c must be > 1 (or None), got {clip_ratio_c}")


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    eps_low: float | Tensor = 0.2,
    eps_high: float | Tensor = 0.2,
    clip_ratio_c: float | None = 3.0,
) -> Surrogate:
    """PPO per-token loss l_t = max(-A r, -A clip(r, 1-eps_low, 1+eps_high)), dual clip min(l, -c A) for A < 0.

    Args:
        logp: [B, T] current log-probs (with gradient).
        old_logp: [B, T] rollout-policy log-probs.
        adv: [B, T] advantages.
        eps_low: ratio floor 1 - eps_low (binds when A < 0).
        eps_high: ratio ceiling 1 + eps_high (binds when A > 0).
        clip_ratio_c: dual-clip constant c > 1 (verl default 3), or None to disable.

    Returns:
        Surrogate with the per-token loss (not masked; callers multiply by the mask via aggregate).

    Raises:
        ValueError: if clip_ratio_c is not > 1.
    """
    ratio = torch.exp(log_ratio(logp, old_logp))
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * torch.clamp(ratio, 1.0 - torch.as_tensor(eps_low), 1.0 + torch.as_tensor(eps_high))
    loss = torch.maximum(loss_unclipped, loss_clipped)
    clip_bound = loss_clipped > loss_unclipped  # the clipped branch is the max: gradient stops
    clipped_low = clip_bound & (adv < 0)
    clipped_high = clip_bound & (adv > 0)
    if clip_ratio_c is not None:
        if clip_ratio_c <= 1.0:
            raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c}")
        dual = -adv * clip_ratio_c
        clipped_dual = (adv < 0) & (loss > dual)
        loss = torch.where(clipped_dual, dual, loss)
    else:
        clipped_dual = torch.zeros_like(clip_bound)
    return Surrogate(loss, ratio, clipped_low, clipped_high, clipped_dual)


def surrogate_metrics(s: Surrogate, logp: Tensor, old_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Standard PPO diagnostics as token means over the mask: clip fractions and approx KL (k3 of old vs new)."""
    with torch.no_grad():
        lr = log_ratio(logp, old_logp)
        return {
            "policy/clipfrac": masked_mean(s.clipped.float(), mask),
            "policy/clipfrac_low": masked_mean(s.clipped_low.float(), mask),
            "policy/clipfrac_high": masked_mean(s.clipped_high.float(), mask),
            "policy/clipfrac_dual": masked_mean(s.clipped_dual.float(), mask),
            "policy/approx_kl": masked_mean(torch.exp(lr) - 1.0 - lr, mask),
            "policy/ratio_mean": masked_mean(s.ratio.detach(), mask),
        }
