"""80/20 rule: policy gradient only on the top-rho highest-entropy ("forking") tokens of the batch (Wang et al. 2025).

Paper: "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement Learning for LLM
Reasoning", arXiv:2506.01939 (NeurIPS 2025). Official code: Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR
(`get_global_entropy_top_mask`, bug fix 137d8d1e); TRL `top_entropy_quantile`. Spec: methods.md section 4.

Selection (`select`, over the valid tokens of the optimizer mini-batch):
    k = max(1, ceil(rho * N_valid)) tokens with the highest entropy, by torch.topk (exactly k: ties at the
    threshold are broken by topk, like the official code). TRL's `H >= torch.quantile(H, 1 - rho)` (trl 1.16
    `get_high_entropy_mask`) never keeps more for distinct entropies: 1 + floor(rho (N_valid - 1)) tokens, the
    same k when rho = 1/m (0.2, 0.1, 0.5, ...) and one fewer when frac(rho N_valid) lies in (0, rho) (rho 0.3,
    N_valid 7: 2 against 3). Only ties make it keep more: every token tied at its threshold is kept.
    threshold = the k-th largest entropy (logged).
Loss (`loss`, per micro-batch): l_t = 1[t selected] * scale * PPO clipped loss (clip-higher and dual clip), where
    normalize="all_tokens" (paper objective, TRL): scale = 1; the trainer's token-mean divides by all valid tokens.
    normalize="selected_tokens" (official code): scale = N_valid / N_selected of the mini-batch, so that the
        trainer's token-mean over N_valid becomes a mean over the selected tokens (1/rho times the paper's
        per-token gradient). Computed once in `select` and stored as a [B, 1] tensor so micro-batches share it.

Entropy source: entropy_source="old" (default) uses H_old from the pre-update pass: free, exact for the first
mini-batch of a rollout and global over the mini-batch. "current" uses H_cur of the current policy (detached),
as the official code does; the trainer gives `select` the current policy's entropy.

Departures from the official code (deliberate):
    - Selection over the whole optimizer mini-batch, not per micro-batch (toolkit rule).
    - Default entropy source is H_old (official: H_cur); the `top_entropy_official` variant reproduces the code.
    - Default normaliser is the paper's (all tokens); the official code's is offered as "selected_tokens".
    - k uses ceil(rho * N_valid - 1e-6), so float noise (0.7 * 10 = 7.000000000000001) does not add a token; the
      official int(rho N_valid + 0.9999) keeps one token fewer when frac(rho N_valid) lies in (1e-6, 1e-4].

Variants (entropy_rl/presets/methods/, `entropy-rl compare --methods NAME`):
    top_entropy            the defaults: paper objective, H_old (toolkit default)
    top_entropy_official   normalize selected_tokens, entropy_source current (the released code)

Params:
    rho (0.2): fraction of the mini-batch's valid tokens kept (actor.entropy_top_ratio); 1.0 reproduces ppo_clip.
    normalize ("all_tokens"): "all_tokens" (paper, TRL) or "selected_tokens" (official code).
    entropy_source ("old"): "old" (H_old, pre-update pass) or "current" (H_cur of the current policy).
    eps_low (0.2): ratio floor 1 - eps_low (DAPO recipe).
    eps_high (0.28): ratio ceiling 1 + eps_high (DAPO clip-higher, as in the released scripts).
    clip_ratio_c (10.0): dual-clip constant c > 1 for A < 0 (the scripts' value), or None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from entropy_rl.core import ppo
from entropy_rl.core.policy_loss import register_policy_loss
from entropy_rl.core.types import LossOutput, PolicyInputs, StepContext, TokenWeights, zero_scalar

NORMALIZE = ("all_tokens", "selected_tokens")
ENTROPY_SOURCES = ("old", "current")


@dataclass(frozen=True)
class Params:
    rho: float = 0.2  # fraction of valid tokens kept, highest entropy first (paper/scripts 0.2)
    normalize: str = "all_tokens"  # all_tokens (paper, TRL) | selected_tokens (official code)
    entropy_source: str = "old"  # old (H_old, pre-update pass) | current (H_cur, as the official code)
    eps_low: float = 0.2  # ratio floor 1 - eps_low
    eps_high: float = 0.28  # ratio ceiling 1 + eps_high (DAPO clip-higher, the scripts' value)
    clip_ratio_c: float | None = 10.0  # dual clip for A < 0 (the scripts' value)

    def __post_init__(self) -> None:
        if not 0.0 < self.rho <= 1.0:
            raise ValueError(f"rho must be in (0, 1], got {self.rho}")
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got '{self.normalize}'")
        if self.entropy_source not in ENTROPY_SOURCES:
            raise ValueError(f"entropy_source must be one of {ENTROPY_SOURCES}, got '{self.entropy_source}'")
        ppo.check_clip_params(self.eps_low, self.eps_high, self.clip_ratio_c)


def n_to_keep(rho: float, n_valid: int) -> int:
    """max(1, ceil(rho * N_valid)) capped at N_valid; 0 when there is no valid token."""
    if n_valid == 0:
        return 0
    return min(n_valid, max(1, math.ceil(rho * n_valid - 1e-6)))


def select(x: PolicyInputs, p: Params, ctx: StepContext, generator: torch.Generator | None) -> TokenWeights:
    """Top-rho entropy tokens over the mini-batch. In: [B, T] detached. Out: {"keep": bool, "scale": [B, 1]}, metrics."""
    h = x.old_entropy if p.entropy_source == "old" else x.entropy
    if h is None:
        which = "old_entropy (H_old)" if p.entropy_source == "old" else "entropy (H_cur)"
        raise ValueError(f"top_entropy with entropy_source='{p.entropy_source}' needs {which}")
    h = h.detach()
    valid = x.mask.bool()
    n_valid = int(valid.sum())
    k = n_to_keep(p.rho, n_valid)
    keep = torch.zeros_like(valid).flatten()
    threshold = zero_scalar(x.logp)
    if k > 0:
        scores = torch.where(valid, h, torch.full_like(h, -math.inf)).flatten()
        top = torch.topk(scores, k, largest=True)
        keep[top.indices] = True
        threshold = top.values.min().to(x.logp.dtype)
    keep = keep.view_as(valid)  # [B, T]
    scale = n_valid / k if (p.normalize == "selected_tokens" and k > 0) else 1.0
    metrics = {
        "method/top_entropy/threshold": threshold,
        "method/top_entropy/selected_frac": torch.tensor(k / max(n_valid, 1), dtype=x.logp.dtype, device=x.logp.device),
    }
    scale_t = torch.full((x.logp.shape[0], 1), scale, dtype=x.logp.dtype, device=x.logp.device)  # [B, 1]
    return TokenWeights({"keep": keep, "scale": scale_t}, metrics)


@register_policy_loss(
    "top_entropy",
    Params,
    select=select,
    paper="arXiv:2506.01939",
    inputs={"old_entropy", "entropy"},
    neutral={"rho": 1.0},
)
def loss(x: PolicyInputs, p: Params, sel: TokenWeights, ctx: StepContext) -> LossOutput:
    """Per-token PPO loss on the selected high-entropy tokens only, times the normaliser scale. [B, T] in and out."""
    keep, scale = sel["keep"], sel["scale"]
    s = ppo.clipped_surrogate(x.logp, x.old_logp, x.adv, p.eps_low, p.eps_high, p.clip_ratio_c)
    per_token = torch.where(keep, s.loss * scale, torch.zeros_like(s.loss))
    metrics = ppo.surrogate_metrics(s, x.logp, x.old_logp, x.mask)
    return LossOutput(per_token, metrics)
