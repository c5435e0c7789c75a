"""Token entropy of a softmax policy: the one definition the toolkit logs as `entropy/token_mean`."""

from __future__ import annotations

import torch
from torch import Tensor


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Full-vocabulary entropy H_t = -sum_v p_v log p_v with p = softmax(z_t / temperature), in nats.

    Computed in fp32 whatever the logits dtype (bf16 entropies are visibly biased). Differentiable.

    Args:
        logits: [..., V] raw logits.
        temperature: the sampling temperature tau (> 0); the entropy is that of the sampling distribution.

    Returns:
        [...] fp32 entropies in nats.

    Raises:
        ValueError: if temperature <= 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return entropy_from_logp(torch.log_softmax(logits.float() / temperature, dim=-1))


def entropy_from_logp(logp: Tensor) -> Tensor:
    """H = -sum_v p_v log p_v from normalised log-probs (p = exp(logp)); the one formula every entropy here uses.

    Args:
        logp: [..., V] log-softmax output (may hold -inf where a logit was masked).

    Returns:
        [...] entropies, same dtype as `logp`, differentiable.
    """
    p = logp.exp()
    # p log p -> 0 where p = 0: the where keeps -inf logits (top-k masking) from giving 0 * -inf = NaN
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(token) under softmax(logits / temperature), fp32.

    Args:
        logits: [B, T, V] logits aligned so that logits[:, t] predicts tokens[:, t].
        tokens: [B, T] int64 token ids.
        temperature: sampling temperature.

    Returns:
        [B, T] fp32 log-probabilities (nats).
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
