"""GSPO: clip a sequence-level importance ratio (geometric mean of token ratios) instead of token ratios.

Paper: Zheng et al. 2025, "Group Sequence Policy Optimization" (arXiv:2507.18071, Qwen). Implemented in the
token form of the paper ("GSPO-token"), as verl `compute_policy_loss_gspo` and Tinker's `gspo` do:

    log s_i   = (1/|o_i|) sum_t M_{i,t} (logp_{i,t} - old_logp_{i,t})          (mean over the response)
    s_{i,t}   = sg(s_i) * pi_theta(o_{i,t}) / sg(pi_theta(o_{i,t}))            (value s_i, gradient of its own token)
    l_{i,t}   = max(-A_{i,t} s_{i,t}, -A_{i,t} clip(s_{i,t}, 1 - eps_low, 1 + eps_high))

With a sequence-level advantage (A_{i,t} = A_i, the GRPO family) the gradient equals the paper's sequence-level
GSPO: (1/|o_i|) sum_t grad log pi(o_{i,t}) scaled by s_i A_i (paper eqs. 11 and 18). Clipping keeps or drops whole
sequences. Rows are whole sequences, so the loss is micro-batch invariant and needs no `select`.

Checked against: the arXiv abstract, TRL's paper index (eps 3e-4 / 4e-4, paper v2 §5.1), Tinker's GSPO page and
verl's `compute_policy_loss_gspo` (read in a public snapshot). Details taken from verl:
    - the combined log-ratio is clamped at max 10 before exp (value s_i <= e^10; gradient stops there);
    - no dual clip;
    - aggregation: verl 0.9.1 aggregates GSPO with the configured `actor.loss_agg_mode` (default token-mean; the
      function's own default is seq-mean-token-mean, and older verl forced that mode), and so does the trainer
      here: set `seq-mean-token-mean` to match the paper's objective (1/G sum_i 1/|o_i| sum_t).
Unverified: the paper text itself (only abstract-level excerpts were read).

Neutral setting: none. Even with eps 0.2/0.2 the clip acts on s_i (one value per sequence), not on token ratios,
so GSPO does not reduce to `ppo_clip` off-policy (on-policy both have ratio 1 and equal gradients).

Params:
    eps_low (3e-4): sequence-ratio floor 1 - eps_low (binds when A < 0); paper v2 §5.1.
    eps_high (4e-4): sequence-ratio ceiling 1 + eps_high (binds when A > 0); paper v2 §5.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, masked_mean

MAX_LOG_SEQ_RATIO = 10.0  # verl clamps the token-form log-ratio at 10 before exp


@dataclass(frozen=True)
class Params:
    eps_low: float = 3e-4  # sequence-ratio floor 1 - eps_low
    eps_high: float = 4e-4  # sequence-ratio ceiling 1 + eps_high

    def __post_init__(self) -> None:
        if self.eps_low < 0 or self.eps_high < 0:
            raise ValueError(f"eps_low and eps_high must be >= 0, got {self.eps_low}, {self.eps_high}")


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_i = masked mean over the response of (logp - old_logp); 0 for an empty response. [B, T] -> [B]."""
    lr = ppo.log_ratio(logp, old_logp) * mask
    return lr.sum(-1) / mask.sum(-1).clamp_min(1.0)


@register_policy_loss("gspo", Params, paper="arXiv:2507.18071", neutral=None)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """GSPO-token clipped surrogate. In: [B, T] each. Out: loss [B, T] and policy/*, method/gspo/* metrics."""
    seq_lr = sequence_log_ratio(x.logp, x.old_logp, x.mask).detach()  # [B], no gradient (sg)
    token_lr = (seq_lr.unsqueeze(-1) + x.logp - x.logp.detach()).clamp(max=MAX_LOG_SEQ_RATIO)  # value log s_i
    # exp(token_lr - 0) = s_{i,t}; reuse the PPO pieces with old_logp = 0 and no dual clip.
    s = ppo.clipped_surrogate(token_lr, torch.zeros_like(token_lr), x.adv, p.eps_low, p.eps_high, None)
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    metrics["policy/ratio_mean"] = masked_mean(s.ratio.detach(), x.mask)  # the sequence ratio, token-weighted
    with torch.no_grad():
        has = (x.mask.sum(-1) > 0).to(seq_lr.dtype)
        metrics["method/gspo/seq_ratio_mean"] = (
            torch.exp(seq_lr.clamp(max=MAX_LOG_SEQ_RATIO)) * has
        ).sum() / has.sum().clamp_min(1.0)
    return LossOutput(s.loss, metrics)
