"""TRE (Trust Region Entropy): PPO clip minus coef * the entropy of the policy renormalised on its top-K / top-p tokens.

Paper: Huang et al. 2026, "TRE: Encouraging Exploration in the Trust Region" (arXiv:2602.03635). Official code:
`WhyChaos/TRE-Encouraging-Exploration-in-the-Trust-Region` @ 2727fd5 (verl 0.4 fork), read for this module:
`verl/utils/torch_functional.py` `entropy_from_logits(logits, top_k, top_p)`, `verl/workers/actor/dp_actor.py`
(`entropy_top_k` / `entropy_top_p`, `policy_loss = pg_loss - entropy_top_*_loss * entropy_coeff`), and the
`experiments/{math,countdown,hh}/*_tre_{k,p}.sh` scripts. With z the tempered logits (verl divides by the
rollout temperature before every entropy) and V the vocabulary size:

    TRE-K: q = softmax over the K largest z;   H_K = -sum q log q * log(V) / log(K)
    TRE-P: the tokens in descending probability order up to and INCLUDING the one at which the cumulative mass
           reaches top_p (shifted cumsum < top_p; at least the top token), among the 256 most probable;
           q = softmax of their z, H_P = -sum q log q * log(V) / log(m), m = their number; H_P = 0 when m = 1.
The rescaling maps log K (or log m), the largest entropy on the region, onto log V, the full-vocabulary maximum,
so coefficients tuned for the full entropy keep their scale. Gradients flow through the region's logits; the
region (which tokens) is not differentiated. The bonus is aggregated with the trainer's loss_agg_mode, like verl's
`agg_loss(entropy_top_*, response_mask, loss_agg_mode)`.

Feature: `tre_entropy`, computed from the logits of the update forward pass (with gradient) by
`trust_region_entropy`, the only logits-dependent code here (written for any leading shape, so a per-chunk
feature signature needs no change to it).

Departures from the official code:
    - top_k = 1 is refused: the official code then switches to a different quantity (min-entropy, -log max p,
      over the full vocabulary); the renormalised top-1 entropy is 0. K larger than V uses K = V (the official
      `topk` raises).
    - TRE-P keeps the official cap of 256 candidates (`max_k = min(256, V)`), a memory shortcut: a nucleus that
      needs more than 256 tokens is cut there.
    - The official masks unselected TRE-P candidates with a -1e10 logit; we exclude them exactly (same value).
    - Settings: the paper's runs are PPO with a GAE critic; coef 0.001 with K = 2 or top_p = 0.99 in every
      script (math, countdown, hh). Our trainer is critic-free (GRPO-family advantages): the variants `tre` (K = 2)
      and `tre_p` (top_p 0.99) set coef and region, nothing else.

Params:
    eps_low (0.2), eps_high (0.2), clip_ratio_c (3.0): PPO clip, as ppo_clip.
    coef (0.001): bonus coefficient (official `entropy_coeff` in every TRE script); 0 reduces to ppo_clip.
    region ("top_k"): "top_k" (TRE-K) or "top_p" (TRE-P).
    top_k (2): K of TRE-K, >= 2 (official scripts: 2).
    top_p (0.99): nucleus mass of TRE-P, in (0, 1) (official scripts: 0.99).

Metrics:
    method/tre/entropy: masked token mean of the rescaled trust-region entropy of this call (nats on the
        full-vocabulary scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean

REGIONS = ("top_k", "top_p")
TOP_P_CANDIDATES = 256  # official `max_k`: the nucleus is searched among the 256 most probable tokens


@dataclass(frozen=True)
class Params:
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0
    coef: float = 0.001  # entropy_coeff of the official TRE scripts
    region: str = "top_k"  # "top_k" (TRE-K) or "top_p" (TRE-P)
    top_k: int = 2  # entropy_top_k
    top_p: float = 0.99  # entropy_top_p

    def __post_init__(self) -> None:
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)
        if self.coef < 0:
            raise ValueError(f"coef must be >= 0, got {self.coef}")
        if self.region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}, got '{self.region}'")
        if self.top_k < 2:
            raise ValueError(f"top_k must be >= 2 (a one-token region has zero entropy), got {self.top_k}")
        if not 0.0 < self.top_p < 1.0:
            raise ValueError(f"top_p must be in (0, 1), got {self.top_p}")


def renormalised_entropy(z: Tensor, keep: Tensor | None = None) -> Tensor:
    """Entropy of softmax(z) restricted to `keep` (all of z if None), fp32; excluded entries get exactly 0 mass.

    Args:
        z: [..., n] logits (tempered).
        keep: [..., n] bool, the entries of the region, or None.

    Returns:
        [...] entropies in nats; finite gradients (excluded entries receive none).
    """
    if keep is None:
        logq = torch.log_softmax(z, dim=-1)
        return -(logq.exp() * logq).sum(-1)
    logq = torch.log_softmax(z.masked_fill(~keep, float("-inf")), dim=-1)
    return -(logq.exp() * torch.where(keep, logq, torch.zeros_like(logq))).sum(-1)


def trust_region_entropy(logits: Tensor, temperature: float | Tensor, p: Params) -> Tensor:
    """TRE-K or TRE-P entropy of softmax(logits / temperature), rescaled to the full-vocabulary range, fp32.

    Args:
        logits: [..., V] raw logits (any leading shape).
        temperature: sampling temperature tau > 0.
        p: the method's Params (region, top_k, top_p).

    Returns:
        [...] rescaled trust-region entropies (nats on the log V scale), differentiable through the region's logits.
    """
    z = logits.float() / temperature
    vocab = z.shape[-1]
    if p.region == "top_k":
        k = min(p.top_k, vocab)
        return renormalised_entropy(z.topk(k, dim=-1).values) * (math.log(vocab) / math.log(k))
    candidates = min(TOP_P_CANDIDATES, vocab)
    top_z, top_idx = z.topk(candidates, dim=-1)  # descending: the most probable tokens first
    with torch.no_grad():
        top_prob = torch.softmax(z, dim=-1).gather(-1, top_idx)
        mass_before = top_prob.cumsum(-1) - top_prob  # shifted cumsum: mass of the tokens ranked above
        keep = mass_before < p.top_p  # includes the token at which the mass reaches top_p
        keep[..., 0] = True
        count = keep.sum(-1)
    scale = math.log(vocab) / torch.log(count.clamp_min(2).float())
    h = renormalised_entropy(top_z, keep) * scale
    return torch.where(count > 1, h, torch.zeros_like(h))


def tre_entropy_feature(logits: Tensor, tokens: Tensor, temperature: float | Tensor, p: Params) -> Tensor:
    """The registered feature: `trust_region_entropy` with the method's region. Logits [..., V] -> [...]."""
    return trust_region_entropy(logits, temperature, p)


@register_policy_loss(
    "tre",
    Params,
    stage="regularizer",
    paper="arXiv:2602.03635",
    neutral={"coef": 0.0},
    cur_features={"tre_entropy": tre_entropy_feature},
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """Per-token PPO loss minus coef * H_TRE (with gradient). In: [B, T] each. Out: [B, T], metrics."""
    h = x.extras["tre_entropy"]
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    metrics["method/tre/entropy"] = masked_mean(h.detach(), x.mask)
    return LossOutput(s.loss - p.coef * h, metrics)
