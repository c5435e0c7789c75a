"""RiskPO advantages: mixed value-at-risk (range VaR + lower-tail CVaR) of bundled rewards, per response.

Paper: Ren et al. 2025, "RiskPO: Risk-based Policy Optimization via Verifiable Reward for LLM Post-Training"
(arXiv:2510.00911). Official code: `RTkenny/RiskPO` @ `65ec40c`, `verl/trainer/ppo/core_algos.py`
`compute_grpo_bundle_rvar_outcome_advantage_quantile_tracking` and `scripts/run_qwen2.5_1.5b_MVaR_math.sh`
(read for this module). What is computed (the script's settings: mixing on, natural baseline on, mean baseline off):

    bundles: consecutive prompts (groups, in order of first appearance) in chunks of `bundle_size`;
    papers:  paper j of a bundle = the j-th response of every question in it; S_j = sum of their rewards
             (j < min group size in the bundle; responses beyond it get A = 0, as in the official loop);
    q_lo, q_hi = quantiles at levels alpha_low, alpha_high of the paper scores (`quantile_scope`);
    RVaR part: a_R = [(S - q_lo)^+ - (S - q_hi)^+ + q_lo - q_hi] / (alpha_high - alpha_low + eps)
               (= (clip(S, q_lo, q_hi) - q_hi) / (alpha_high - alpha_low + eps));
    CVaR part: a_C = -(q_lo - S)^+ / (alpha_low + eps);
    mixed:     a = (w_mix a_C + a_R) / (w_mix + 1);  then a / (std of the bundle's paper scores + eps)
               (`norm_by_std`; unbiased std; a std <= 1e-3 is replaced by 1, our guard: with batch-scope
               quantiles a tied bundle has a != 0 and std 0, and a / 1e-6 gave advantages of -3e4 and a
               collapsed run, docs/LOG.md);
    credit:    "std" (script): A_i = a / (std of question i's rewards + eps), that std replaced by 1 when
               <= 1e-3;  "uniform": A_i = a.
With the natural baseline every advantage is <= 0: the top papers get 0, the rest are pushed down, the bottom
tail hardest (the risk-averse weighting that is the paper's point).

Departures (named):
    - Quantiles. The official script tracks q_lo/q_hi across steps by stochastic approximation over the flattened
      paper scores of the whole batch (`use_q_track_mode='track'`, lr_q 0.1, initialised on the first step with
      torch.quantile of that batch). An estimator here is stateless, so `quantile_scope="batch"` uses that
      initialisation every step (exact on the first step); "bundle" uses the official `batch` mode
      (per-bundle quantiles). torch.quantile, linear interpolation, as official.
    - A bundle with a single paper (e.g. singleton groups with bundle_size 1) gets A = 0 (toolkit singleton rule;
      the official per-bundle mode gives the same, the tracked mode does not).
    - Bundles follow the order of first appearance of group ids in the batch (the official trainer bundles
      consecutive prompts before repeating them n times).
Unverified: the paper's own equations (only the abstract and a third-party summary quoting alpha = 0.2, beta = 0.8
and bundle size 5 were read; the script uses 0.2 / 0.9, which we follow).

Params:
    alpha_low (0.2): lower quantile level (`quantile_down`).
    alpha_high (0.9): upper quantile level (`quantile_up`; the paper summary says 0.8).
    w_mix (1.5): weight of the CVaR part.
    bundle_size (5): prompts per bundle (1 = no bundling: a paper is one response).
    quantile_scope ("batch"): "batch" (all paper scores) or "bundle" (per bundle).
    norm_by_std (True): divide by the bundle's paper-score std.
    credit ("std"): "std" or "uniform" credit assignment of a paper's advantage to its responses.
    eps (1e-6): numerical epsilon of the official code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core.advantage import AdvantageInputs, register_advantage


@dataclass(frozen=True)
class Params:
    alpha_low: float = 0.2
    alpha_high: float = 0.9
    w_mix: float = 1.5
    bundle_size: int = 5
    quantile_scope: str = "batch"
    norm_by_std: bool = True
    credit: str = "std"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha_low < self.alpha_high <= 1.0:
            raise ValueError(f"need 0 <= alpha_low < alpha_high <= 1, got {self.alpha_low}, {self.alpha_high}")
        if self.w_mix < 0:
            raise ValueError(f"w_mix must be >= 0, got {self.w_mix}")
        if self.bundle_size < 1:
            raise ValueError(f"bundle_size must be >= 1, got {self.bundle_size}")
        if self.quantile_scope not in ("batch", "bundle"):
            raise ValueError(f"quantile_scope must be 'batch' or 'bundle', got '{self.quantile_scope}'")
        if self.credit not in ("std", "uniform"):
            raise ValueError(f"credit must be 'std' or 'uniform', got '{self.credit}'")


def papers(group_index: Tensor, bundle_size: int) -> list[list[list[int]]]:
    """Bundles -> papers -> response indices (one per question of the bundle, batch order within a question)."""
    ids = group_index.tolist()
    order: list[int] = []
    members: dict[int, list[int]] = {}
    for i, g in enumerate(ids):
        if g not in members:
            members[g] = []
            order.append(g)
        members[g].append(i)
    out = []
    for start in range(0, len(order), bundle_size):
        qs = [members[g] for g in order[start : start + bundle_size]]
        n_papers = min(len(q) for q in qs)
        out.append([[q[j] for q in qs] for j in range(n_papers)])
    return out


def mixed_var(s: Tensor, q_lo: Tensor, q_hi: Tensor, p: Params) -> Tensor:
    """(w_mix a_C + a_R) / (w_mix + 1) for paper scores s with quantiles q_lo <= q_hi."""
    a_r = ((s - q_lo).clamp(min=0) - (s - q_hi).clamp(min=0) + q_lo - q_hi) / (p.alpha_high - p.alpha_low + p.eps)
    a_c = -(q_lo - s).clamp(min=0) / (p.alpha_low + p.eps)
    return (p.w_mix * a_c + a_r) / (p.w_mix + 1)


@register_advantage("riskpo", Params)
def riskpo(x: AdvantageInputs, p: Params) -> Tensor:
    """Mixed-VaR bundle advantage. rewards [N] -> [N]."""
    r = x.rewards.double()
    adv = torch.zeros_like(r)
    bundles = papers(x.group_index, p.bundle_size)
    scores = [torch.stack([r[idx].sum() for idx in bundle]) for bundle in bundles]
    levels = torch.tensor([p.alpha_low, p.alpha_high], dtype=torch.float64, device=r.device)
    if p.quantile_scope == "batch":
        q_lo, q_hi = torch.quantile(torch.cat(scores), levels)
    # question std for credit "std": unbiased, replaced by 1 when <= 1e-3 (or undefined)
    _, inv, counts = torch.unique(x.group_index, return_inverse=True, return_counts=True)
    k = counts.numel()
    mean_q = torch.zeros(k, dtype=torch.float64, device=inv.device).index_add_(0, inv, r) / counts
    sq = torch.zeros(k, dtype=torch.float64, device=inv.device).index_add_(0, inv, (r - mean_q[inv]) ** 2)
    std_q = torch.where(counts > 1, (sq / (counts - 1).clamp_min(1)).sqrt(), torch.zeros_like(sq))
    std_q = torch.where(std_q > 1e-3, std_q, torch.ones_like(std_q))[inv]
    for bundle, s in zip(bundles, scores):
        if s.numel() < 2:
            continue  # a single paper carries no relative signal: A = 0
        if p.quantile_scope == "bundle":
            q_lo, q_hi = torch.quantile(s, levels)
        a = mixed_var(s, q_lo, q_hi, p)
        if p.norm_by_std:  # a tied bundle has std 0: like the question std, fall back to 1 (else a / 1e-6)
            bundle_std = s.std()
            a = a / (bundle_std + p.eps if bundle_std > 1e-3 else 1.0)
        for j, idx in enumerate(bundle):
            ix = torch.tensor(idx, device=r.device)
            adv[ix] = a[j] / (std_q[ix] + p.eps) if p.credit == "std" else a[j]
    return adv.to(x.rewards.dtype)
