"""Order statistics and the per-token entropy-change estimate: the tensor math metrics and methods share.

Pure torch. `quantiles` is the one quantile routine of the package (the entropy metrics and STEER's p99 use
it); `entropy_change_omega` is STEER's per-token estimate, used by the `steer` method and by the
`dynamics/steer_omega` batch predictor.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def quantiles(values: Tensor, qs: Sequence[float]) -> Tensor:
    """Quantiles of a 1-D tensor, matching `numpy.quantile(values, qs, method="linear")`.

    Uses `torch.kthvalue` (two order statistics per q, linearly interpolated at position q * (N - 1))
    instead of `torch.quantile`, which refuses inputs above 2**24 elements: a rollout batch of
    512 x 32k response tokens is already past that.

    Args:
        values: [N] values (any float or integer dtype; any device). Should be finite: NaN ordering in
            `kthvalue` is unspecified.
        qs: quantile levels, each in [0, 1].

    Returns:
        [len(qs)] quantiles on `values.device`, dtype `values.dtype` for float input, float64 for integer
        input. For empty `values` the result is all zeros: callers must check `values.numel()` and skip
        (`entropy_stats` omits the keys) rather than log a made-up number.

    Raises:
        ValueError: if `values` is not 1-D or a q lies outside [0, 1].
    """
    if values.dim() != 1:
        raise ValueError(f"quantiles expects a 1-D tensor, got shape {tuple(values.shape)}")
    for q in qs:
        if not 0.0 <= float(q) <= 1.0:
            raise ValueError(f"quantile level must be in [0, 1], got {q}")
    out_dtype = values.dtype if values.is_floating_point() else torch.float64
    n = values.numel()
    out = torch.zeros(len(qs), dtype=out_dtype, device=values.device)
    if n == 0:
        return out
    work = values.double()  # interpolate in fp64 so fp32 inputs lose nothing in the lerp
    cache: dict[int, Tensor] = {}

    def order_stat(i: int) -> Tensor:  # i is 0-based; kthvalue's k is 1-based
        if i not in cache:
            cache[i] = torch.kthvalue(work, i + 1).values
        return cache[i]

    for j, q in enumerate(qs):
        pos = float(q) * (n - 1)
        lo = min(int(math.floor(pos)), n - 1)
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        v_lo = order_stat(lo)
        out[j] = v_lo if frac == 0.0 or hi == lo else v_lo + (order_stat(hi) - v_lo) * frac
    return out


def entropy_change_omega(logp: Tensor, old_logp: Tensor, adv: Tensor, old_entropy: Tensor) -> Tensor:
    """STEER's per-token entropy-change estimate Omega_t (Hao et al., arXiv:2510.10150; official
    `compute_token_weights`): Omega_t = (A_t / p_old) * p (1 - p) (log p + H_old), non-finite values set to 0.

    On-policy (logp == old_logp) it is A_t (1 - p_t)(log p_t + H_t); -Omega predicts the sign of the entropy change.

    Args:
        logp: [B, T] current log-probs of the sampled tokens (detached).
        old_logp: [B, T] rollout log-probs.
        adv: [B, T] advantages.
        old_entropy: [B, T] H_old in nats.

    Returns:
        [B, T] signed Omega (not masked), in the dtype of the inputs.
    """
    p = torch.exp(logp).clamp(1e-8, 1.0 - 1e-8)
    p_old = torch.exp(old_logp).clamp(1e-8, 1.0)
    out = (adv / p_old) * (p * (1.0 - p) * (torch.log(p) + old_entropy))
    return torch.where(torch.isfinite(out), out, torch.zeros_like(out))
