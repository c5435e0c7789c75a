"""Policy forward passes over prompt + response: per-token log-probs and entropies of the response."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from entropy_rl.core.entropy import token_entropy, token_logprobs
from entropy_rl.core.policy_loss import FeatureFn


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counting real tokens only, so left padding does not shift them (as `generate` does). [B, L]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def response_logits(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> Tensor:
    """Logits predicting each response token: [B, T, V] for input [B, P + T] with P = prompt_len."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask))
    return out.logits[:, prompt_len - 1 : -1]  # position t-1 predicts token t


Features = tuple[tuple[str, FeatureFn], ...]


def score_responses(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    temperature: float,
    features: Features = (),
    params: Any = None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Tempered log-probs, full-vocab entropies and method features of the response tokens, fp32 [B, T] each.

    Runs with whatever grad mode the caller set; everything carries gradient when grad is enabled.
    """
    logits = response_logits(model, input_ids, attention_mask, prompt_len)
    response_ids = input_ids[:, prompt_len:]
    logp = token_logprobs(logits, response_ids, temperature)
    entropy = token_entropy(logits, temperature)
    extras = {name: fn(logits, response_ids, temperature, params) for name, fn in features}
    return logp, entropy, extras


@torch.no_grad()
def score_in_chunks(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    temperature: float,
    chunk: int,
    features: Features = (),
    params: Any = None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """No-grad `score_responses` over the batch, `chunk` sequences at a time. Returns logp, entropy, extras."""
    was_training = model.training
    model.eval()  # no dropout in the scoring pass (tiny models have none; real checkpoints may)
    chunk = chunk or input_ids.shape[0]
    parts = [
        score_responses(model, input_ids[i : i + chunk], attention_mask[i : i + chunk], prompt_len, temperature, features, params)
        for i in range(0, input_ids.shape[0], chunk)
    ]
    model.train(was_training)
    extras = {name: torch.cat([p[2][name] for p in parts]) for name, _ in features}
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), extras
