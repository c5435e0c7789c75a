"""Lp-Reg: k3 pull of the lowest-probability negative tokens towards a min-p-filtered proxy of the old policy.

Paper: Huang et al., "Low-probability Tokens Sustain Exploration in RLVR" (arXiv:2510.03222); official code
`CarlanLark/Lp-Reg-dev` @ 33b27e2, `core_algos.compute_policy_loss_lp_reg`, `dp_actor.apply_min_p`
(methods.md section 5).

Proxy (feature `lp_proxy`, pre-update pass, no grad, fp32): p = softmax(z) on the UN-tempered logits; keep
v with p_v >= kappa * max p (`regular_type="relative"`) or p_v >= kappa ("fixed"); other logits -> -1e4
("hard"); lp_proxy_t = log_softmax(z_masked / tau)[o_t]. Tokens outside the kept set get lp_proxy ~ -1e4/tau
and are never selected (intended: "noise").

Selection (`select`, once per optimizer mini-batch, on the detached current logp): among valid tokens with
A < 0, k_neg = max(1, floor(rho_neg * N_neg)) tokens with the smallest logp, used only if k_neg >= min_k
(the official rule is `k > 1`, i.e. min_k = 2); the same for A > 0 with rho_pos; then keep only tokens with
logp < lp_proxy. Ties in logp are broken by position (stable sort).

Loss: base PPO clip on every token (no dual clip: clip_ratio_c = None); on selected tokens the clip is
removed and a k3 pull is added: l_t = -A_t r_t + beta * k3(logp_t, lp_proxy_t), k3 = e^d - d - 1,
d = lp_proxy - logp (verl low_var_kl, clamped to [-10, 10] like the official code, so the pull has no
gradient once k3 > 10). d(k3)/d(logp) = 1 - pi_proxy/pi < 0 on selected tokens: descent raises log pi.

Departures from the official code:
    - selection runs over the optimizer mini-batch, not per micro-batch (toolkit rule, methods.md section 0).
    - `min_k` exposes the official "apply only if k > 1" rule (min_k=2, default); min_k=1 regularises at least
      one token per sign whenever rho > 0 (the deliberate "k >= 1" deviation of the spec's pitfalls).
    - the ratio's log is clamped to [-20, 20] (core.ppo) before exp; the official lp_reg loss does not clamp.
    - defaults are the recipe's (Qwen3_14b_lp_reg_onpolicy_64gpu.sh): eps_low 1.0, eps_high 9.0 (ratio clamped
      to [0, 10]), kappa 0.02, rho_neg 0.01; the library yaml defaults (0.2/0.2, kappa 0.1, rho_neg 0) leave
      Lp-Reg off.
    - the trainer computes the `lp_proxy` feature in its pre-update pass with this method's kappa and
      regular_type (function API: compute `min_p_proxy_logp` yourself and pass extras["lp_proxy"]).

Params:
    eps_low (1.0), eps_high (9.0): PPO ratio bounds of the base loss (recipe values).
    clip_ratio_c (None): dual clip; None as in the official loss (kept so the neutral check compares like with like).
    kappa (0.02): min-p threshold of the proxy (minp_p_threshold).
    regular_type ("relative"): "relative" keeps p_v >= kappa * max p, "fixed" keeps p_v >= kappa.
    rho_neg (0.01): fraction of negative-advantage tokens considered (lowest logp first).
    rho_pos (0.0): the same for positive-advantage tokens (off in the recipe).
    beta (1.0): coefficient of the k3 pull (official `ppo_kl_coef`).
    min_k (2): apply a sign's selection only if its k >= min_k (2 = official).

Metrics:
    method/lp_reg/n_selected: number of regularised tokens in the mini-batch (count).
    method/lp_reg/n_candidates: number of lowest-logp candidates before the logp < lp_proxy filter (count).
    method/lp_reg/k3_mean: mean k3 over the selected tokens of this call (nats; 0 if none).
    method/lp_reg/selected_frac: selected tokens / valid tokens of this call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropy_rl.core import ppo
from entropy_rl.core.kl import kl_k3
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean, zero_scalar

FEATURE_KAPPA = 0.02  # kappa of the registered `lp_proxy` feature (recipe minp_p_threshold)
FEATURE_REGULAR_TYPE = "relative"
MASKED_LOGIT = -1e4  # "hard" masking of the official apply_min_p


def min_p_proxy_logp(
    logits: Tensor,
    tokens: Tensor,
    temperature: float | Tensor,
    kappa: float = FEATURE_KAPPA,
    regular_type: str = FEATURE_REGULAR_TYPE,
) -> Tensor:
    """log pi_proxy(o_t): min-p filter on the un-tempered probs, masked logits -> -1e4, tempered log-softmax.

    Args:
        logits: [..., V] raw logits (any dtype; computed in fp32), e.g. one chunk [n, V] or a batch [B, T, V].
        tokens: [...] sampled token ids.
        temperature: rollout temperature tau (applied after the filter): a float or a tensor broadcasting
            against the logits ([n, 1] for per-token temperatures).
        kappa: min-p threshold.
        regular_type: "relative" (p_v >= kappa * max p) or "fixed" (p_v >= kappa).

    Returns:
        [...] fp32 log-probabilities of the tokens under the proxy (no gradient).
    """
    with torch.no_grad():
        z = logits.float()
        probs = torch.softmax(z, dim=-1)
        if regular_type == "relative":
            keep = probs >= kappa * probs.amax(dim=-1, keepdim=True)
        elif regular_type == "fixed":
            keep = probs >= kappa
        else:
            raise ValueError(f"regular_type must be 'relative' or 'fixed', got '{regular_type}'")
        z_masked = torch.where(keep, z, torch.full_like(z, MASKED_LOGIT))
        lp = torch.log_softmax(z_masked / temperature, dim=-1)
        return lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def lp_proxy_feature(logits: Tensor, tokens: Tensor, temperature: float | Tensor, p: "Params") -> Tensor:
    """The registered feature, per chunk: `min_p_proxy_logp` with the method's kappa and regular_type. [n, V] -> [n]."""
    return min_p_proxy_logp(logits, tokens, temperature, p.kappa, p.regular_type)


@dataclass(frozen=True)
class Params:
    eps_low: float = 1.0  # ratio floor 1 - eps_low (recipe: 1.0 -> floor 0)
    eps_high: float = 9.0  # ratio ceiling 1 + eps_high (recipe: 9.0 -> ceiling 10)
    clip_ratio_c: float | None = None  # no dual clip in the official lp_reg loss
    kappa: float = FEATURE_KAPPA  # min-p threshold of the proxy (minp_p_threshold)
    regular_type: str = FEATURE_REGULAR_TYPE  # "relative" | "fixed"
    rho_neg: float = 0.01  # fraction of A < 0 tokens considered (logp_neg_k_percent)
    rho_pos: float = 0.0  # fraction of A > 0 tokens considered (logp_pos_k_percent)
    beta: float = 1.0  # k3 coefficient (ppo_kl_coef)
    min_k: int = 2  # apply a sign's selection only if k >= min_k (official: k > 1)

    def __post_init__(self) -> None:
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)
        for name in ("rho_neg", "rho_pos"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.min_k < 1:
            raise ValueError(f"min_k must be >= 1, got {self.min_k}")
        if self.regular_type not in ("relative", "fixed"):
            raise ValueError(f"regular_type must be 'relative' or 'fixed', got '{self.regular_type}'")


def _lowest_logp(logp: Tensor, candidates: Tensor, rho: float, min_k: int) -> Tensor:
    """bool [B, T]: the k = max(1, floor(rho * N)) candidates with the smallest logp, or none if k < min_k."""
    out = torch.zeros_like(candidates)
    n = int(candidates.sum())
    if rho <= 0 or n == 0:
        return out
    k = max(1, int(n * rho))
    if k < min_k:
        return out
    flat_idx = candidates.reshape(-1).nonzero(as_tuple=True)[0]
    order = torch.sort(logp.reshape(-1)[flat_idx], stable=True).indices[:k]
    out.view(-1)[flat_idx[order]] = True
    return out


def select(x: PolicyInputs, p: Params, ctx: StepContext, generator: torch.Generator | None) -> TokenWeights:
    """Lowest-logp negative (and positive) tokens of the mini-batch whose logp < lp_proxy. In: [B, T]. Out: bool."""
    valid = x.mask > 0
    lp_proxy = x.extras["lp_proxy"]
    cand = _lowest_logp(x.logp, valid & (x.adv < 0), p.rho_neg, p.min_k)
    cand |= _lowest_logp(x.logp, valid & (x.adv > 0), p.rho_pos, p.min_k)
    chosen = cand & (x.logp < lp_proxy)
    return TokenWeights(
        {"reg": chosen},
        {
            "method/lp_reg/n_selected": chosen.sum().to(x.logp.dtype),
            "method/lp_reg/n_candidates": cand.sum().to(x.logp.dtype),
        },
    )


@register_policy_loss(
    "lp_reg",
    Params,
    select=select,
    stage="regularizer",
    paper="arXiv:2510.03222",
    neutral={"rho_neg": 0.0, "rho_pos": 0.0},
    old_features={"lp_proxy": lp_proxy_feature},
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """PPO clip; on selected tokens -A r + beta * k3(logp, lp_proxy). In: [B, T] each. Out: [B, T], metrics."""
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    reg = sel["reg"] & (x.mask > 0)
    k3 = kl_k3(x.logp, x.extras["lp_proxy"].detach())
    per_token = torch.where(reg, -x.adv * s.ratio + p.beta * k3, s.loss)
    n_reg = reg.sum()
    metrics["method/lp_reg/k3_mean"] = (
        (k3.detach() * reg).sum() / n_reg.clamp_min(1) if n_reg > 0 else zero_scalar(x.logp)
    )
    metrics["method/lp_reg/selected_frac"] = masked_mean(reg.to(x.logp.dtype), x.mask)
    return LossOutput(per_token, metrics)
