"""Policy forward passes over prompt + response: per-token log-probs and entropies of the response.

The statistics come from `core.token_stats` on the response's final hidden states and the LM-head weight (the
`lm_head_stats` kernel: no [B, T, V] logits, no logits for prompt positions) whenever the model's logits are
exactly `lm_head(last_hidden_state)`: `plain_lm_head` by config, then `check_lm_head` on a few tokens, once per
model. Models that transform their logits (soft-capping, scaling) are scored from their logits.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from entropy_rl.core.policy_loss import FeatureFn, PolicyLossMethod
from entropy_rl.core.token_stats import ChunkFeature, TokenStats, WantEntropy, token_stats
from entropy_rl.models.lm_head import LMHead, check_lm_head, final_hidden_states, plain_lm_head

# model -> whether hidden states + its LM head give its logits (checked once: the check is one small forward)
_HEAD_CHECKED: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counting real tokens only, so left padding does not shift them (as `generate` does). [B, L]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def response_logits(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> Tensor:
    """Logits predicting each response token: [B, T, V] for input [B, P + T] with P = prompt_len."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask))
    return out.logits[:, prompt_len - 1 : -1]  # position t-1 predicts token t


def scoring_head(model: PreTrainedModel) -> LMHead | None:
    """The model's LM head when its logits are exactly hidden @ weight.T + bias, else None (score from logits).

    Decided once per model object (`plain_lm_head` by config, then `check_lm_head` on 8 tokens); the returned head
    holds the model's own parameters, so it follows their updates.
    """
    ok = _HEAD_CHECKED.get(model)
    if ok is None:
        try:
            check_lm_head(model, plain_lm_head(model))
            ok = True
        except ValueError:
            ok = False
        _HEAD_CHECKED[model] = ok
    return plain_lm_head(model) if ok else None


def response_hidden(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> Tensor:
    """Final hidden states predicting each response token: [B, T, d] for input [B, P + T] with P = prompt_len."""
    hidden = final_hidden_states(model, input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids_from_mask(attention_mask))
    return hidden[:, prompt_len - 1 : -1]  # position t-1 predicts token t


def response_scores(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, prompt_len: int,
                    use_kernel: bool = True) -> tuple[Tensor, LMHead | None]:
    """What `token_stats` scores the response from: hidden states [B, T, d] and the LM head when `scoring_head`
    allows it (and `use_kernel`), else the logits [B, T, V] and None."""
    head = scoring_head(model) if use_kernel else None
    if head is None:
        return response_logits(model, input_ids, attention_mask, prompt_len), None
    return response_hidden(model, input_ids, attention_mask, prompt_len), head


def stats_of(x: Tensor, head: LMHead | None, tokens: Tensor, temperature: float | Tensor, **kwargs: Any) -> TokenStats:
    """`token_stats` of what `response_scores` returned: hidden states + head, or logits (head None)."""
    if head is None:
        return token_stats(x, tokens, temperature, **kwargs)
    return token_stats(x, tokens, temperature, lm_head_weight=head.weight, lm_head_bias=head.bias, **kwargs)


def logits_of(x: Tensor, head: LMHead | None) -> Tensor:
    """The logits [B, T, V] of what `response_scores` returned (x itself when head is None)."""
    return x if head is None else torch.nn.functional.linear(x, head.weight, head.bias)


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
    use_kernel: bool = True,
) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
    """Tempered log-probs, full-vocab entropies and method features of the response tokens, fp32 [B, T] each.

    Runs with whatever grad mode the caller set; logp and features carry gradient when grad is enabled, the
    entropy as `want_entropy` says (False gives None: the update pass asks for it only when the method reads
    H_cur). The statistics come from `token_stats`, chunk by chunk, on hidden states + LM head where
    `scoring_head` allows (equal to the logits path to fp32 rounding), else on the model's logits.

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
        use_kernel: False always scores from the model's logits.

    Returns:
        logp [B, T], entropy [B, T] or None, {feature name: [B, T]}.
    """
    x, head = response_scores(model, input_ids, attention_mask, prompt_len, use_kernel)
    stats = stats_of(x, head, input_ids[:, prompt_len:], temperature, want_entropy=want_entropy,
                     features=bind_features(features, params), mask=mask)
    return stats.logp, stats.entropy, stats.features


def rows_of(value: Any, start: int, stop: int) -> Any:
    """Rows start:stop of a per-row tensor ([B, ...], e.g. a [B, T] temperature or mask); a float or None as it is."""
    return value[start:stop] if isinstance(value, Tensor) else value


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
    entropy_grad_mask: Tensor | None = None,
    use_kernel: bool = True,
) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
    """`score_responses` over the batch in eval mode, `chunk` sequences at a time; returns detached logp, entropy,
    extras.

    Without `entropy_grad_mask` it runs without gradient. With it ([B, T], nonzero only where `mask` is), it also
    accumulates into the parameters' `.grad` the gradient of the entropy's token mean over that mask,
    sum_t m_t H_t / sum_t m_t, one backward per chunk (the dynamics probe's gradient pass fused with this
    forward); the returned values are those of the no-grad pass.

    Raises:
        ValueError: `entropy_grad_mask` is nonzero off `mask`, or given with want_entropy=False.
    """
    if entropy_grad_mask is not None:
        if not want_entropy:
            raise ValueError("entropy_grad_mask needs the entropy: want_entropy must be True")
        if mask is not None and bool(((entropy_grad_mask != 0) & (mask == 0)).any()):
            raise ValueError("entropy_grad_mask is nonzero on tokens the scoring mask skips")
    was_training = model.training
    model.eval()  # no dropout in the scoring pass (tiny models have none; real checkpoints may)
    chunk = chunk or input_ids.shape[0]
    n_grad = None if entropy_grad_mask is None else entropy_grad_mask.sum().clamp_min(1.0)

    parts = []
    for i in range(0, input_ids.shape[0], chunk):
        with torch.set_grad_enabled(n_grad is not None):
            logp, ent, extras = score_responses(
                model, input_ids[i : i + chunk], attention_mask[i : i + chunk], prompt_len, rows_of(temperature, i, i + chunk),
                features, params, want_entropy="grad" if n_grad is not None else want_entropy, mask=rows_of(mask, i, i + chunk),
                use_kernel=use_kernel)
            if n_grad is not None and ent is not None:
                ((ent * rows_of(entropy_grad_mask, i, i + chunk)).sum() / n_grad).backward()
        parts.append((logp.detach(), None if ent is None else ent.detach(), {k: v.detach() for k, v in extras.items()}))
    model.train(was_training)
    extras = {name: torch.cat([p[2][name] for p in parts]) for name, _ in features}
    entropy = torch.cat([p[1] for p in parts if p[1] is not None]) if want_entropy else None
    return torch.cat([p[0] for p in parts]), entropy, extras
