"""Token-by-token sampling with a KV cache, for strategies that change the distribution at every token.

`generate` (hf.py) samples with one temperature and Hugging Face's own truncation. Strategies such as HAPO's
adaptive temperature or Top-H decoding decide, per row and per token, the temperature and the set of tokens that
may be sampled, so they run this loop on the policy model instead: one forward pass over the left-padded prompts,
then one cached forward pass per generated token. At each step a `StepRule` sees the raw next-token logits
`z` [n, V] and returns the temperature tau [n] and optionally a keep mask [n, V]; the token is drawn from

    q = softmax(truncate(z / tau))      truncate = the rule's keep mask, then `sampling.top_k` / `top_p`

(top-k / top-p as Hugging Face's warpers, after the rule). `sampling_logp` is log q(token), the exact
log-prob of what was sampled, and `temperature` records tau per token. The trainer recomputes
log softmax(z / tau)(token) from a full forward pass: equal to `sampling_logp` up to fp32 rounding when nothing was
truncated; for a token drawn from a truncated set it is smaller by -log(mass of the kept set under softmax(z / tau)),
because the trainer does not replay the truncation.

Rows stop at their first EOS; the loop stops when every row has, or after `sampling.max_new_tokens` tokens.
Randomness is the global torch RNG (as `generate`), so `torch.manual_seed` makes a run repeatable.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from entropy_rl.rollout.base import Prompts, RolloutBatch, SamplingParams
from entropy_rl.rollout.hf import encode_prompts, response_mask_from_ids


@dataclass(frozen=True)
class StepChoice:
    """What a `StepRule` decides for one step.

    Attributes:
        temperature: [n] fp32 temperature of each row (> 0).
        keep: [n, V] bool, tokens that may be sampled, or None (all).
    """

    temperature: Tensor
    keep: Tensor | None = None


StepRule = Callable[[Tensor, int], StepChoice]
"""(raw next-token logits [n, V] fp32, step index t) -> StepChoice for the n rows of the batch."""


def uniform_rule(temperature: float) -> StepRule:
    """The rule of plain sampling: the same temperature for every row and token, nothing truncated."""

    def rule(logits: Tensor, t: int) -> StepChoice:
        return StepChoice(torch.full((logits.shape[0],), temperature, dtype=torch.float32, device=logits.device))

    return rule


def step_distribution(logits: Tensor, choice: StepChoice, sampling: SamplingParams) -> Tensor:
    """Log-probs [n, V] fp32 of the distribution sampled at one step: softmax of the tempered logits after the
    rule's keep mask and top-k / top-p (-inf on excluded tokens).

    Args:
        logits: [n, V] raw next-token logits.
        choice: the rule's temperature [n] and keep mask [n, V] or None.
        sampling: top_k / top_p applied after the keep mask (0 / 1 disable).

    Returns:
        [n, V] fp32 log-probs.
    """
    scores = logits.float() / choice.temperature.float().unsqueeze(-1)  # [n, V]
    if choice.keep is not None:
        scores = scores.masked_fill(~choice.keep, float("-inf"))
    if sampling.top_k > 0:
        scores = TopKLogitsWarper(top_k=sampling.top_k)(None, scores)
    if sampling.top_p < 1.0:
        scores = TopPLogitsWarper(top_p=sampling.top_p)(None, scores)
    return torch.log_softmax(scores, dim=-1)


def cached_forward(
    model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any
) -> tuple[Tensor, Any]:
    """One forward pass with the KV cache: next-token logits [B, V] fp32 and the updated cache.

    Args:
        model: causal LM.
        input_ids: [B, L] the new tokens (the whole left-padded prompt first, then one token per step).
        attention_mask: [B, P + t] 1 on real tokens, cached ones included.
        position_ids: [B, L] positions of the new tokens.
        cache: the cache the previous call returned, or None on the first call.

    Returns:
        (logits [B, V] fp32 of the last position, the cache to pass next).
    """
    # transformers 5 renamed `past_key_values` to `cache` (the old name is deprecated); accept both
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    extra = {} if cache is None else {name: cache}
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                logits_to_keep=1, **extra)
    new_cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    return out.logits[:, -1].float(), new_cache


@torch.no_grad()
def sample_stepwise(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    sampling: SamplingParams,
    rule: StepRule | None = None,
) -> RolloutBatch:
    """Sample one response per prompt, token by token with a KV cache, under a per-step `rule`.

    Args:
        model: causal LM (its current mode is restored afterwards).
        tokenizer: tokenizer with pad and eos tokens.
        prompts: B prompt strings or token-id lists (each row its own group).
        sampling: max_new_tokens, top_k, top_p; its temperature is the default rule's (`uniform_rule`).
        rule: per-step temperature and keep mask; None samples like `generate` at `sampling.temperature`.

    Returns:
        RolloutBatch: width T = max_new_tokens with the exact per-token `sampling_logp` and `temperature`
        (0 and `sampling.temperature` off the mask, respectively).
    """
    rule = rule or uniform_rule(sampling.temperature)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    B, T = prompt_ids.shape[0], sampling.max_new_tokens
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    tokens = torch.full((B, T), pad, dtype=torch.long, device=device)
    logp = torch.zeros(B, T, dtype=torch.float32, device=device)
    temperature = torch.full((B, T), sampling.temperature, dtype=torch.float32, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    attn = prompt_mask.long()
    positions = (attn.cumsum(-1) - 1).clamp_min(0)  # as the trainer's forward: left padding does not shift
    logits, cache = cached_forward(model, prompt_ids, attn, positions, None)
    next_pos = positions[:, -1:] + 1  # [B, 1]
    for t in range(T):
        choice = rule(logits, t)
        step_logp = step_distribution(logits, choice, sampling)  # [B, V]
        token = torch.multinomial(step_logp.exp(), 1).squeeze(-1)  # [B]
        token = torch.where(done, torch.full_like(token, pad), token)
        tokens[:, t] = token
        logp[:, t] = torch.where(done, 0.0, step_logp.gather(-1, token.unsqueeze(-1)).squeeze(-1))
        temperature[:, t] = torch.where(done, temperature[:, t], choice.temperature.float())
        done = done | (token == eos)
        if bool(done.all()) or t == T - 1:
            break
        attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype, device=device)], dim=1)
        logits, cache = cached_forward(model, token.unsqueeze(-1), attn, next_pos, cache)
        next_pos = next_pos + 1
    model.train(was_training)
    mask, truncated = response_mask_from_ids(tokens, eos)
    texts = [t.strip() for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    return RolloutBatch(prompt_ids, prompt_mask, tokens, mask, logp, texts, truncated,
                        group_index=torch.arange(B, device=device), temperature=temperature)
