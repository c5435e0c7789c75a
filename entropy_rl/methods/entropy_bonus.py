"""Entropy bonus: PPO clip minus coef * H_cur per token, pushing the policy's entropy up (static or adaptive).

Papers: Williams & Peng 1991 (entropy regularisation); as used in RLVR by verl `entropy_coeff` and TRL
`entropy_coef`. Adaptive variant: Skywork-OR1 (arXiv:2505.22312), TRL `use_adaptive_entropy`
(methods.md section 3b). The bonus is aggregated with the same mode and normaliser as the policy loss (verl
behaviour; under seq-mean-token-sum* it is a per-sequence sum). H_cur is the tempered full-vocabulary entropy
of the update forward pass, with gradient: the same definition as the `entropy/token_mean` metric.

Adaptive controller (`adaptive=True`, state built by `make_state`, checkpointed):
    - after each step: c <- clip(c + delta, c_min, c_max) if H <= target_entropy, else clip(c - delta, ...),
      with H = metrics["entropy/token_mean"] of the step (the pre-update pass of the rollout batch);
    - the bonus is applied at a step only if the entropy of the *previous* step was <= target_entropy
      (TRL: `_last_world_entropy`, the gate comes from the end of the previous optimizer step so that every
      micro-batch of a step uses the same coefficient); the gate is open at the first step.

Departures from TRL (documented, deliberate):
    - the initial coefficient is `coef` (default 0.001); TRL starts from `entropy_coef` = 0.0. Pass coef=0 to
      reproduce TRL's start.
    - TRL measures H as the token mean over the update forward passes of the accumulation window (current
      parameters); we use the step's pre-update pass entropy (`entropy/token_mean`), the toolkit's one entropy
      definition. Both are rollout-batch token means; they differ by the within-step policy change.
    - at H == target TRL increases c (its test is `<=`); we follow TRL (the spec's sign() would leave c).
    - the `policy_loss` function API uses a fresh state's coefficient (the first step's: clip(coef, coef_min,
      coef_max), gate open) unless given `values=BonusValues(coef=...)`.

Run-time values (`BonusValues`, built by the state each step, not Params): coef, the coefficient applied at
this step (`coef` when not adaptive; the adaptive coefficient, or 0 while the gate is closed).

Params:
    eps_low (0.2), eps_high (0.2), clip_ratio_c (3.0): as ppo_clip.
    coef (0.001): entropy coefficient c_H >= 0 (the initial coefficient when adaptive); 0 reduces to ppo_clip.
    adaptive (False): use the Skywork-OR1 / TRL adaptive controller (needs the trainer's method state).
    target_entropy (0.2): H_target in nats.
    delta (0.005): coefficient step per optimizer step.
    coef_min (0.0), coef_max (1.0): clip range of the adaptive coefficient.

Metrics:
    method/entropy_bonus/entropy: masked token mean of H_cur in this call (nats).
    method/entropy_bonus/coef: coefficient c used at this step (adaptive state only).
    method/entropy_bonus/applied: 1 if the bonus was applied at this step (gate open), else 0 (adaptive only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean


@dataclass(frozen=True)
class Params:
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0
    coef: float = 0.001  # entropy coefficient c_H (verl default before 2025-05); initial c when adaptive
    adaptive: bool = False  # Skywork-OR1 / TRL use_adaptive_entropy controller
    target_entropy: float = 0.2  # H_target (nats), TRL entropy_target
    delta: float = 0.005  # coefficient step per optimizer step, TRL entropy_coef_delta
    coef_min: float = 0.0  # lower clip of the adaptive coefficient
    coef_max: float = 1.0  # upper clip of the adaptive coefficient

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError(f"coef must be >= 0, got {self.coef}")
        if self.delta < 0:
            raise ValueError(f"delta must be >= 0, got {self.delta}")
        if not 0 <= self.coef_min <= self.coef_max:
            raise ValueError(f"need 0 <= coef_min <= coef_max, got {self.coef_min}, {self.coef_max}")


@dataclass(frozen=True)
class BonusValues:
    """Run-time values of one step: the coefficient applied (0 while the adaptive gate is closed)."""

    coef: float


class AdaptiveEntropyState:
    """Coefficient c and the gate of the adaptive entropy bonus; the constant `coef` when adaptive=False.

    Attributes:
        coef: current coefficient c (starts at clip(p.coef, coef_min, coef_max)).
        last_entropy: entropy/token_mean of the last finished step, or None before the first.
    """

    def __init__(self, p: Params) -> None:
        self.p = p
        self.coef = min(max(p.coef, p.coef_min), p.coef_max) if p.adaptive else p.coef
        self.last_entropy: float | None = None

    @property
    def gate_open(self) -> bool:
        """TRL gating: apply the bonus while the previous step's entropy was <= target (open at the start)."""
        return self.last_entropy is None or self.last_entropy <= self.p.target_entropy

    def values(self, p: Params) -> BonusValues:
        """The coefficient of this step (pure)."""
        if not p.adaptive:
            return BonusValues(p.coef)
        return BonusValues(self.coef if self.gate_open else 0.0)

    def before_update(self, x: PolicyInputs) -> None:
        return None

    def after_update(self, metrics: Mapping[str, float]) -> None:
        if not self.p.adaptive:
            return
        h = float(metrics["entropy/token_mean"])
        step = self.p.delta if h <= self.p.target_entropy else -self.p.delta
        self.coef = min(max(self.coef + step, self.p.coef_min), self.p.coef_max)
        self.last_entropy = h

    def metrics(self) -> dict[str, float]:
        if not self.p.adaptive:
            return {}
        return {"method/entropy_bonus/coef": self.coef, "method/entropy_bonus/applied": float(self.gate_open)}

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.coef = float(state["coef"])
        self.last_entropy = None if state["last_entropy"] is None else float(state["last_entropy"])


@register_policy_loss(
    "entropy_bonus",
    Params,
    stage="regularizer",
    paper="verl entropy_coeff / TRL entropy_coef; arXiv:2505.22312",
    inputs={"entropy"},
    requires=("entropy/token_mean",),
    neutral={"coef": 0.0},
    make_state=AdaptiveEntropyState,
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext[BonusValues]) -> LossOutput:
    """Per-token PPO loss minus c * H_cur, c = this step's coefficient. In: [B, T] each (entropy with grad)."""
    assert x.entropy is not None  # checked by policy_loss / the trainer
    coef = ctx.values_as(BonusValues, "entropy_bonus").coef
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    metrics["method/entropy_bonus/entropy"] = masked_mean(x.entropy.detach(), x.mask)
    return LossOutput(s.loss - coef * x.entropy, metrics)
