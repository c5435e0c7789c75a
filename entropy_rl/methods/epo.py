"""EPO: entropy bonus plus a penalty on entropy outside a band around its historical mean, with a phase schedule.

Paper: Xu et al., "EPO: Entropy-regularized Policy Optimization for LLM Agents RL" (arXiv:2509.22576); official
code `WujiangXu/EPO` @ 5b6fa98, `verl/workers/actor/dp_actor.py` (`generate_entropy_penalty`,
`_calculate_epoch_based_entropy_weight`, `update_policy`) (methods.md section 8).

Loss (official structure, kept so that the coefficients transfer):
    l_t = ppo_t - coef * (H_t - smooth_coef * w(e) * S_t),
with H_t = H_cur (full-vocab, with gradient) and, when the historical mean entropy Hbar is known:
    - mode "hinge" (default, our differentiable design of the paper's intent; NOT verified against the
      paper's formula): S_t = (H_t - hi Hbar)_+ + (lo Hbar - H_t)_+, which pulls H back into [lo Hbar, hi Hbar];
    - mode "official" (the released code): S_t = 0 if lo Hbar < H_t < hi Hbar else out_range_penalty, built
      from comparisons, i.e. a constant: the smoothing term changes the loss value only, and the gradient is
      exactly PPO + the plain entropy bonus with coef.
w(e) = 1 unless smooth_weights: w(e) = 1 - 0.2 (1 - exp(-2 e / h)) for e <= h = max_epochs // 2, else
0.8 exp(-gamma (e - h) / (max_epochs - h)), e clamped to [0, max_epochs] (official, max_epochs 150, gamma 3).

State (checkpointed): Hbar = the all-time mean of the per-step `entropy/token_mean` (pre-update pass) of the
finished steps (official: an all-time mean of per-turn batch entropies, not a window or EMA), and the epoch e =
number of finished steps (the official `trainer_epoch`). Our tasks are single-turn, so the official per-turn
history H[s] collapses to one turn.

Departures from the official code:
    - the official gate "some sample of the micro-batch is at turn >= max_steps // 2" would never fire for a
      single-turn task; we apply smoothing whenever Hbar is known.
    - Hbar excludes the current step (the state adds a step's entropy in `after_update`); the official
      history includes the current iteration's rollout-time entropy. At the first step (and with the function
      API unless given `values=EpoValues(history_mean=...)`) Hbar is unknown and smoothing is off.
    - token mask mode only (the official "seq" mode compares sequence means).
    - "hinge" mode is ours (see above).

Params:
    eps_low (0.2), eps_high (0.2), clip_ratio_c (3.0): PPO clip, as ppo_clip.
    coef (0.001): entropy coefficient c_H (official entropy_coeff); 0 with smooth_coef 0 reduces to ppo_clip.
    smooth_coef (1.0): c_s, weight of the smoothing term inside the bracket (official entropy_smooth_coeff).
    band_low (0.8), band_high (1.2): band [lo Hbar, hi Hbar] (official min/max_ratio; the example script uses 0.5/1.5).
    mode ("hinge"): "hinge" (differentiable) or "official" (constant penalty, zero gradient).
    out_range_penalty (0.1): the official mode's per-token penalty outside the band.
    smooth_weights (False): apply the phase schedule w(e) (official enable_smooth_weights).
    max_epochs (150): schedule horizon (hard-coded 150 in the released run).
    gamma (3.0): second-phase decay rate of w(e).

Run-time values (`EpoValues`, built by the state each step, not Params):
    history_mean: Hbar in nats, None while unknown (smoothing off).
    epoch: e, the number of finished steps, for w(e).

Metrics:
    method/epo/entropy: masked token mean of H_cur in this call (nats).
    method/epo/history_mean: Hbar used (nats; 0 if unknown).
    method/epo/smooth_weight: w(e) used (0 when smoothing is off).
    method/epo/out_of_band_frac: fraction of valid tokens with H_cur outside (lo Hbar, hi Hbar).
    method/epo/smooth_penalty: masked token mean of S_t (nats in hinge mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean, zero_scalar

MODES = ("hinge", "official")


@dataclass(frozen=True)
class Params:
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0
    coef: float = 0.001  # c_H, entropy_coeff
    smooth_coef: float = 1.0  # c_s, entropy_smooth_coeff
    band_low: float = 0.8  # lo, entropy_smooth_min_ratio
    band_high: float = 1.2  # hi, entropy_smooth_max_ratio
    mode: str = "hinge"  # "hinge" | "official"
    out_range_penalty: float = 0.1  # official mode: penalty per out-of-band token
    smooth_weights: bool = False  # enable_smooth_weights (phase schedule)
    max_epochs: int = 150  # schedule horizon (hard-coded officially)
    gamma: float = 3.0  # second-phase decay rate

    def __post_init__(self) -> None:
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)
        if self.coef < 0 or self.smooth_coef < 0:
            raise ValueError(f"coef and smooth_coef must be >= 0, got {self.coef}, {self.smooth_coef}")
        if not 0 <= self.band_low <= self.band_high:
            raise ValueError(f"need 0 <= band_low <= band_high, got {self.band_low}, {self.band_high}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.max_epochs < 0:
            raise ValueError(f"max_epochs must be >= 0, got {self.max_epochs}")


def smooth_weight(epoch: int, max_epochs: int = 150, gamma: float = 3.0, lambda_slow: float = 2.0) -> float:
    """Official phase weight w(e): 1 -> 0.8 slowly over the first half, then 0.8 -> ~0 fast. Float in [0, 1]."""
    if max_epochs <= 0:
        return 1.0
    e = max(0, min(epoch, max_epochs))
    half = max_epochs // 2
    if e <= half:
        return 1.0 if half == 0 else 1.0 - 0.2 * (1.0 - math.exp(-lambda_slow * e / half))
    rest = max_epochs - half
    return 0.8 * math.exp(-gamma * (e - half) / rest)


@dataclass(frozen=True)
class EpoValues:
    """Run-time values of one step: Hbar (nats; None while unknown) and the epoch e (finished steps)."""

    history_mean: float | None = None
    epoch: int = 0


class EpoState:
    """All-time mean of the per-step entropy (Hbar) and the step index e; checkpointed."""

    def __init__(self, p: Params) -> None:
        self.entropy_sum = 0.0
        self.count = 0
        self.epoch = 0

    @property
    def history_mean(self) -> float | None:
        return self.entropy_sum / self.count if self.count else None

    def values(self, p: Params) -> EpoValues:
        """Hbar and e of this step (pure)."""
        return EpoValues(self.history_mean, self.epoch)

    def before_update(self, x: PolicyInputs) -> None:
        return None

    def after_update(self, metrics: Mapping[str, float]) -> None:
        self.entropy_sum += float(metrics["entropy/token_mean"])
        self.count += 1
        self.epoch += 1

    def metrics(self) -> dict[str, float]:
        return {"method/epo/epoch": float(self.epoch)}

    def state_dict(self) -> dict[str, Any]:
        return {"entropy_sum": self.entropy_sum, "count": self.count, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.entropy_sum = float(state["entropy_sum"])
        self.count = int(state["count"])
        self.epoch = int(state["epoch"])


@register_policy_loss(
    "epo",
    Params,
    stage="regularizer",
    paper="arXiv:2509.22576",
    inputs={"entropy"},
    requires=("entropy/token_mean",),
    neutral={"coef": 0.0, "smooth_coef": 0.0},
    make_state=EpoState,
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext[EpoValues]) -> LossOutput:
    """PPO clip - coef * (H_cur - smooth_coef * w(e) * S). In: [B, T] each (entropy with grad). Out: [B, T]."""
    assert x.entropy is not None  # checked by policy_loss / the trainer
    v = ctx.values_as(EpoValues, "epo")
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    h = x.entropy
    metrics["method/epo/entropy"] = masked_mean(h.detach(), x.mask)
    if v.history_mean is None or p.smooth_coef <= 0:  # no smoothing
        metrics["method/epo/history_mean"] = (
            zero_scalar(s.loss) if v.history_mean is None else s.loss.new_tensor(v.history_mean)
        )
        metrics["method/epo/smooth_weight"] = zero_scalar(s.loss)
        metrics["method/epo/out_of_band_frac"] = zero_scalar(s.loss)
        metrics["method/epo/smooth_penalty"] = zero_scalar(s.loss)
        return LossOutput(s.loss - p.coef * h, metrics)
    lo, hi = p.band_low * v.history_mean, p.band_high * v.history_mean
    w = smooth_weight(v.epoch, p.max_epochs, p.gamma) if p.smooth_weights else 1.0
    with torch.no_grad():
        in_band = (h > lo) & (h < hi)
    if p.mode == "hinge":
        pen = torch.relu(h - hi) + torch.relu(lo - h)
    else:  # official: built from comparisons, a constant
        pen = torch.where(in_band, torch.zeros_like(h), torch.full_like(h, p.out_range_penalty)).detach()
    metrics["method/epo/history_mean"] = s.loss.new_tensor(v.history_mean)
    metrics["method/epo/smooth_weight"] = s.loss.new_tensor(w)
    metrics["method/epo/out_of_band_frac"] = masked_mean((~in_band).to(s.loss.dtype), x.mask)
    metrics["method/epo/smooth_penalty"] = masked_mean(pen.detach(), x.mask)
    return LossOutput(s.loss - p.coef * (h - p.smooth_coef * w * pen), metrics)
