"""Entropy of attention distributions: the pure reduction behind `attention/entropy_l{i}`.

For one attention head, query q's attention weights a_q (a probability distribution over the keys it may see)
have entropy H_q = -sum_k a_qk ln a_qk (nats), between 0 (all weight on one key) and ln(visible keys) (uniform).
Low attention entropy everywhere is the "attention entropy collapse" that destabilises training (Zhai et al. 2023,
sigmaReparam, arXiv:2303.06296); entropy-guided attention work (arXiv:2501.03489) reads the same quantity per
layer and head.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["head_entropy", "head_entropy_sum"]


def head_entropy_sum(attn: Tensor, query_mask: Tensor) -> Tensor:
    """Sum per head of the attention entropy over the selected queries, fp32, nats (0 when none is selected).

    Args:
        attn: [B, H, Q, K] attention probabilities (each [b, h, q, :] sums to 1; masked keys hold 0).
        query_mask: [B, Q] 1 (or True) on the queries to sum over.

    Returns:
        [H] sum over selected (b, q) of -sum_k a log a (0 log 0 = 0).

    Raises:
        ValueError: if the shapes disagree.
    """
    if attn.ndim != 4 or query_mask.shape != (attn.shape[0], attn.shape[2]):
        raise ValueError(f"attn must be [B, H, Q, K] and query_mask [B, Q]; got {tuple(attn.shape)} and "
                         f"{tuple(query_mask.shape)}")
    ent = torch.special.entr(attn.float()).sum(-1)  # [B, H, Q]; entr(0) = 0
    return (ent * query_mask.to(ent.dtype).unsqueeze(1)).sum(dim=(0, 2))  # [H]


def head_entropy(attn: Tensor, query_mask: Tensor) -> Tensor:
    """Mean attention entropy per head over the selected queries, fp32, nats: `head_entropy_sum` / their count.

    Args:
        attn: [B, H, Q, K] attention probabilities.
        query_mask: [B, Q] 1 (or True) on the queries to average over.

    Returns:
        [H]; NaN for every head when no query is selected.
    """
    return head_entropy_sum(attn, query_mask) / query_mask.to(torch.float32).sum()
