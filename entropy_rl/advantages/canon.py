"""CANON advantages: split each group by response entropy into halves; inter- and intra-half reward comparisons.

Paper: Chen et al. 2025, "Conditional Advantage Estimation" (CANON, arXiv:2509.23962). Official code
`biuboomc/CANON` @ `7d6f814`, `verl/trainer/ppo/core_algos.py` L369-459 (methods.md §14). Formulas:

    s_i = masked mean over the response of H_old (old_entropy)
    per group of size n: stable ascending sort by s; m = floor(n / 2); C- = first m (low entropy), C+ = the rest
    mu-, mu+ = mean reward of C-, C+
    i in C+: A_i = [lam (r_i - alpha mu- + beta) + (1 - lam)(r_i - mu+)] / L_max
    i in C-: A_i = [lam (alpha r_i - mu+ - beta) + (1 - lam)(r_i - mu-)] / L_max
    singletons (n = 1): A = 0 by default (a departure, below); singleton="reward" gives the official (r + lam beta)
    / L_max.  No std normalisation; the sequence advantage is broadcast by the trainer.

With lam = 0.5, alpha = 1, beta = 0 and even n this is (r_i - mu)/L_max, the repository's Dr.GRPO. Pitfall kept:
1/L_max (8192 in the paper's runs) shrinks advantages ~1e4x versus GRPO, which breaks methods with absolute windows
(Clip-Cov) or floors (STEER). The annealed / cosine / random / length variants of the repository are not
implemented. Ties in s are broken by position in the batch (stable sort), as Python's sort does.

Departure from the official code (deliberate, opt-out with singleton="reward"): a group of one response gets A = 0
here, the toolkit's singleton rule (a lone response carries no relative signal), as `grpo`, `dr_grpo` and `rloo`
do. The official `compute_dr_entropy_per_token_group_outcome_advantage` (read at f3ee9fc) puts a singleton in C+
(m = 0, every index >= mid) and sets both half means to 0, so it gets A = [lam (r + beta) + (1 - lam) r] / L_max
= (r + lam beta) / L_max; singleton="reward" reproduces that.

Params:
    lam (1.0): weight of the inter-group term (repository `scripts/setups.sh`: 1.0, pure inter-group).
    alpha (1.0): scale of the other half's mean (C+) / of the own reward (C-).
    beta (0.0): offset added to C+ and subtracted from C-.
    max_length (None): L_max; None uses T (the mask's width). The paper's runs use 8192.
    singleton ("zero"): advantage of a group of one response: "zero" (toolkit rule) or "reward" (official code:
        (r + lam beta) / L_max).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core.advantage import AdvantageInputs, register_advantage


@dataclass(frozen=True)
class Params:
    lam: float = 1.0  # inter-group weight (repository default 1.0)
    alpha: float = 1.0
    beta: float = 0.0
    max_length: int | None = None  # L_max; None -> T of the mask
    singleton: str = "zero"  # "zero" or "reward" (official code: (r + lam beta) / L_max)

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"max_length must be > 0 (or None), got {self.max_length}")
        if self.singleton not in ("zero", "reward"):
            raise ValueError(f"singleton must be 'zero' or 'reward', got '{self.singleton}'")


def response_entropy(old_entropy: Tensor, mask: Tensor) -> Tensor:
    """s_i: masked mean of H_old over the response (0 for an empty response). [N, T] -> [N]."""
    m = mask.to(old_entropy.dtype)
    return (old_entropy * m).sum(-1) / m.sum(-1).clamp_min(1.0)


@register_advantage("canon", Params)
def canon(x: AdvantageInputs, p: Params) -> Tensor:
    """CANON entropy-conditioned group advantage. rewards [N], old_entropy and mask [N, T] -> [N]."""
    if x.old_entropy is None or x.mask is None:
        raise ValueError("canon needs `old_entropy` and `mask` (entropy of the pre-update pass over the response)")
    l_max = float(p.max_length if p.max_length is not None else x.mask.shape[-1])
    s = response_entropy(x.old_entropy.double(), x.mask)
    r = x.rewards.double()
    adv = torch.zeros_like(r)
    for g in torch.unique(x.group_index):
        idx = (x.group_index == g).nonzero(as_tuple=True)[0]  # batch order
        n = idx.numel()
        if n < 2:  # a singleton: A = 0, or the official code's (both half means 0, the response in C+)
            if p.singleton == "reward":
                adv[idx] = p.lam * (r[idx] + p.beta) + (1 - p.lam) * r[idx]
            continue
        order = idx[torch.sort(s[idx], stable=True).indices]
        m = n // 2
        low, high = order[:m], order[m:]
        mu_lo, mu_hi = r[low].mean(), r[high].mean()
        adv[high] = p.lam * (r[high] - p.alpha * mu_lo + p.beta) + (1 - p.lam) * (r[high] - mu_hi)
        adv[low] = p.lam * (p.alpha * r[low] - mu_hi - p.beta) + (1 - p.lam) * (r[low] - mu_lo)
    return (adv / l_max).to(x.rewards.dtype)
