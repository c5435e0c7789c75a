"""Batched sampling with Hugging Face `generate`: left-padded prompts in, right-padded responses out.

The response of each row runs up to and including its first EOS (the EOS token is trained, as in verl);
positions after it are padding with mask 0. Sampling log-probs come from the processed scores of
`generate` (after temperature / top-k / top-p), so they are the log-probs of the distribution actually
sampled from; the trainer recomputes `old_logp` in its own pre-update pass and logs the mismatch. They are
taken one step at a time from `generate`'s per-step scores (which `generate` itself keeps, T x [B, V] fp32),
never stacked into a [B, T, V] tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.rollout.base import ENGINES, Prompts, RolloutBatch, SamplingParams, contiguous_groups
from entropy_rl.tasks.chat import format_prompt


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Prompts, device: torch.device) -> tuple[Tensor, Tensor]:
    """Tokenise prompt strings (chat prompts rendered by `format_prompt`; token-id prompts are taken as they
    are), left-padded. Returns ids [B, P], mask [B, P]."""
    if prompts and not isinstance(prompts[0], str):
        width = max(len(ids) for ids in prompts)
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, row in enumerate(prompts):
            if len(row):
                ids[i, width - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
                mask[i, width - len(row):] = 1
        return ids.to(device), mask.to(device)
    tokenizer.padding_side = "left"
    enc = tokenizer([format_prompt(tokenizer, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
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
    prompts: Prompts,
    sampling: SamplingParams,
    batch_size: int | None = None,
) -> RolloutBatch:
    """Sample one response per prompt (repeat prompts for groups; each row is its own group). Global torch RNG.

    Args:
        model: causal LM (its current mode is restored afterwards).
        tokenizer: tokenizer with pad and eos tokens.
        prompts: B prompt strings or token-id lists.
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
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Prompts, sampling: SamplingParams, device: torch.device
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
    B = response_ids.shape[0]
    return RolloutBatch(prompt_ids, prompt_mask, response_ids, mask, logp, [t.strip() for t in texts], truncated,
                        group_index=torch.arange(B, device=device),
                        temperature=torch.full((B, T), sampling.temperature, dtype=torch.float32, device=device))


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
    offsets = [0]
    for p in parts[:-1]:
        offsets.append(offsets[-1] + int(p.group_index.max()) + 1 if p.group_index.numel() else offsets[-1])

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
        group_index=torch.cat([p.group_index + offset for p, offset in zip(parts, offsets)]),
        temperature=torch.cat([p.temperature for p in parts]),
    )


@dataclass(frozen=True)
class HfParams:
    """Settings of the `hf` engine (none yet: it generates the whole batch in one `generate` call)."""


class HfEngine:
    """`rollout.engine: hf`: samples with `model.generate` from the training model itself.

    It holds no copy of the weights, so `sync_weights` only re-points it at the model it is given.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, params: HfParams | None = None) -> None:
        self.model, self.tokenizer, self.params = model, tokenizer, params or HfParams()

    def generate(self, prompts: Prompts, sampling: SamplingParams, group_size: int = 1) -> RolloutBatch:
        """`group_size` responses per prompt, rows of a group contiguous; group_index = row // group_size."""
        rows = [p for p in prompts for _ in range(group_size)]
        batch = generate(self.model, self.tokenizer, rows, sampling)
        return replace(batch, group_index=contiguous_groups(len(prompts), group_size, batch.group_index.device))

    def release(self) -> None:
        """Nothing to free: the engine holds no memory of its own between calls."""

    def sync_weights(self, model: PreTrainedModel) -> None:
        """Nothing to copy: the engine samples from the training model."""
        self.model = model


ENGINES.register("hf", HfParams, doc="Hugging Face `generate` on the training model (CPU or one GPU).")(HfEngine)
