"""AEnt: PPO clip minus c * clamped entropy (the policy renormalised without its lowest-logit tokens), c tuned online.

Paper: Shen 2025, "On Entropy Control in LLM-RL Algorithms" (arXiv:2509.03493). Official code read for this module:
the AReaL recipe `inclusionAI/AReaL` `recipe/AEnt/` (`functional.py` @ ae63973 `clamped_softmax_entropy`,
`actor.py` @ 00d07c0 `aent_grpo_loss_fn` and the coefficient update in `aent_ppo_update`, `aent_args.py` and
`configs/gsm8k_aent_grpo.yaml` for the defaults); the verl recipe `antgroup/AEnt` was read only through its
README (same entropy, same update rule plus an optional L2 pull toward the initial coefficient, default 0).

Clamped entropy (feature `clamped_entropy`, update forward pass, with gradient): z = logits / tau (tempered, as
the recipe); remove the k = int(V * clamp) tokens with the LOWEST logits (`topk(largest=False)`), renormalise
softmax over the V - k others, H_clamp = -sum q log q over them. clamp = 0 gives the full entropy. Gradients flow
through the kept logits; which tokens are kept is not differentiated.

Loss per token: ppo_clip - c * H_clamp, aggregated with the trainer's loss_agg_mode (the recipe: token mean).

Coefficient (state, checkpointed; `adaptive: false` keeps c = coef), after every step t (0-based) > warmup_steps:
    c <- clip(c - coef_lr * (min(0, H - entropy_low) + max(0, H - entropy_high)), coef_min, coef_max)
so c grows while H is below entropy_low, shrinks while above entropy_high, and stays inside the band. The first
coefficient is `coef`, unclipped (as the recipe). H is the token mean of H_clamp over step t's rollout batch.

Departures from the official code (named):
    - H for the update: the recipe averages H_clamp over the update forward passes of the step (the current
      parameters, mini-batch after mini-batch); we take the pre-update pass of the rollout batch (the state reads
      the feature in `before_update`). Equal for one on-policy mini-batch per step; they differ by the within-step
      policy change otherwise (the same choice as entropy_bonus's adaptive rule).
    - The coefficient is checkpointed (the recipe keeps it in the actor object only, so a resumed run restarts it).
    - The verl recipe's optional L2 term (`entropy_coeff_reg`, default 0) is not implemented.
    - `adaptive` defaults to true (the recipe's flag defaults to false; the adaptive rule is the method's point).
    - The `policy_loss` function API uses a fresh state's coefficient (`coef`) unless given `values=AEntValues(...)`.
Defaults are the AReaL gsm8k recipe's (clamp 0.4, band [0.05, 0.23], lr 0.001, c in [1e-5, 0.003], warm-up 29,
initial 0.0002); its PPO settings (eps_clip 0.4, no dual clip) are in the variant `aent`, the module keeps
ppo_clip's.

Params:
    eps_low (0.2), eps_high (0.2), clip_ratio_c (3.0): PPO clip, as ppo_clip.
    coef (0.0002): initial coefficient c (`entropy_coeff`); with adaptive false and coef 0 it is ppo_clip.
    clamp (0.4): fraction of the vocabulary removed, lowest logits first (`entropy_clamp`), in [0, 1).
    adaptive (True): tune c after every step past the warm-up.
    entropy_low (0.05), entropy_high (0.23): the target band of H_clamp (nats).
    coef_lr (0.001): step size of the coefficient update.
    coef_min (1e-5), coef_max (0.003): clip range of c (`coeff_box_low/high`).
    warmup_steps (29): c is first updated after step warmup_steps + 1 (0-based index > warmup_steps).

Run-time values (`AEntValues`, built by the state each step, not Params): coef, the coefficient of this step.

Metrics:
    method/aent/clamped_entropy: masked token mean of H_clamp in this call (nats).
    method/aent/coef: coefficient c used at this step (state).
    method/aent/batch_entropy: token mean of H_clamp over the step's rollout batch, pre-update (state; nats).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean


@dataclass(frozen=True)
class Params:
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.2  # ratio ceiling 1 + eps_high
    clip_ratio_c: float | None = 3.0  # dual clip for A < 0
    coef: float = 0.0002  # initial coefficient (entropy_coeff)
    clamp: float = 0.4  # vocabulary fraction removed (entropy_clamp)
    adaptive: bool = True  # tune the coefficient (adaptive_coeff)
    entropy_low: float = 0.05  # lower edge of the clamped-entropy band (nats)
    entropy_high: float = 0.23  # upper edge of the band (nats)
    coef_lr: float = 0.001  # coefficient step size (coeff_lr)
    coef_min: float = 1e-5  # coeff_box_low
    coef_max: float = 0.003  # coeff_box_high
    warmup_steps: int = 29  # updates start after this step (0-based index > warmup_steps)

    def __post_init__(self) -> None:
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)
        if self.coef < 0 or self.coef_lr < 0 or self.warmup_steps < 0:
            raise ValueError(
                f"coef, coef_lr and warmup_steps must be >= 0, got {self.coef}, {self.coef_lr}, {self.warmup_steps}"
            )
        if not 0.0 <= self.clamp < 1.0:
            raise ValueError(f"clamp must be in [0, 1), got {self.clamp}")
        if self.entropy_low > self.entropy_high:
            raise ValueError(f"need entropy_low <= entropy_high, got {self.entropy_low}, {self.entropy_high}")
        if not 0.0 <= self.coef_min <= self.coef_max:
            raise ValueError(f"need 0 <= coef_min <= coef_max, got {self.coef_min}, {self.coef_max}")


def clamped_entropy(logits: Tensor, temperature: float | Tensor, clamp: float) -> Tensor:
    """Entropy of softmax(logits / temperature) renormalised after removing the int(V * clamp) lowest logits, fp32.

    Args:
        logits: [..., V] raw logits (any leading shape).
        temperature: sampling temperature tau > 0.
        clamp: fraction of the vocabulary removed, in [0, 1).

    Returns:
        [...] entropies in nats; gradients reach only the kept logits.
    """
    z = logits.float() / temperature
    k = int(z.shape[-1] * clamp)
    if k == 0:
        logq = torch.log_softmax(z, dim=-1)
        return -(logq.exp() * logq).sum(-1)
    removed = torch.zeros_like(z, dtype=torch.bool).scatter_(
        -1, z.detach().topk(k, dim=-1, largest=False).indices, True
    )
    logq = torch.log_softmax(z.masked_fill(removed, float("-inf")), dim=-1)
    return -(logq.exp() * torch.where(removed, torch.zeros_like(logq), logq)).sum(-1)


def clamped_entropy_feature(logits: Tensor, tokens: Tensor, temperature: float | Tensor, p: Params) -> Tensor:
    """The registered feature: `clamped_entropy` with the method's clamp. Logits [..., V] -> [...]."""
    return clamped_entropy(logits, temperature, p.clamp)


@dataclass(frozen=True)
class AEntValues:
    """Run-time values of one step: the coefficient c applied to the clamped entropy."""

    coef: float


class AEntState:
    """The coefficient c, the step counter and the step's batch clamped entropy; checkpointed.

    Attributes:
        coef: coefficient of the current step.
        step: 0-based index of the current (or next) step.
        batch_entropy: token mean of H_clamp over the current step's rollout batch (pre-update), or None.
    """

    def __init__(self, p: Params) -> None:
        self.p = p
        self.coef = p.coef
        self.step = 0
        self.batch_entropy: float | None = None

    def before_update(self, x: PolicyInputs) -> None:
        """Measure H_clamp of the step's rollout batch (the pre-update pass)."""
        h = x.extras["clamped_entropy"].detach().double()
        self.batch_entropy = float(masked_mean(h, x.mask.double()))

    def values(self, p: Params) -> AEntValues:
        """The coefficient of this step (pure)."""
        return AEntValues(self.coef)

    def after_update(self, metrics: Mapping[str, float]) -> None:
        """Move c toward the band [entropy_low, entropy_high] once past the warm-up."""
        p = self.p
        if p.adaptive and self.step > p.warmup_steps and self.batch_entropy is not None:
            h = self.batch_entropy
            c = self.coef - p.coef_lr * (min(0.0, h - p.entropy_low) + max(0.0, h - p.entropy_high))
            self.coef = min(max(c, p.coef_min), p.coef_max)
        self.step += 1

    def metrics(self) -> dict[str, float]:
        out = {"method/aent/coef": self.coef}
        if self.batch_entropy is not None:
            out["method/aent/batch_entropy"] = self.batch_entropy
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef, "step": self.step, "batch_entropy": self.batch_entropy}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.coef = float(state["coef"])
        self.step = int(state["step"])
        self.batch_entropy = None if state["batch_entropy"] is None else float(state["batch_entropy"])


@register_policy_loss(
    "aent",
    Params,
    stage="regularizer",
    paper="arXiv:2509.03493",
    neutral={"coef": 0.0, "adaptive": False},
    cur_features={"clamped_entropy": clamped_entropy_feature},
    make_state=AEntState,
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext[AEntValues]) -> LossOutput:
    """Per-token PPO loss minus c * H_clamp (with gradient). In: [B, T] each. Out: [B, T], metrics."""
    coef = ctx.values_as(AEntValues, "aent").coef
    h = x.extras["clamped_entropy"]
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    metrics["method/aent/clamped_entropy"] = masked_mean(h.detach(), x.mask)
    return LossOutput(s.loss - coef * h, metrics)
