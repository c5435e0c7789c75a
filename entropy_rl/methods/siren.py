"""SIREN: hold the top-p entropy of each response's peak-entropy tokens near its value at the start of training.

Paper: "SIREN: SelectIve entRopy rEgularizatioN" (arXiv:2509.25133); official code `Linn3a/siren` @ fa59a8d,
`dp_actor.py` `efficient_top_p_sampling`, `mask_by_quantile`, `update_policy` (methods.md section 6).

1. Top-p entropy H^tp (feature `topp_entropy`, current forward pass, with gradient, tempered logits): the top-K
   probabilities (K = min(top_k, V)) of softmax(z / tau) in descending order with cumulative sums c_j; keep
   the first m = #{j : c_j < top_p} (the token at which the mass reaches top_p is EXCLUDED; top-1 >= top_p
   gives m = 0 and H^tp = 0); q = p_kept / (sum p_kept + 1e-12); H^tp = -sum q log(q + 1e-12).
2. Peak mask, per sequence: S_bt = 1[H^tp_bt > tau_b] (strict) with tau_b = torch.nanquantile (linear
   interpolation, as the official code) at `mask_ratio` of H^tp over the valid tokens of response b.
3. H_sel = seq-mean-token-mean of H^tp over S: (1/B) sum_b sum_t S_bt H_bt / n_b, a sequence with n_b = 0
   contributes 0 and still counts in B.
4. Penalty lambda * (H_sel - H_anchor)^2, H_anchor = H_sel of the pre-update pass of the whole first rollout
   batch, fixed afterwards and checkpointed (method state).

How the scalar penalty becomes a per-token loss (our design; micro-batch invariant): the trainer sums
`aggregate(per_token, mask, loss_agg_mode, num_tokens=N_mb, num_seqs=B_mb)` over micro-batches, and a square
of a mini-batch mean does not decompose over micro-batches. `select` computes H_sel over the whole mini-batch
(the detached values of the current pass; the mask S needs no gradient) and the constant
g = 2 lambda (H_sel - H_anchor). `loss` adds per token  g * w_bt * (H_bt - sg(H_bt)) + v_bt, where w_bt =
S_bt / (n_b B a_bt) undoes the trainer's aggregation weight a_bt of token (b, t) (`aggregation_weights` of
the step context's `agg`: token-mean 1/N; seq-mean-token-mean 1/(len_b B); seq-mean-token-sum 1/B;
seq-mean-token-sum-norm 1/(B norm_length)), and v_bt spreads the value
lambda (H_sel - H_anchor)^2 over the valid tokens the same way. After aggregation the value is exactly
lambda (H_sel - H_anchor)^2 and the gradient exactly 2 lambda (H_sel - H_anchor) grad H_sel, i.e. that of the
mini-batch objective, whatever the micro-batch split and aggregation mode. With `algorithm.selection_scope:
microbatch` each micro-batch's penalty is weighted by its share of the mini-batch's sequences, B_micro / B_mb
(the official 1 / gradient_accumulation).

Departures from the official code:
    - the statistic is over the optimizer mini-batch, not per micro-batch (the official squared penalty is
      per micro-batch, scaled by 1/gradient_accumulation): gradient of the mini-batch objective instead.
    - the official code applies `mask_by_quantile` twice (the second time on the already-zeroed entropy) and
      does not intersect with the response mask, so padding positions above tau_b can be selected; we apply it
      once, restricted to valid tokens (the same set up to ties and that padding leak).
    - the anchor is set by the method state in `before_update` of the first step (before the step's context
      is built), so step 1 already uses it (its penalty is 0 at step 1 by construction: H_sel = anchor on the
      first mini-batch of an on-policy step).
    - no anchor yet (function API without `values=SirenValues(anchor=...)`): the anchor is the current
      mini-batch's H_sel (zero penalty).
    - if V < top_k the official `topk` raises and falls back to the full entropy; we use K = min(top_k, V).
    - the registered feature computes the top-p entropy with this method's top_p and top_k (function API:
      call `topp_entropy` yourself and pass extras["topp_entropy"]).
    - defaults as `exp_scripts/siren.sh`: lambda 0.005, dual clip 3, symmetric eps 0.2 (the script's 0.28 is
      shadowed by the yaml's clip_ratio_low/high); the recipe uses Dr.GRPO advantages and
      seq-mean-token-sum-norm aggregation, set in the trainer config (configs/methods/siren.yaml).

Params:
    eps_low (0.2), eps_high (0.2), clip_ratio_c (3.0): PPO clip of the base loss, as ppo_clip.
    coef (0.005): lambda, weight of the squared anchored penalty; 0 reduces to ppo_clip.
    mask_ratio (0.8): quantile level of the per-sequence peak mask (top 20% kept).
    top_p (0.8), top_k (10000): nucleus of the top-p entropy.

Run-time values (`SirenValues`, built by the state each step, not Params):
    anchor: H_anchor in nats, set from the first pre-update batch; None = the current H_sel.

Metrics:
    method/siren/h_sel: H_sel of the mini-batch (nats).
    method/siren/anchor: H_anchor used (nats; the current H_sel when unset).
    method/siren/penalty: lambda * (H_sel - H_anchor)^2.
    method/siren/peak_frac: selected tokens / valid tokens of the mini-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights

FEATURE_TOP_P = 0.8  # entropy_topp of the registered feature
FEATURE_TOP_K = 10_000  # entropy_topk of the registered feature
NORM_EPS = 1e-12  # the official renormalisation / log epsilon


def topp_entropy(
    logits: Tensor, temperature: float | Tensor, top_p: float = FEATURE_TOP_P, top_k: int = FEATURE_TOP_K
) -> Tensor:
    """SIREN's top-p entropy, differentiable, fp32: the crossing token is excluded; m = 0 gives 0.

    Args:
        logits: [..., V] raw logits.
        temperature: tau; probabilities are softmax(logits / tau). A float or a tensor broadcasting against the
            logits ([n, 1] for per-token temperatures).
        top_p: nucleus mass p; tokens whose cumulative mass (descending) is < p are kept.
        top_k: only the top-K probabilities are considered, K = min(top_k, V).

    Returns:
        [...] entropies of the renormalised kept distribution, nats.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    k = min(int(top_k), probs.shape[-1])
    top = probs.topk(k, dim=-1).values  # sorted descending, carries gradient
    with torch.no_grad():
        keep = top.cumsum(-1) < top_p  # excludes the token at which the mass reaches p
    kept = top * keep
    q = kept / (kept.sum(-1, keepdim=True) + NORM_EPS)
    return -(q * torch.log(q + NORM_EPS)).sum(-1)


def topp_entropy_feature(logits: Tensor, tokens: Tensor, temperature: float | Tensor, p: "Params") -> Tensor:
    """The registered feature, per chunk: `topp_entropy` with the method's top_p and top_k. [n, V] -> [n]."""
    return topp_entropy(logits, temperature, p.top_p, p.top_k)


@dataclass(frozen=True)
class Params:
    eps_low: float = 0.2  # ratio floor 1 - eps_low (the recipe's effective value, see docstring)
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0 (siren.sh: 3)
    coef: float = 0.005  # lambda (official entropy_coeff)
    mask_ratio: float = 0.8  # quantile level of the peak mask (top 20% kept)
    top_p: float = FEATURE_TOP_P  # entropy_topp
    top_k: int = FEATURE_TOP_K  # entropy_topk

    def __post_init__(self) -> None:
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)
        if self.coef < 0:
            raise ValueError(f"coef must be >= 0, got {self.coef}")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {self.mask_ratio}")


@dataclass(frozen=True)
class SirenValues:
    """Run-time values of one step: H_anchor in nats, or None before it is set (then the current H_sel)."""

    anchor: float | None = None


def peak_mask(h: Tensor, mask: Tensor, mask_ratio: float) -> Tensor:
    """bool [B, T]: valid tokens whose H^tp is strictly above their sequence's `mask_ratio` nanquantile."""
    valid = mask > 0
    h = h.detach().float()
    thr = torch.nanquantile(h.masked_fill(~valid, float("nan")), mask_ratio, dim=-1, keepdim=True)  # [B, 1]
    return valid & (h > thr)  # NaN threshold (no valid token) compares False


def selected_entropy(h: Tensor, sel: Tensor) -> Tensor:
    """H_sel = seq-mean-token-mean of h over sel; empty sequences contribute 0 and count. [B, T] -> []."""
    sel = sel.to(h.dtype)
    n = sel.sum(-1)
    per_seq = (h * sel).sum(-1) / n.clamp_min(1.0)
    return per_seq.sum() / max(h.shape[0], 1)


def inverse_aggregation_weight(mask: Tensor, ctx: StepContext) -> Tensor:
    """[B, T] 1 / (B_mb a_bt): undoes the trainer's aggregation weight a_bt of each token (times the mini-batch's
    sequence count B_mb = ctx.agg.num_seqs, default B), 0 off the mask."""
    a = ctx.agg.weights(mask.to(torch.float32))  # [B, T], > 0 exactly on valid tokens
    n_seqs = float(mask.shape[0] if ctx.agg.num_seqs is None else ctx.agg.num_seqs)
    return torch.where(a > 0, 1.0 / (a * n_seqs), torch.zeros_like(a))


def select(
    x: PolicyInputs, p: Params, ctx: StepContext[SirenValues], generator: torch.Generator | None
) -> TokenWeights:
    """Peak mask, H_sel over the mini-batch, and the per-token weights that turn the penalty into a loss."""
    h = x.extras["topp_entropy"].detach().float()
    s = peak_mask(h, x.mask, p.mask_ratio)
    h_sel = selected_entropy(h, s)
    anchor_value = ctx.values_as(SirenValues, "siren").anchor
    anchor = h_sel if anchor_value is None else h_sel.new_tensor(float(anchor_value))
    diff = h_sel - anchor
    inv = inverse_aggregation_weight(x.mask, ctx)  # [B, T] = 1 / (B_mb a_bt) on valid tokens
    n_sel = s.to(h.dtype).sum(-1, keepdim=True)  # [B, 1]
    grad_w = 2.0 * p.coef * diff * s.to(h.dtype) / n_sel.clamp_min(1.0) * inv
    valid = (x.mask > 0).to(h.dtype)
    n_valid = valid.sum(-1, keepdim=True)  # [B, 1]
    n_seqs_valid = (n_valid > 0).sum().clamp_min(1).to(h.dtype)
    # value v: spread lambda diff^2 uniformly over each non-empty sequence, sequences weighted equally, so
    # that the aggregated penalty value is exactly lambda diff^2 (its gradient is zero: diff is a constant)
    value = p.coef * diff.pow(2) * valid / n_valid.clamp_min(1.0) * inv * (x.mask.shape[0] / n_seqs_valid)
    return TokenWeights(
        {"grad_w": grad_w, "value": value},
        {
            "method/siren/h_sel": h_sel,
            "method/siren/anchor": anchor,
            "method/siren/penalty": p.coef * diff.pow(2),
            "method/siren/peak_frac": s.to(h.dtype).sum() / valid.sum().clamp_min(1.0),
        },
    )


class SirenState:
    """The anchor H_anchor: set once from the first pre-update batch, then fixed; checkpointed."""

    def __init__(self, p: Params) -> None:
        self.anchor: float | None = None
        self.mask_ratio = p.mask_ratio

    def values(self, p: Params) -> SirenValues:
        """The anchor of this step (pure)."""
        return SirenValues(self.anchor)

    def before_update(self, x: PolicyInputs) -> None:
        if self.anchor is None and "topp_entropy" in x.extras:
            h = x.extras["topp_entropy"].detach().float()
            self.anchor = float(selected_entropy(h, peak_mask(h, x.mask, self.mask_ratio)))

    def after_update(self, metrics: Mapping[str, float]) -> None:
        return None

    def metrics(self) -> dict[str, float]:
        return {}  # the anchor used at a step is logged by `select` (method/siren/anchor)

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.anchor = None if state["anchor"] is None else float(state["anchor"])


@register_policy_loss(
    "siren",
    Params,
    select=select,
    stage="regularizer",
    paper="arXiv:2509.25133",
    neutral={"coef": 0.0},
    cur_features={"topp_entropy": topp_entropy_feature},
    make_state=SirenState,
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext[SirenValues]) -> LossOutput:
    """PPO clip plus the linearised anchored penalty on peak tokens. In: [B, T] each. Out: [B, T], metrics."""
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    h = x.extras["topp_entropy"]
    penalty = sel["grad_w"] * (h - h.detach()) + sel["value"]
    return LossOutput(s.loss + penalty.to(s.loss.dtype), metrics)
