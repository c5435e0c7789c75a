"""EntroPIC: PPO clip plus alpha * (-r abs(A)) on high-probability tokens, alpha from a PI controller on the entropy error.

Paper: Yang et al. 2025, "EntroPIC: Towards Stable Long-Term Training of LLMs via Entropy Stabilization with
Proportional-Integral Control" (arXiv:2511.15248). Official code: `yk7333/EntroPIC` @ 2470730 (verl-based), read
for this module: `core_algos.py` `compute_policy_loss_entropic`, `dp_actor.py` `update_policy` (the controller),
`config/entropic.yaml` and `run_entropic.sh` (settings).

Loss (official `compute_policy_loss_entropic`): verl's dual-clip PPO loss plus
    alpha * agg(-r_t |A_t|, mask = M_t * [pi(o_t) > high_prob])          r = exp(logp - old_logp), unclipped
with the trainer's loss_agg_mode taken over the high-probability tokens only (token-mean: divided by their
count). On a high-probability token the weight of a positive sample becomes (1 + alpha') and of a negative one
(1 - alpha') (alpha' = alpha times the ratio of the two normalisers): alpha > 0 reinforces confident tokens and
lowers the entropy, alpha < 0 raises it.

Controller (official `update_policy`), with e = H - target_entropy:
    alpha = clip(kp * e + ki * I, -1, 1),  then  I <- I + e
using I before this error is added. Official settings (`run_entropic.sh`): target 0.1, kp 1, ki 0.01,
high_prob 0.95 (the loss function's default), clip 0.2, dual clip 3, GRPO advantages, rollout temperature 0.6 (the
variant `entropic` sets the method's settings only: a sampling temperature would change every method's run).

How it runs here (run-time values `EntropicValues(alpha)` from a checkpointed state): `before_update` takes
H = token mean of H_old over the step's rollout batch (pre-update pass) and sets alpha; `after_update` adds e to
I. `select` marks the high-probability tokens of the optimizer mini-batch from the current log-probs and turns
alpha into per-token weights coef_bt = alpha * w_bt / a_bt, where w are the aggregation weights of the
high-probability mask (token-mean: 1 / N_high over the mini-batch) and a the trainer's weights of the response
mask (`StepContext.agg`), so that the trainer's aggregation returns exactly alpha * agg(-r |A|, high) of the
mini-batch, whatever the micro-batch split. With `algorithm.selection_scope: microbatch` each micro-batch's
term is its own mean weighted by its share of the mini-batch's sequences (the official 1 / gradient_accumulation).

Departures from the official code (named):
    - Per step, not per micro-batch: the official controller reads H of each update micro-batch (current
      parameters, aggregated with loss_agg_mode), sets alpha for that micro-batch and adds its error weighted by
      its share of the mini-batch to I; so alpha varies within a step and I grows once per mini-batch. Here alpha
      is constant over a step (micro-batch invariant) and I grows by e once per step. The two agree with one
      mini-batch and one epoch per step (the official script: train_batch_size = ppo_mini_batch_size = 512) up
      to the within-step variation of alpha.
    - H is the token mean over the rollout batch (the official aggregates with loss_agg_mode; the same under its
      default token-mean).
    - The normaliser of the high-probability term is the optimizer mini-batch's (the toolkit's convention for
      every loss), not the micro-batch's.
    - I and alpha are checkpointed (the official keeps I on the actor object, so a resumed run restarts it at 0).
    - The `policy_loss` function API uses alpha = 0 (a fresh state) unless given `values=EntropicValues(alpha)`.

Params:
    eps_low (0.2), eps_high (0.2), clip_ratio_c (3.0): PPO clip, as ppo_clip (verl defaults, as the official).
    target_entropy (0.1): target token-mean entropy in nats (`target_entropy` of run_entropic.sh).
    kp (1.0): proportional gain (`entropy_control_p`); kp = ki = 0 reduces to ppo_clip.
    ki (0.01): integral gain (`entropy_control_i`).
    high_prob (0.95): tokens with pi(o_t) > high_prob get the adjustment (`high_prob_thresh`).

Run-time values (`EntropicValues`, built by the state each step, not Params): alpha in [-1, 1].

Metrics:
    method/entropic/alpha: alpha used at this step (state).
    method/entropic/error: H - target_entropy of this step (state; nats).
    method/entropic/integral: I after the previous step (state; nat-steps).
    method/entropic/high_frac: share of the mini-batch's valid tokens with pi(o_t) > high_prob (selection).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from entropy_rl.core import ppo
from entropy_rl.core.aggregate import aggregation_weights
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean

ALPHA_LIMIT = 1.0  # official np.clip(control_alpha, -1.0, 1.0)


@dataclass(frozen=True)
class Params:
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0
    target_entropy: float = 0.1  # target entropy (nats)
    kp: float = 1.0  # proportional gain (entropy_control_p)
    ki: float = 0.01  # integral gain (entropy_control_i)
    high_prob: float = 0.95  # probability threshold of the adjusted tokens (high_prob_thresh)

    def __post_init__(self) -> None:
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)
        if self.target_entropy < 0 or self.kp < 0 or self.ki < 0:
            raise ValueError(f"target_entropy, kp and ki must be >= 0, got {self.target_entropy}, {self.kp}, {self.ki}")
        if not 0.0 < self.high_prob < 1.0:
            raise ValueError(f"high_prob must be in (0, 1), got {self.high_prob}")


@dataclass(frozen=True)
class EntropicValues:
    """Run-time values of one step: the controller output alpha in [-1, 1]."""

    alpha: float


class EntropicState:
    """The PI controller: the integral of the entropy error, and this step's error and alpha; checkpointed.

    Attributes:
        integral: I, the sum of the errors of the finished steps (nat-steps).
        error: e = H - target of the current step, or None before the first batch.
        alpha: controller output of the current step (0 before the first batch).
    """

    def __init__(self, p: Params) -> None:
        self.p = p
        self.integral = 0.0
        self.error: float | None = None
        self.alpha = 0.0

    def before_update(self, x: PolicyInputs) -> None:
        """Take this step's entropy and set alpha = clip(kp e + ki I, -1, 1) with I of the finished steps."""
        assert x.old_entropy is not None  # declared input; the trainer always supplies it
        h = float(masked_mean(x.old_entropy.double(), x.mask.double()))
        self.error = h - self.p.target_entropy
        raw = self.p.kp * self.error + self.p.ki * self.integral
        self.alpha = min(ALPHA_LIMIT, max(-ALPHA_LIMIT, raw))

    def values(self, p: Params) -> EntropicValues:
        """The alpha of this step (pure)."""
        return EntropicValues(self.alpha)

    def after_update(self, metrics: Mapping[str, float]) -> None:
        """Integrate this step's error."""
        if self.error is not None:
            self.integral += self.error

    def metrics(self) -> dict[str, float]:
        out = {"method/entropic/alpha": self.alpha, "method/entropic/integral": self.integral}
        if self.error is not None:
            out["method/entropic/error"] = self.error
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"integral": self.integral, "error": self.error, "alpha": self.alpha}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.integral = float(state["integral"])
        self.error = None if state["error"] is None else float(state["error"])
        self.alpha = float(state["alpha"])


def select(
    x: PolicyInputs, p: Params, ctx: StepContext[EntropicValues], generator: torch.Generator | None
) -> TokenWeights:
    """High-probability tokens of the mini-batch and their weights coef = alpha * w_high / a. In: [B, T] each."""
    alpha = ctx.values_as(EntropicValues, "entropic").alpha
    mask = x.mask.float()
    high = mask * (x.logp.float() > math.log(p.high_prob)).float()  # [B, T]
    n_seqs = float(mask.shape[0] if ctx.agg.num_seqs is None else ctx.agg.num_seqs)
    share = mask.shape[0] / n_seqs  # 1 when this call is the whole mini-batch
    w_high = aggregation_weights(
        high, ctx.agg.mode, num_tokens=high.sum() / share, num_seqs=n_seqs, norm_length=ctx.agg.norm_length
    )
    a = ctx.agg.weights(mask)  # the trainer's weight of each valid token
    coef = alpha * torch.where(a > 0, w_high / a.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(a))
    return TokenWeights({"coef": coef}, {"method/entropic/high_frac": high.sum() / mask.sum().clamp_min(1.0)})


@register_policy_loss(
    "entropic",
    Params,
    select=select,
    stage="loss",
    paper="arXiv:2511.15248",
    inputs={"old_entropy"},
    neutral={"kp": 0.0, "ki": 0.0},
    make_state=EntropicState,
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext[EntropicValues]) -> LossOutput:
    """Dual-clip PPO loss plus coef * (-r |A|) on the selected tokens. In: [B, T] each. Out: [B, T], metrics."""
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    adjust = -s.ratio * x.adv.abs() * sel["coef"].to(s.ratio.dtype)
    return LossOutput(s.loss + adjust, metrics)
