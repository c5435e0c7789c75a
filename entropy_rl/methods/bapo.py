"""BAPO: PPO whose ratio bounds (c_low, c_high) are searched each mini-batch so positives get a target loss share.

Paper: Xi et al. 2025, "BAPO: Stabilizing Off-Policy RL for LLMs via Balanced Policy Optimization with Adaptive
Clipping" (arXiv:2510.18927). Reference code: `WooooDyy/BAPO` `recipe/bapo/policy_loss.py` (methods.md §11;
read again for this module: the formulas below are that file's).

Selection (`select`, once per optimizer mini-batch, on the detached current policy):
    r = exp(clamp(logp - old_logp, -20, 20));  bounds are explicit ratio bounds c_low < 1 < c_high.
    e_t = A_t M_t (min(r_t, c_high) if A_t >= 0 else max(r_t, c_low))       (value of the clipped surrogate)
    P = sum max(e, 0),  N = sum max(-e, 0),  ratio = P / (N + eps)  (inf when N = 0)
    start at (a_low, a_high); while ratio < target and c_low < b_low: c_low = min(c_low + delta_low, b_low);
    then while ratio < target and c_high < b_high: c_high = min(c_high + delta_high, b_high).
    target = rho0 / (1 - rho0) with rho0 = `target_positive_share` (README: rho0 = 0.5 of P/(P+N), i.e. P/N = 1).
Loss (per micro-batch): PPO with clamp(r, c_low, c_high) and dual clip c for A < 0 (`core.ppo.clipped_surrogate`).

Departures from the official code:
    - The search runs over the optimizer mini-batch (the official port runs it per micro-batch, all-reduced over
      data-parallel ranks); the chosen bounds are returned as [B, 1] tensors and sliced per micro-batch.
    - The search is vectorised (every candidate bound evaluated at once, then the sequential rule applied);
      the result is identical to the official loop, including its float accumulation of the steps.
Caveat (reported, not changed): with the official e_t, N depends only on c_low and grows with it
(max(r, c_low) increases), while P depends only on c_high. The lower-bound stage therefore can never raise P/N;
it only moves c_low up to b_low when the target is missed. The paper's description ("raise c_low to filter excess
negatives") suggests contributions counted over unclipped tokens instead; that variant is not implemented here
because the paper's formula was not available to check. On-policy (r = 1) the bounds do not change e at all.

Defaults (three sources disagree; we use the README / paper ranges):
    README / paper: rho0 = 0.5, c_low in [0.6, 0.9], c_high in [1.2, 3.0] (steps 0.05 assumed).
    yaml `config/bapo_trainer.yaml`: P/N target 1 (rho0 = 0.5), c_low 0.6 -> 0.8 step 0.05, c_high 1.2 -> 2.0 step
    0.05. Example script: P/N target 0.5 (rho0 = 1/3), c_low 0.8 -> 0.95 step 0.05, c_high 1.2 -> 2.0 step 0.1.

Neutral setting: a_low = b_low = 0.8 and a_high = b_high = 1.2 fixes the bounds at 1 -/+ 0.2: this is `ppo_clip`
with eps 0.2 / 0.2 and the same dual-clip c.

Params:
    target_positive_share (0.5): rho0, the target share P/(P+N) of the positive-advantage contribution.
    a_low (0.6): starting lower ratio bound c_low.
    b_low (0.9): largest c_low the search may reach (< 1).
    delta_low (0.05): c_low step.
    a_high (1.2): starting upper ratio bound c_high.
    b_high (3.0): largest c_high the search may reach.
    delta_high (0.05): c_high step.
    clip_ratio_c (3.0): dual-clip constant (> 1) for A < 0, or None.
    eps (1e-8): added to N in P/N (official).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights


@dataclass(frozen=True)
class Params:
    target_positive_share: float = 0.5  # rho0 = P / (P + N); converted to P/N = rho0 / (1 - rho0)
    a_low: float = 0.6  # start of c_low
    b_low: float = 0.9  # max of c_low
    delta_low: float = 0.05  # c_low step
    a_high: float = 1.2  # start of c_high
    b_high: float = 3.0  # max of c_high
    delta_high: float = 0.05  # c_high step
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0 (official default 3)
    eps: float = 1e-8  # P / (N + eps)

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_positive_share < 1.0:
            raise ValueError(f"target_positive_share must be in [0, 1), got {self.target_positive_share}")
        if not 0.0 < self.a_low <= self.b_low <= 1.0:
            raise ValueError(f"need 0 < a_low <= b_low <= 1, got a_low={self.a_low}, b_low={self.b_low}")
        if not 1.0 <= self.a_high <= self.b_high:
            raise ValueError(f"need 1 <= a_high <= b_high, got a_high={self.a_high}, b_high={self.b_high}")
        if self.delta_low < 0 or self.delta_high < 0:
            raise ValueError(f"delta_low and delta_high must be >= 0, got {self.delta_low}, {self.delta_high}")
        if self.clip_ratio_c is not None and self.clip_ratio_c <= 1:
            raise ValueError(f"clip_ratio_c must be > 1 (or None), got {self.clip_ratio_c}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")

    @property
    def target_ratio(self) -> float:
        """P/N target equivalent to the positive share rho0."""
        return self.target_positive_share / (1.0 - self.target_positive_share)


def candidates(start: float, stop: float, step: float) -> list[float]:
    """The bounds the official loop visits: start, min(start + step, stop), ... up to stop (float accumulation)."""
    out = [start]
    c = start
    while step > 0 and c < stop:
        c = min(c + step, stop)
        out.append(c)
    return out


def first_reaching(ratio: Tensor, target: float) -> Tensor:
    """Index of the first candidate whose P/N reaches the target, else the last one. [K] -> 0-dim long."""
    ok = ratio >= target
    last = torch.full((), ratio.numel() - 1, dtype=torch.long, device=ratio.device)
    return torch.where(ok.any(), ok.long().argmax(), last)


def select(x: PolicyInputs, p: Params, ctx: StepContext, generator: torch.Generator | None) -> TokenWeights:
    """Bound search over the whole mini-batch. Out: c_low, c_high as [B, 1] and method/bapo/* metrics."""
    ratio = torch.exp(ppo.log_ratio(x.logp, x.old_logp)).double()
    a = (x.adv * x.mask).double()
    pos, neg = a.clamp(min=0), (-a).clamp(min=0)  # A >= 0 part and |A| for A < 0 (masked)
    lows = torch.tensor(candidates(p.a_low, p.b_low, p.delta_low), dtype=torch.float64, device=ratio.device)
    highs = torch.tensor(candidates(p.a_high, p.b_high, p.delta_high), dtype=torch.float64, device=ratio.device)
    # P depends only on c_high (A >= 0 tokens), N only on c_low (A < 0 tokens): evaluate every candidate at once.
    # One [B, T] temporary per candidate (not [K, B, T]), and no host sync.
    p_of = torch.stack([(pos * torch.minimum(ratio, c)).sum() for c in highs])  # [Kh]
    n_of = torch.stack([(neg * torch.maximum(ratio, c)).sum() for c in lows])  # [Kl]

    def pn(p_val: Tensor, n_val: Tensor) -> Tensor:
        return torch.where(n_val <= 0, torch.full_like(n_val, float("inf")), p_val / (n_val + p.eps))

    target = p.target_ratio
    i_low = first_reaching(pn(p_of[0], n_of), target)  # stage 1: raise c_low with c_high = a_high
    n_sel = n_of[i_low]
    stage1_ok = pn(p_of[0], n_sel) >= target
    i_high = torch.where(stage1_ok, torch.zeros_like(i_low), first_reaching(pn(p_of, n_sel), target))  # stage 2
    c_low, c_high = lows[i_low], highs[i_high]
    p_sel = p_of[i_high]
    share = torch.where(p_sel + n_sel > 0, p_sel / (p_sel + n_sel).clamp_min(1e-30), torch.zeros_like(p_sel))
    b = x.logp.shape[0]
    dtype = x.logp.dtype
    return TokenWeights(
        {"c_low": c_low.to(dtype).expand(b, 1).clone(), "c_high": c_high.to(dtype).expand(b, 1).clone()},
        {
            "method/bapo/c_low": c_low.to(dtype),
            "method/bapo/c_high": c_high.to(dtype),
            "method/bapo/pos_share": share.to(dtype),
        },
    )


@register_policy_loss(
    "bapo",
    Params,
    select=select,
    paper="arXiv:2510.18927",
    neutral={"a_low": 0.8, "b_low": 0.8, "a_high": 1.2, "b_high": 1.2},
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """PPO surrogate with the mini-batch's adaptive ratio bounds. In: [B, T] each. Out: loss [B, T], policy/*."""
    eps_low = 1.0 - sel["c_low"]  # [B, 1]: clamp(r, 1 - eps_low, 1 + eps_high) = clamp(r, c_low, c_high)
    eps_high = sel["c_high"] - 1.0
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, eps_low, eps_high, p.clip_ratio_c)
    return LossOutput(s.loss, ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask))
