"""Entropy controller: a stateless base loss minus coef * H_cur, coef set each step so predicted entropy hits a target.

The target trajectory is constant, linear or cosine; the *predicted* entropy after the step is steered onto it.

Our method (entropy-rl), built on the toolkit's dynamics instrument (docs/metrics.md `dynamics/*`):
    - `dynamics/dH_pred` = grad H . (theta_new - theta_old): the first-order entropy change of the step's
      actual update (Pearson r 0.707 with the measured change over the 300-step CPU demo, docs/LOG.md);
    - `dynamics/dH_per_bonus` = s: the first-order entropy change a unit entropy bonus adds to a step under
      Adam's current second moments.
Each step t, with H_t the pre-update entropy of the rollout batch (`entropy/token_mean`):
    dH_base = dH_pred(t-1) - coef(t-1) * s(t-1)       (what the base loss alone did last step, estimated)
    e_t = H_target(t+1) - H~_t,   I_t = I_(t-1) + e_t  (the integral; frozen while the coefficient is clipped)
    coef(t) = clip((gain * e_t + integral * I_t - dH~_base) / s~, coef_min, coef_max)
so the step's predicted change dH_base + coef * s equals the gap to the target. H~, dH~_base and s~ are
exponential moving averages (factor `smoothing`): every step samples a new batch, and its entropy differs
from the last one by sampling noise as large as the corrections (docs/LOG.md: without smoothing the
coefficient chased that noise, jumping between 0 and 0.5). The integral term (`integral: 0` turns it off) removes
the steady offset left when dH_pred, measured on the batch the step trained on, overstates the entropy change a
fresh batch shows (docs/LOG.md). Before two probed steps exist (s is undefined until Adam has second moments)
coef stays at `coef`. The method declares `requires=("dynamics/dH_pred", "dynamics/dH_per_bonus")`: config
validation refuses a run without the probe at every step (`train.dynamics_every: 1`).
The state computes coef(t) in `before_update` (it needs H_t); the loss reads it from the step context
(`ControllerValues`); Params hold only the settings below.

Honest notes: the base loss's effect is estimated from the previous step (one-step lag); the bonus's effect is
linearised through Adam's preconditioner, ignoring momentum carried into later steps and the change of the
second moments. Compared against the adaptive entropy bonus in docs/LOG.md. Not validated at scale.

Params:
    base ("ppo_clip"): registry key of the base loss; it must declare no state and no per-token features.
    base_params ({}): the base loss's Params fields.
    coef (0.0): initial coefficient (and the coefficient used without a state, e.g. the function API).
    target (0.3): target entropy in nats at step 0.
    target_end (None): target at step `horizon` for the linear / cosine schedules (None = constant `target`).
    schedule ("constant"): "constant" | "linear" | "cosine".
    horizon (300): steps over which the schedule moves from `target` to `target_end`.
    gain (0.5): fraction of the gap to the target closed per step (< 1 damps).
    integral (0.03): integral gain: nats/step of extra predicted change per nat-step of accumulated error.
    smoothing (0.8): EMA factor of the entropy, base-drift and sensitivity estimates (0 = raw per-step values).
    coef_min (0.0), coef_max (1.0): clip range of the coefficient (coef_min < 0 allows pushing entropy down).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from entropy_rl.core.policy_loss import POLICY_LOSSES, register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean

SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class Params:
    base: str = "ppo_clip"  # base loss registry key (stateless, no features)
    base_params: dict[str, Any] = field(default_factory=dict)  # the base loss's Params fields
    coef: float = 0.0  # initial entropy coefficient
    target: float = 0.3  # target entropy at step 0 (nats)
    target_end: float | None = None  # target at `horizon` (None = constant)
    schedule: str = "constant"  # constant | linear | cosine
    horizon: int = 300  # schedule length in steps
    gain: float = 0.5  # fraction of the gap closed per step
    integral: float = 0.03  # integral gain (0 = proportional + feedforward only)
    smoothing: float = 0.8  # EMA factor of H, dH_base and s (0 = raw per-step values)
    coef_min: float = 0.0  # lower clip of the coefficient
    coef_max: float = 1.0  # upper clip of the coefficient

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.coef_min > self.coef_max:
            raise ValueError(f"coef_min ({self.coef_min}) must be <= coef_max ({self.coef_max})")
        if not 0 < self.gain <= 1:
            raise ValueError(f"gain must be in (0, 1], got {self.gain}")
        if self.integral < 0:
            raise ValueError(f"integral must be >= 0, got {self.integral}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if self.horizon < 1 or self.target < 0:
            raise ValueError("horizon must be >= 1 and target >= 0")
        if self.base == "entropy_controller":
            raise ValueError("base cannot be entropy_controller itself")
        base = POLICY_LOSSES.get(self.base)  # raises with the valid names
        if base.obj.make_state is not None or base.obj.old_features or base.obj.cur_features:
            raise ValueError(f"base '{self.base}' has its own state or features; use a stateless base loss")
        base.make_params(**self.base_params)  # validates the base parameters now, not mid-run

    def base_entry(self):
        return POLICY_LOSSES.get(self.base)

    def target_at(self, step: int) -> float:
        """Target entropy (nats) at `step` of the schedule."""
        if self.schedule == "constant" or self.target_end is None:
            return self.target
        frac = min(1.0, max(0.0, step / self.horizon))
        if self.schedule == "cosine":
            frac = 0.5 * (1 - math.cos(math.pi * frac))
        return self.target + (self.target_end - self.target) * frac


def ema(previous: float | None, value: float, factor: float) -> float:
    """Exponential moving average: `value` on the first call, then factor * previous + (1 - factor) * value."""
    return value if previous is None else factor * previous + (1 - factor) * value


@dataclass(frozen=True)
class ControllerValues:
    """Run-time values of one step: the entropy coefficient the controller chose for it."""

    coef: float


class ControllerState:
    """Step counter, current coefficient and last step's dynamics (dH_pred, dH_per_bonus), checkpointed."""

    def __init__(self, p: Params) -> None:
        self.schedule = p
        self.step = 0
        self.coef = p.coef
        self.h_now = float("nan")
        self.h_smooth: float | None = None
        self.dh_base_smooth: float | None = None
        self.s_smooth: float | None = None
        self.error_sum = 0.0
        self.last_dh_pred: float | None = None
        self.last_sensitivity: float | None = None
        self.last_coef = p.coef

    def before_update(self, x: PolicyInputs) -> None:
        """Take this step's entropy H_t and choose its coefficient so the predicted entropy after it is the next target."""
        assert x.old_entropy is not None
        p = self.schedule
        self.h_now = float(masked_mean(x.old_entropy.double(), x.mask.double()))
        self.h_smooth = ema(self.h_smooth, self.h_now, p.smoothing)
        s = self.last_sensitivity
        if s is not None and s > 0 and self.last_dh_pred is not None:
            dh_base = self.last_dh_pred - self.last_coef * s
            self.dh_base_smooth = ema(self.dh_base_smooth, dh_base, p.smoothing)
            self.s_smooth = ema(self.s_smooth, s, p.smoothing)
            error = p.target_at(self.step + 1) - self.h_smooth
            error_sum = self.error_sum + error
            raw = (p.gain * error + p.integral * error_sum - self.dh_base_smooth) / self.s_smooth
            self.coef = min(p.coef_max, max(p.coef_min, raw))
            if self.coef == raw or (raw > p.coef_max) != (error > 0):  # anti-windup: no integrating into a clip
                self.error_sum = error_sum

    def values(self, p: Params) -> ControllerValues:
        """The coefficient of this step (pure; chosen in `before_update`)."""
        return ControllerValues(self.coef)

    def after_update(self, metrics: Mapping[str, float]) -> None:
        self.last_dh_pred = float(metrics["dynamics/dH_pred"])
        self.last_sensitivity = metrics.get("dynamics/dH_per_bonus")  # absent until Adam has second moments
        self.last_coef = self.coef
        self.step += 1

    def metrics(self) -> dict[str, float]:
        target = self.schedule.target_at(self.step)
        return {
            "method/entropy_controller/coef": self.coef,
            "method/entropy_controller/target": target,
            "method/entropy_controller/abs_error": abs(self.h_now - target),
        }

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "schedule"}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def base_context(ctx: StepContext) -> StepContext:
    """The context of the (stateless) base loss: no run-time values, the trainer's aggregation."""
    return StepContext(None, ctx.agg)


def select(x: PolicyInputs, p: Params, ctx: StepContext, generator: torch.Generator | None) -> TokenWeights:
    """The base loss's mini-batch selection (if it has one); the controller itself selects nothing."""
    base = p.base_entry()
    if base.obj.select is None:
        return TokenWeights()
    return base.obj.select(x, base.make_params(**p.base_params), base_context(ctx), generator)


@register_policy_loss(
    "entropy_controller",
    Params,
    select=select,
    stage="regularizer",
    paper="entropy-rl (this toolkit)",
    inputs={"entropy", "old_entropy"},
    requires=("dynamics/dH_pred", "dynamics/dH_per_bonus"),
    neutral={"coef": 0.0},
    make_state=ControllerState,
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext[ControllerValues]) -> LossOutput:
    """Base per-token loss minus c * H_cur, c = this step's coefficient. In: [B, T] each (entropy with grad)."""
    assert x.entropy is not None
    coef = ctx.values_as(ControllerValues, "entropy_controller").coef
    base = p.base_entry()
    out = base.obj.loss(x, base.make_params(**p.base_params), sel, base_context(ctx))
    metrics = {k.replace(f"method/{p.base}/", "method/entropy_controller/base_"): v for k, v in out.metrics.items()}
    return LossOutput(out.per_token - coef * x.entropy, metrics)
