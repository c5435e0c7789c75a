"""Diversity of each prompt group's responses: the Vendi score of their text and the entropy of their answers.

- `diversity/vendi`: the Vendi score (Friedman & Dieng 2023, arXiv:2210.02410, eq. 1) of a group's G responses,
  VS = exp(-sum_i lambda_i log lambda_i) with lambda_i the eigenvalues of K / G, where K[i, j] is the cosine
  similarity of the character n-gram count vectors (n = 1..3) of responses i and j. VS is the effective number of
  distinct responses: 1 when all are identical, G when no two share a character n-gram (K = I). It is a property
  of the *text*: two responses that say the same thing in other words count as different, one character apart as
  nearly the same. Character n-grams need no model or tokenizer and work for any text (the paper also uses
  n-gram kernels for text); an embedding kernel would measure meaning instead, at the cost of a model.
- `diversity/answer_entropy`: the Shannon entropy (nats) of the empirical distribution of a group's parsed final
  answers, -sum_a p_a log p_a with p_a = (responses answering a) / (responses with a parsed answer). 0 when every
  parsed answer agrees, log m for m equally frequent answers. Unparseable responses (answer None) are left out,
  as in `rollout/distinct_answers`; a group with none parsed is skipped.

Both are means over the prompt groups of the rollout batch. The `vendi-score` package computes the same score
(`vendi.score_K`, numpy / scipy) but pulls in scikit-learn; here it is torch.linalg.eigvalsh on a G x G matrix,
checked against hand-computed cases (tests/metrics/test_diversity.py; against the package too when installed).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["NGRAM_MAX", "vendi_score", "ngram_similarity", "answer_entropy", "group_diversity"]

NGRAM_MAX = 3  # character n-grams of lengths 1..NGRAM_MAX make the similarity's feature vector


def vendi_score(K: Tensor) -> float:
    """Vendi score exp(H(lambda)) of a similarity matrix (arXiv:2210.02410, eq. 1), natural log.

    Args:
        K: [n, n] symmetric positive semi-definite similarity with K[i, i] = 1 (n >= 1).

    Returns:
        The effective number of distinct items, in [1, n]: 1 for K = all ones, n for K = identity.

    Raises:
        ValueError: K not square, empty, or without a unit diagonal.
    """
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise ValueError(f"K must be a non-empty square matrix, got shape {tuple(K.shape)}")
    K = K.to(torch.float64)
    if not torch.allclose(torch.diagonal(K), torch.ones(K.shape[0], dtype=torch.float64)):
        raise ValueError("K must have a unit diagonal (K[i, i] = 1: every item is fully similar to itself)")
    lam = torch.linalg.eigvalsh(K / K.shape[0]).clamp_min(0.0)  # [n]; round-off can give tiny negatives
    lam = lam[lam > 0]
    return float(torch.exp(-(lam * torch.log(lam)).sum()))


_BITS = 21  # Unicode code points are < 2**21: an n-gram of n <= 3 code points packs into one int64 id


def _ngram_ids(text: str, n_max: int) -> Tensor:
    """Ids of every character n-gram of `text` for n = 1..n_max, one per occurrence: [sum_n (len - n + 1)] int64.

    The id of (c_1, ..., c_n) packs the code points + 1 into 21-bit fields, so n-grams of different lengths never
    share an id and equal ids mean equal n-grams.
    """
    codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).to(torch.int64) + 1 if text \
        else torch.zeros(0, dtype=torch.int64)
    parts = []
    for n in range(1, n_max + 1):
        if len(codes) < n:
            break
        ids = codes[: len(codes) - n + 1].clone()
        for j in range(1, n):
            ids = (ids << _BITS) | codes[j : len(codes) - n + 1 + j]
        parts.append(ids)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def ngram_similarity(texts: Sequence[str], n_max: int = NGRAM_MAX) -> Tensor:
    """Cosine similarity of character n-gram count vectors (n = 1..n_max) of every pair of texts.

    An empty text has no n-grams: it is similar 1 to itself and to other empty texts, 0 to any other.

    Args:
        texts: n strings.
        n_max: the longest n-gram, 1 to 3.

    Returns:
        K [n, n] float64, symmetric, unit diagonal, entries in [0, 1].

    Raises:
        ValueError: n_max outside 1..3.
    """
    if not 1 <= n_max <= 3:
        raise ValueError(f"n_max must be 1, 2 or 3 (n-gram ids pack 3 code points into int64), got {n_max}")
    ids = [_ngram_ids(t, n_max) for t in texts]
    rows = torch.cat([torch.full((len(x),), i, dtype=torch.int64) for i, x in enumerate(ids)]) if ids else \
        torch.zeros(0, dtype=torch.int64)
    vocab, cols = torch.unique(torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64), return_inverse=True)
    X = torch.zeros(len(texts), len(vocab) + 1, dtype=torch.float64)  # [n, V + 1]; the last column marks an empty text
    X.index_put_((rows, cols), torch.ones(len(rows), dtype=torch.float64), accumulate=True)
    X[[i for i, x in enumerate(ids) if len(x) == 0], -1] = 1.0
    X = X / X.norm(dim=1, keepdim=True)
    return (X @ X.T).clamp(0.0, 1.0).fill_diagonal_(1.0)


def answer_entropy(answers: Sequence[str | None]) -> float | None:
    """Shannon entropy (nats) of the empirical distribution of the parsed answers; None when none is parsed."""
    counts = Counter(a for a in answers if a is not None)
    total = sum(counts.values())
    if total == 0:
        return None
    return -sum(c / total * math.log(c / total) for c in counts.values()) + 0.0  # + 0.0: no -0.0


def group_diversity(texts: Sequence[str], answers: Sequence[str | None], group_index: Sequence[int]) -> dict[str, float]:
    """`diversity/vendi` and `diversity/answer_entropy` of a rollout batch: each a mean over its prompt groups.

    Args:
        texts: [B] decoded responses.
        answers: [B] parsed final answers, None where unparseable.
        group_index: [B] the prompt group of each response (rows of a group need not be contiguous).

    Returns:
        {"diversity/vendi": mean Vendi score, "diversity/answer_entropy": mean over groups with a parsed answer
        (omitted when no group has one)}; {} for an empty batch.

    Raises:
        ValueError: if the lengths differ.
    """
    if not len(texts) == len(answers) == len(group_index):
        raise ValueError(f"texts ({len(texts)}), answers ({len(answers)}) and group_index ({len(group_index)}) "
                         "differ in length")
    groups: dict[int, list[int]] = {}
    for row, g in enumerate(group_index):
        groups.setdefault(int(g), []).append(row)
    if not groups:
        return {}
    vendi = [vendi_score(ngram_similarity([texts[i] for i in rows])) for rows in groups.values()]
    out = {"diversity/vendi": sum(vendi) / len(vendi)}
    ents = [h for rows in groups.values() if (h := answer_entropy([answers[i] for i in rows])) is not None]
    if ents:
        out["diversity/answer_entropy"] = sum(ents) / len(ents)
    return out
