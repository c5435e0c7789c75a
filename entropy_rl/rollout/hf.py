"""Batched sampling with Hugging Face `generate`: left-padded prompts in, right-padded responses out.

The response of each row runs up to and including its first EOS (the EOS token is trained, as in verl);
positions after it are padding with mask 0. Sampling log-probs come from the processed scores of
`generate` (after temperature / top-k / top-p), so they are the log-probs of the distribution actually
sampled from; the trainer recomputes `old_logp` in its own pre-update pass and logs the mismatch. They are
taken one step at a time from `generate`'s per-step scores (which `generate` itself keeps, T x [B, V] fp32),
never stacked into a [B, T, V] tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings.

    Attributes:
        temperature: softmax temperature tau (> 0); the entropy metric uses the same tau.
        top_p: nucleus mass in (0, 1]; 1 disables.
        top_k: keep the k most likely tokens; 0 disables.
        max_new_tokens: response length cap T.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"top_k must be >= 0 and max_new_tokens >= 1, got {self.top_k}, {self.max_new_tokens}")


@dataclass(frozen=True)
class RolloutBatch:
    """One batch of sampled responses.

    Attributes:
        prompt_ids: [B, P] int64, left-padded.
        prompt_mask: [B, P] 1 on prompt tokens.
        response_ids: [B, T] int64, right-padded after the first EOS.
        response_mask: [B, T] float, 1 on response tokens up to and including EOS.
        sampling_logp: [B, T] fp32 log-probs of the sampled tokens under the sampling distribution (0 off mask).
        texts: decoded completions without special tokens (untrusted text: parse, never evaluate).
        truncated: [B] bool, no EOS within max_new_tokens.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    sampling_logp: Tensor
    texts: list[str]
    truncated: Tensor

    @property
    def input_ids(self) -> Tensor:
        """[B, P + T] prompt then response."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """[B, P + T] 1 on real tokens."""
        return torch.cat([self.prompt_mask, self.response_mask.to(self.prompt_mask.dtype)], dim=1)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
    """Tokenise prompts, left-padded. Returns ids [B, P] and mask [B, P]."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def response_mask_from_ids(response_ids: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """Mask [B, T] covering tokens up to and including the first EOS, and truncated [B] (no EOS).

    Args:
        response_ids: [B, T] generated ids (after the prompt).
        eos_id: end-of-sequence id.
    """
    is_eos = response_ids == eos_id  # [B, T]
    # tokens strictly after the first EOS: cumulative count of EOS before this position > 0
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (eos_before == 0).float()
    truncated = ~is_eos.any(dim=1)
    return mask, truncated


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    sampling: SamplingParams,
    batch_size: int | None = None,
) -> RolloutBatch:
    """Sample one response per prompt (repeat prompts for groups). Uses the global torch RNG.

    Args:
        model: causal LM (its current mode is restored afterwards).
        tokenizer: tokenizer with pad and eos tokens.
        prompts: B prompt strings.
        sampling: temperature / top-p / top-k / length.
        batch_size: generate in chunks of this many prompts (None = all at once).

    Returns:
        RolloutBatch with right-padded responses of width T = max_new_tokens.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = [prompts] if not batch_size else [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    parts = [generate_chunk(model, tokenizer, chunk, sampling, device) for chunk in chunks]
    model.train(was_training)
    if len(parts) == 1:
        return parts[0]
    return concat_rollouts(parts, tokenizer.pad_token_id)


def generate_chunk(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], sampling: SamplingParams, device: torch.device
) -> RolloutBatch:
    """`generate` on one chunk; pads the response width to max_new_tokens."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        max_new_tokens=sampling.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    P, T = prompt_ids.shape[1], sampling.max_new_tokens
    response_ids = out.sequences[:, P:]  # [B, T'] with T' <= T
    logp = sampled_logprobs(out.scores, response_ids)  # [B, T']
    pad = T - response_ids.shape[1]
    if pad > 0:
        response_ids = torch.nn.functional.pad(response_ids, (0, pad), value=tokenizer.pad_token_id)
        logp = torch.nn.functional.pad(logp, (0, pad), value=0.0)
    mask, truncated = response_mask_from_ids(response_ids, tokenizer.eos_token_id)
    response_ids = torch.where(mask.bool(), response_ids, torch.full_like(response_ids, tokenizer.pad_token_id))
    logp = torch.where(mask.bool(), logp, torch.zeros_like(logp))
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return RolloutBatch(prompt_ids, prompt_mask, response_ids, mask, logp, [t.strip() for t in texts], truncated)


def sampled_logprobs(scores: tuple[Tensor, ...], response_ids: Tensor) -> Tensor:
    """Log-prob of each sampled token under its step's processed scores, one step at a time (no [B, T, V] stack).

    Args:
        scores: T' >= 1 per-step processed logits [B, V] from `generate` (after temperature / top-k / top-p).
        response_ids: [B, T'] the tokens sampled at those steps.

    Returns:
        [B, T'] fp32 log-probs.
    """
    steps = [
        torch.log_softmax(s.float(), dim=-1).gather(-1, response_ids[:, t : t + 1]).squeeze(-1)  # [B]
        for t, s in enumerate(scores)
    ]
    return torch.stack(steps, dim=1)


def concat_rollouts(parts: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Concatenate chunks, re-left-padding prompts to a common width."""
    width = max(p.prompt_ids.shape[1] for p in parts)

    def left_pad(t: Tensor, value: int) -> Tensor:
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    return RolloutBatch(
        prompt_ids=torch.cat([left_pad(p.prompt_ids, pad_id) for p in parts]),
        prompt_mask=torch.cat([left_pad(p.prompt_mask, 0) for p in parts]),
        response_ids=torch.cat([p.response_ids for p in parts]),
        response_mask=torch.cat([p.response_mask for p in parts]),
        sampling_logp=torch.cat([p.sampling_logp for p in parts]),
        texts=[t for p in parts for t in p.texts],
        truncated=torch.cat([p.truncated for p in parts]),
    )
