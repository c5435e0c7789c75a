"""Sampled-token KL estimators k1 / k2 / k3 (Schulman, "Approximating KL divergence", 2020; verl `kl_penalty`).

All take log-probs of the *sampled* tokens under the policy and the reference, [B, T], and return [B, T].
As losses their gradients differ: k1 and k2 give the reverse-KL gradient grad KL(pi||ref) (k1 only in
expectation with a score-function term, which a plain loss misses), k3's expected gradient is the forward
KL grad KL(ref||pi) (verified numerically in methods.md Appendix A).
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = logp - ref_logp (unbiased, high variance, can be negative)."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 (logp - ref_logp)^2 (biased, low variance, >= 0)."""
    return 0.5 * (logp - ref_logp).pow(2)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = e^d - d - 1 with d = clamp(ref_logp - logp, -20, 20), output clamped to [-10, 10] (verl low_var_kl)."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Dispatch to k1 / k2 / k3 by name. [B, T] -> [B, T]."""
    if estimator == "k1":
        return kl_k1(logp, ref_logp)
    if estimator == "k2":
        return kl_k2(logp, ref_logp)
    if estimator == "k3":
        return kl_k3(logp, ref_logp)
    raise ValueError(f"unknown KL estimator '{estimator}'. Valid: {', '.join(KL_ESTIMATORS)}")
