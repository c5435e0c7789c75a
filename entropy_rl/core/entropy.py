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
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float() / temperature
    logp = torch.log_softmax(z, dim=-1)
    # sum p*logp with p = exp(logp): stable for -inf logits because exp(-inf)*(-inf) is avoided by xlogy-style where
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


def token_entropy_chunked(logits: Tensor, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """`token_entropy` over [B, T, V] computed `chunk_size` rows at a time to bound fp32 memory; no gradient.

    Args:
        logits: [B, T, V] logits.
        temperature: sampling temperature.
        chunk_size: number of (b, t) rows per fp32 chunk.

    Returns:
        [B, T] fp32 entropies in nats.
    """
    flat = logits.reshape(-1, logits.shape[-1])  # [B*T, V]
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        for start in range(0, flat.shape[0], chunk_size):
            out[start : start + chunk_size] = token_entropy(flat[start : start + chunk_size], temperature)
    return out.reshape(logits.shape[:-1])


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
