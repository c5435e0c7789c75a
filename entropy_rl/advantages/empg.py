"""EMPG advantages: rescale each step's advantage by a batch-normalised function of its entropy, plus a bonus.

Paper: ByteDance Seed 2025, "Harnessing Uncertainty: Entropy-Modulated Policy Gradients for Long-Horizon LLM
Agents" (EMPG, arXiv:2509.09265). No code released; formulas from the project page's pseudocode
(empgseed-seed.github.io, `compute_empg_advantage`, truncated after step 2 in every retrieved copy) and
methods.md §12:

    H_ij   = mean of H_old (old_entropy) over the tokens of step j of response i
    Hn     = (H - min H) / (max H - min H + 1e-8)            over all steps of the batch   (Eq. 12)
    g(H)   = exp(-k Hn) / (mean_steps exp(-k Hn) + 1e-8)     (batch mean of g is 1)         (Eq. 10)
    f(H)   = exp(-k_f Hn)                                                                   (Eq. 11)
    A'_ij  = g(H_ij) A_i + zeta f(H_i,j+1)                   (no bonus on a response's last step)
    broadcast to the step's tokens, then a final batch normalisation (`final_norm`).
A_i is the trajectory advantage of the `base` estimator (GRPO by default: the paper's baselines are GRPO/DAPO).

Steps. The paper's step is an agent turn (tokens between `<|im_start|>assistant\\n` and `<|im_end|>`). Our tasks
are single-turn and AdvantageInputs carries no turn boundaries, so a step is a contiguous block of `step_tokens`
response positions (t // step_tokens); `step_tokens = 0` makes the whole response one step (then there is no
next step and no bonus). A step exists if it holds at least one masked token; its entropy is the masked mean.

Unresolved (the pseudocode is truncated after the components are computed):
    - the form of the final normalisation. Default "mean_std": whiten over all response tokens of the batch,
      (A - mean) / sqrt(var + 1e-8) with the unbiased masked variance, as verl's `masked_whiten` (our best
      reading of "normalised across the batch"); "mean" only centres; "none" skips it;
    - the next-step indexing of the bonus (we use step j + 1 of the same response).
Scope: min/max and the mean of g run over every step of the estimator's input (the rollout batch).

Params:
    k (1.0): sharpness of the self-calibrating scaling g.
    k_f (1.0): sharpness of the future-clarity bonus f.
    zeta (0.1): weight of the bonus.
    step_tokens (0): step length in tokens; 0 = the whole response is one step.
    final_norm ("mean_std"): "mean_std", "mean" or "none".
    base ("grpo"): registered sequence-level estimator giving A_i (its default Params).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core.advantage import AdvantageInputs, get_advantage, register_advantage

NORMS = ("mean_std", "mean", "none")


@dataclass(frozen=True)
class Params:
    k: float = 1.0
    k_f: float = 1.0
    zeta: float = 0.1
    step_tokens: int = 0  # 0 = whole response is one step
    final_norm: str = "mean_std"
    base: str = "grpo"

    def __post_init__(self) -> None:
        if self.step_tokens < 0:
            raise ValueError(f"step_tokens must be >= 0, got {self.step_tokens}")
        if self.final_norm not in NORMS:
            raise ValueError(f"final_norm must be one of {NORMS}, got '{self.final_norm}'")
        if self.base in ("empg",):
            raise ValueError("base cannot be 'empg' itself")


def step_ids(mask: Tensor, step_tokens: int) -> tuple[Tensor, int]:
    """Step index of every position [N, T] (t // step_tokens, or 0) and the number of step slots per row."""
    n, t = mask.shape
    if step_tokens == 0:
        return torch.zeros(n, t, dtype=torch.long, device=mask.device), 1
    pos = torch.arange(t, device=mask.device).expand(n, t)
    return pos // step_tokens, (t + step_tokens - 1) // step_tokens


@register_advantage("empg", Params)
def empg(x: AdvantageInputs, p: Params) -> Tensor:
    """Entropy-modulated step advantages. rewards [N], old_entropy and mask [N, T] -> [N, T]."""
    if x.old_entropy is None or x.mask is None:
        raise ValueError("empg needs `old_entropy` (H_old) and `mask`")
    base = get_advantage(p.base)
    a = base.obj(x, base.make_params()).double()
    if a.dim() == 2:  # a token-level base: use its per-response mean over the mask
        a = (a * x.mask).sum(-1) / x.mask.sum(-1).clamp_min(1.0)
    mask = x.mask.double()
    n, t = mask.shape
    sid, k_slots = step_ids(mask, p.step_tokens)
    flat = torch.arange(n, device=mask.device).unsqueeze(-1) * k_slots + sid  # [N, T] slot id
    cnt = torch.zeros(n * k_slots, dtype=torch.float64, device=flat.device).index_add_(
        0, flat.flatten(), mask.flatten()
    )
    tot = torch.zeros(n * k_slots, dtype=torch.float64, device=flat.device).index_add_(
        0, flat.flatten(), (x.old_entropy.double() * mask).flatten()
    )
    exists = (cnt > 0).view(n, k_slots)
    h = (tot / cnt.clamp_min(1.0)).view(n, k_slots)
    if not exists.any():
        return torch.zeros_like(mask).to(x.rewards.dtype)
    hv = h[exists]
    h_norm = (h - hv.min()) / (hv.max() - hv.min() + 1e-8)
    g_raw = torch.exp(-p.k * h_norm)
    g = g_raw / (g_raw[exists].mean() + 1e-8)
    f = torch.exp(-p.k_f * h_norm)
    # next existing step of the same response: steps are contiguous, so slot j + 1 if it exists
    f_next = torch.zeros_like(f)
    f_next[:, :-1] = torch.where(exists[:, 1:], f[:, 1:], torch.zeros_like(f[:, 1:]))
    step_adv = torch.where(exists, g * a.unsqueeze(-1) + p.zeta * f_next, torch.zeros_like(g))  # [N, K]
    adv = step_adv.gather(1, sid) * mask  # broadcast to tokens
    if p.final_norm != "none":
        n_tok = mask.sum()
        mean = adv.sum() / n_tok.clamp_min(1.0)
        adv = adv - mean
        if p.final_norm == "mean_std":
            var = ((adv * mask) ** 2).sum() / (n_tok - 1).clamp_min(1.0)
            adv = adv / torch.sqrt(var + 1e-8)
        adv = adv * mask
    return adv.to(x.rewards.dtype)
