"""Batched sampling with Hugging Face `generate`: left-padded prompts in, right-padded responses out.

The response of each row runs up to and including its first EOS (the EOS token is trained, as in verl);
positions after it are padding with mask 0. Sampling log-probs come from the processed scores of
`generate` (after temperature / top-k / top-p), so they are the log-probs of the distribution actually
sampled from; the trainer recomputes `old_logp` in its own pre-update pass and logs the mismatch. They are
taken one step at a time from `generate`'s per-step scores (which `generate` itself keeps, T x [B, V] fp32),
never stacked into a [B, T, V] tensor.

Groups share their prompt's prefill (`share_prefill`): the G rows of a group start from the same prompt, so the
KV cache of the prompt is computed once per prompt and repeated to the group's rows (`batch_repeat_interleave`
of the model's cache) before `generate` decodes, instead of prefilling all G copies. Prefill draws no random
numbers, so the rows sample the same tokens from the same distributions as with per-row prefill, up to the float
rounding of a different batch shape (the same tokens on every CPU shape in docs/LOG.md, 2026-11-30).

The KV cache is Hugging Face's dynamic one (grown by concatenation every step) or, with
`cache_implementation="static"`, a `StaticCache` allocated once for prompt + max_new_tokens positions and written
in place (attention then runs over all of them, masked). The same samples either way; on CPU static pays off
only when prompt + response are long (docs/LOG.md).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Mapping

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


# keyword arguments of `model.generate` that `generate_chunk` sets itself (callers may not override them)
RESERVED_GENERATE_KWARGS = frozenset({"input_ids", "attention_mask", "do_sample", "temperature", "top_p", "top_k",
                                      "max_new_tokens", "pad_token_id", "eos_token_id", "output_scores",
                                      "return_dict_in_generate", "cache", "past_key_values", "cache_implementation"})
CACHE_IMPLEMENTATIONS = ("dynamic", "static")


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    sampling: SamplingParams,
    batch_size: int | None = None,
    *,
    group_size: int = 1,
    share_prefill: bool = False,
    cache_implementation: str = "dynamic",
    generate_kwargs: Mapping[str, Any] | None = None,
) -> RolloutBatch:
    """Sample `group_size` responses per prompt, rows of a group contiguous (group_index = row // group_size;
    with group_size 1 each row is its own group). Global torch RNG.

    Args:
        model: causal LM (its current mode is restored afterwards).
        tokenizer: tokenizer with pad and eos tokens.
        prompts: N prompt strings or token-id lists; B = N * group_size rows.
        sampling: temperature / top-p / top-k / length.
        batch_size: generate in chunks of at most this many rows, whole groups only (at least one group per
            chunk); None = all at once.
        group_size: responses per prompt (>= 1).
        share_prefill: prefill each prompt once and repeat its KV cache to the group's rows (module docstring);
            the same samples as per-row prefill, less prefill compute when group_size > 1.
        cache_implementation: "dynamic" or "static" KV cache (module docstring); the same samples either way.
        generate_kwargs: further keyword arguments of `model.generate` (e.g. `compile_config`; for benchmarks
            and experiments), none of RESERVED_GENERATE_KWARGS; they may change what is sampled.

    Returns:
        RolloutBatch with right-padded responses of width T = max_new_tokens.

    Raises:
        ValueError: group_size < 1, batch_size < 1, an unknown cache_implementation, or a reserved key in
            generate_kwargs.
    """
    if group_size < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"group_size and batch_size must be >= 1, got {group_size}, {batch_size}")
    if cache_implementation not in CACHE_IMPLEMENTATIONS:
        raise ValueError(f"cache_implementation must be one of {', '.join(CACHE_IMPLEMENTATIONS)}, "
                         f"got {cache_implementation!r}")
    reserved = sorted(RESERVED_GENERATE_KWARGS & set(generate_kwargs or {}))
    if reserved:
        raise ValueError(f"generate_kwargs may not set {', '.join(reserved)}: generate sets them itself")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_chunk = len(prompts) if not batch_size else max(1, batch_size // group_size)  # prompts per chunk
    chunks = [prompts[i : i + per_chunk] for i in range(0, len(prompts), max(1, per_chunk))] or [prompts]
    parts = [generate_chunk(model, tokenizer, chunk, sampling, device, group_size, share_prefill, cache_implementation,
                            generate_kwargs) for chunk in chunks]
    model.train(was_training)
    if len(parts) == 1:
        return parts[0]
    return concat_rollouts(parts, tokenizer.pad_token_id)


def cache_kwarg(model: PreTrainedModel) -> str:
    """The name of the KV-cache argument of `model.forward` and `generate` (transformers 5 renamed
    `past_key_values` to `cache`)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def shared_prefill(
    model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int, static_len: int | None = None
) -> Any:
    """KV cache of every prompt token but the last, computed once per prompt, each row repeated `repeats` times.

    `generate` given this cache and the repeated prompts feeds only the last prompt token (it needs at least one
    uncached token) and decodes from there. Positions count real tokens only, as in `generate`.

    Args:
        model: causal LM in eval mode.
        prompt_ids: [N, P] left-padded prompts, P >= 2.
        prompt_mask: [N, P] 1 on prompt tokens.
        repeats: rows per prompt (G).
        static_len: None for the model's dynamic cache; else the positions of a `StaticCache` to copy it into.

    Returns:
        The cache, batch N * G (row i * G + g holds prompt i), length P - 1; None when a static cache was asked
        for and the model's cache has layers other than full attention (sliding windows, linear attention),
        whose states this copy would not carry over.
    """
    ids, mask = prompt_ids[:, :-1], prompt_mask[:, :-1]  # [N, P - 1]
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)  # left padding does not shift positions
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache.batch_repeat_interleave(repeats)
    if static_len is None:
        return cache
    from transformers.cache_utils import DynamicLayer, StaticCache

    if not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
        return None
    static = StaticCache(config=model.config, max_cache_len=static_len)
    for i, layer in enumerate(cache.layers):
        static.update(layer.keys, layer.values, i)  # [N * G, kv heads, P - 1, head dim] into positions 0 .. P - 2
    return static


def generate_chunk(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    sampling: SamplingParams,
    device: torch.device,
    group_size: int = 1,
    share_prefill: bool = False,
    cache_implementation: str = "dynamic",
    generate_kwargs: Mapping[str, Any] | None = None,
) -> RolloutBatch:
    """`generate` on one chunk of prompts (group_size rows each); pads the response width to max_new_tokens."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)  # [N, P]
    extra = dict(generate_kwargs or {})
    static = cache_implementation == "static"
    cache = None
    if share_prefill and group_size > 1 and prompt_ids.shape[1] > 1:
        static_len = prompt_ids.shape[1] + sampling.max_new_tokens if static else None
        cache = shared_prefill(model, prompt_ids, prompt_mask, group_size, static_len)
    if cache is not None:
        extra[cache_kwarg(model)] = cache
    elif static:
        extra["cache_implementation"] = "static"  # per-row prefill into a static cache made by `generate`
    if group_size > 1:
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(group_size, 0), prompt_mask.repeat_interleave(group_size, 0)
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
        **extra,
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
                        group_index=contiguous_groups(len(prompts), group_size, device),
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
    """Settings of the `hf` engine (it generates the whole batch in one `generate` call).

    Attributes:
        share_prefill: prefill each prompt once per group and repeat its KV cache to the group's G rows (the
            module docstring); False prefills all G copies. The same samples either way; sharing is faster when
            the prompt is a large part of the work (docs/LOG.md, 2026-11-30).
        cache_implementation: "dynamic" (Hugging Face's default, grown each step) or "static" (allocated once for
            prompt + max_new_tokens, written in place). The same samples either way; static is faster on CPU
            only when prompt + response are long (docs/LOG.md, 2026-11-30). With share_prefill, a model with
            sliding-window or linear-attention layers prefills every row instead (the shared copy is only made
            for full-attention caches).
    """

    share_prefill: bool = True
    cache_implementation: str = "dynamic"

    def __post_init__(self) -> None:
        if self.cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache_implementation must be one of {', '.join(CACHE_IMPLEMENTATIONS)}, "
                             f"got {self.cache_implementation!r}")


class HfEngine:
    """`rollout.engine: hf`: samples with `model.generate` from the training model itself.

    It holds no copy of the weights, so `sync_weights` only re-points it at the model it is given.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, params: HfParams | None = None) -> None:
        self.model, self.tokenizer, self.params = model, tokenizer, params or HfParams()

    def generate(self, prompts: Prompts, sampling: SamplingParams, group_size: int = 1) -> RolloutBatch:
        """`group_size` responses per prompt, rows of a group contiguous; group_index = row // group_size."""
        return generate(self.model, self.tokenizer, prompts, sampling, group_size=group_size,
                        share_prefill=self.params.share_prefill, cache_implementation=self.params.cache_implementation)

    def release(self) -> None:
        """Nothing to free: the engine holds no memory of its own between calls."""

    def sync_weights(self, model: PreTrainedModel) -> None:
        """Nothing to copy: the engine samples from the training model."""
        self.model = model


ENGINES.register("hf", HfParams, doc="Hugging Face `generate` on the training model (CPU or one GPU).")(HfEngine)
