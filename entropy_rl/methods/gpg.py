"""GPG: plain policy gradient -alpha * A * log pi (no ratio, no clipping, no KL), alpha = B / B_valid.

Paper: Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning Baseline for Model Reasoning"
(arXiv:2504.02546). Official code: `AMAP-ML/GPG`; verl port `compute_policy_loss_gpg` (read in a public snapshot).

Loss (faithful form, as verl and the official trainer): l_t = -alpha * A_t * logp_t, aggregated by the trainer
(the paper uses a token mean, `token-mean`). Its gradient is -alpha A grad log pi. We do NOT write it as
-A exp(logp - old_logp): that form has the same gradient only on-policy (old_logp == logp) and would add an
importance weight off-policy, which GPG does not have. Consequences, named: the loss *value* is not comparable with
PPO-family losses (it is -A log pi, not -A r); off-policy mini-batches (epochs > 1 or several mini-batches) get
no importance correction, exactly as in the official code.

Advantage correction (`valid_correction`): the paper scales the gradient by alpha = B / (B - M), with M the number
of "invalid" samples whose advantage is zero (groups where every response got the same reward), so that the
mean over the batch is not diluted by them. We compute alpha in `select` over the optimizer mini-batch: B = rows,
B_valid = rows with a nonzero advantage on some masked token. Departures: the paper / verl compute it over the
whole rollout batch in the advantage estimator (verl's `compute_gpg_outcome_advantage` actually uses
B / count_nonzero(rewards), i.e. rows with a nonzero *reward*, which differs from the paper's definition); we
follow the paper's definition at mini-batch scope. Pair GPG with the `dr_grpo` estimator (A = r - mean, the
paper's F_norm = 1); the paper's optional std normalisation is `grpo`.

Neutral setting: none (no ratio, no clipping: GPG never reduces to `ppo_clip`'s loss value).

Params:
    valid_correction (True): scale by alpha = B / B_valid computed over the mini-batch (1 when False or no row
        is valid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean


@dataclass(frozen=True)
class Params:
    valid_correction: bool = True  # alpha = B / B_valid over the mini-batch

    def __post_init__(self) -> None:
        if not isinstance(self.valid_correction, bool):
            raise ValueError(f"valid_correction must be a bool, got {self.valid_correction!r}")


def select(x: PolicyInputs, p: Params, ctx: StepContext, generator: torch.Generator | None) -> TokenWeights:
    """alpha = B / B_valid over the mini-batch, as [B, 1] (sliced per micro-batch), and its metrics."""
    b = x.logp.shape[0]
    valid = ((x.adv != 0) & (x.mask > 0)).any(-1)  # [B]
    n_valid = valid.sum().to(x.logp.dtype)
    alpha = torch.where(n_valid > 0, b / n_valid.clamp_min(1.0), torch.ones_like(n_valid))
    if not p.valid_correction:
        alpha = torch.ones_like(alpha)
    return TokenWeights(
        {"alpha": alpha.expand(b, 1).clone()},
        {"method/gpg/alpha": alpha, "method/gpg/valid_frac": n_valid / max(b, 1)},
    )


@register_policy_loss("gpg", Params, select=select, paper="arXiv:2504.02546", neutral=None)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """-alpha A logp per token. In: [B, T] each. Out: loss [B, T] and policy/* metrics."""
    per_token = -sel["alpha"] * x.adv * x.logp
    with torch.no_grad():
        lr = ppo.log_ratio(x.logp, x.old_logp)
        metrics = {
            "policy/approx_kl": masked_mean(torch.exp(lr) - 1.0 - lr, x.mask),
            "policy/ratio_mean": masked_mean(torch.exp(lr), x.mask),
        }
    return LossOutput(per_token, metrics)
