"""Policy forward passes over prompt + response: per-token log-probs and entropies of the response."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from entropy_rl.core.policy_loss import FeatureFn, PolicyLossMethod
from entropy_rl.core.token_stats import ChunkFeature, WantEntropy, token_stats


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counting real tokens only, so left padding does not shift them (as `generate` does). [B, L]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def response_logits(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> Tensor:
    """Logits predicting each response token: [B, T, V] for input [B, P + T] with P = prompt_len."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask))
    return out.logits[:, prompt_len - 1 : -1]  # position t-1 predicts token t


Features = tuple[tuple[str, FeatureFn], ...]


def bind_features(features: Features, params: Any) -> dict[str, ChunkFeature]:
    """The method's features with its params bound: {name: (logits [n, V], tokens [n], tau) -> [n]}."""
    return {name: partial(fn, p=params) for name, fn in features}


def entropy_for_update(method: PolicyLossMethod) -> WantEntropy:
    """What the update pass computes of H_cur: with gradient when the method declares it (`"entropy"` in its
    `inputs`), detached when it has a selection that may still read H_cur (hapo prefers it when present), else
    nothing."""
    if "entropy" in method.inputs:
        return "grad"
    return "nograd" if method.select is not None else False


def score_responses(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    temperature: float | Tensor,
    features: Features = (),
    params: Any = None,
    *,
    want_entropy: WantEntropy = True,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
    """Tempered log-probs, full-vocab entropies and method features of the response tokens, fp32 [B, T] each.

    Runs with whatever grad mode the caller set; logp and features carry gradient when grad is enabled, the
    entropy as `want_entropy` says (False gives None: the update pass asks for it only when the method reads
    H_cur). The statistics come from `token_stats`, chunk by chunk; the model still returns its logits.

    Args:
        model: causal LM.
        input_ids: [B, P + T] prompt then response ids.
        attention_mask: [B, P + T] 1 on real tokens.
        prompt_len: P.
        temperature: tau, a float or [B, T] per response token.
        features: the method's declared (name, FeatureFn) pairs.
        params: the method's params, passed to each feature.
        want_entropy: see `token_stats`.
        mask: [B, T] response mask; tokens off it are skipped and read 0 (None computes every position).

    Returns:
        logp [B, T], entropy [B, T] or None, {feature name: [B, T]}.
    """
    logits = response_logits(model, input_ids, attention_mask, prompt_len)
    stats = token_stats(logits, input_ids[:, prompt_len:], temperature, want_entropy=want_entropy,
                        features=bind_features(features, params), mask=mask)
    return stats.logp, stats.entropy, stats.features


@torch.no_grad()
def score_in_chunks(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    temperature: float | Tensor,
    chunk: int,
    features: Features = (),
    params: Any = None,
    *,
    want_entropy: bool = True,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
    """No-grad `score_responses` over the batch, `chunk` sequences at a time. Returns logp, entropy, extras."""
    was_training = model.training
    model.eval()  # no dropout in the scoring pass (tiny models have none; real checkpoints may)
    chunk = chunk or input_ids.shape[0]

    def rows(t: Tensor | float | None, i: int) -> Any:
        return t[i : i + chunk] if isinstance(t, Tensor) else t

    parts = [
        score_responses(model, input_ids[i : i + chunk], attention_mask[i : i + chunk], prompt_len, rows(temperature, i),
                        features, params, want_entropy=want_entropy, mask=rows(mask, i))
        for i in range(0, input_ids.shape[0], chunk)
    ]
    model.train(was_training)
    extras = {name: torch.cat([p[2][name] for p in parts]) for name, _ in features}
    entropy = torch.cat([p[1] for p in parts if p[1] is not None]) if want_entropy else None
    return torch.cat([p[0] for p in parts]), entropy, extras
