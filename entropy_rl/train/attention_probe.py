"""Attention-entropy monitor: every `train.attention_entropy_every` steps, the mean entropy of each layer's and
head's attention distribution over the response queries of the rollout batch, before the update.

The queries are the positions whose outputs give the response tokens' distributions (P - 1 + t for response token
t with mask 1): the same tokens `entropy/token_mean` averages over, so the two can be read side by side.

Attention weights exist only under eager attention (SDPA and flash kernels never form them), so the pass switches
the model to eager attention (`entropy_probe.eager_attention`, restored afterwards) and runs one extra no-grad
forward, chunk by chunk. Forward hooks on each layer's `self_attn` module reduce its weights [b, H, L, L] to [H]
at once, so at most one layer's weights of one chunk are alive; the model's own `output_attentions`, which keeps
every layer's, is not used. The pass draws no random numbers (eval mode, no dropout): training is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from entropy_rl.metrics.attention import head_entropy_sum
from entropy_rl.train.entropy_probe import eager_attention
from entropy_rl.train.forward import position_ids_from_mask

__all__ = ["ATTENTION_FILE", "attention_modules", "attention_entropy", "attention_metrics"]

ATTENTION_FILE = "attention_entropy.jsonl"  # RUN_DIR/<this>: {"step": s, "entropy": [n_layers][n_heads] nats} per line


def attention_modules(model: PreTrainedModel) -> list[torch.nn.Module]:
    """Each decoder layer's self-attention module, in layer order (modules named `...self_attn`).

    Raises:
        RuntimeError: the model has none (an architecture this monitor does not know).
    """
    mods = [m for name, m in model.named_modules() if name.split(".")[-1] == "self_attn"]
    if not mods:
        raise RuntimeError(f"train.attention_entropy_every: {type(model).__name__} has no `self_attn` modules; the "
                           "attention-entropy monitor supports Llama-style decoders (Qwen2, Llama, Mistral, ...)")
    return mods


@torch.no_grad()
def attention_entropy(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, prompt_len: int,
                      mask: Tensor, chunk: int) -> Tensor:
    """Mean attention entropy per layer and head over the response queries of a batch, fp32, nats.

    Args:
        model: causal LM with `self_attn` modules returning (output, weights) under eager attention.
        input_ids: [B, P + T] prompt then response ids.
        attention_mask: [B, P + T] 1 on real tokens.
        prompt_len: P.
        mask: [B, T] response mask: query P - 1 + t counts where mask[:, t] == 1.
        chunk: sequences per forward (0: all).

    Returns:
        [n_layers, n_heads]: each entry the token mean over every selected query of the batch (NaN when the mask
        selects none).

    Raises:
        RuntimeError: an attention module returned no weights.
    """
    mods = attention_modules(model)
    B, L = input_ids.shape
    queries = torch.zeros(B, L, dtype=torch.bool, device=input_ids.device)  # [B, P + T]
    queries[:, prompt_len - 1 : L - 1] = mask.bool()
    sums: list[Tensor | None] = [None] * len(mods)  # per layer: [H] entropy summed over the selected queries
    current: dict[str, Tensor] = {}

    def hook(i: int):
        def fn(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if not isinstance(weights, Tensor) or weights.ndim != 4:
                raise RuntimeError(f"layer {i}'s attention returned no weights under eager attention; the "
                                   "attention-entropy monitor cannot read this model")
            part = head_entropy_sum(weights, current["queries"])
            sums[i] = part if sums[i] is None else sums[i] + part
        return fn

    was_training = model.training
    model.eval()
    handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(mods)]
    try:
        with eager_attention(model):
            step = chunk or B
            for s in range(0, B, step):
                rows = slice(s, s + step)
                current["queries"] = queries[rows]
                model(input_ids=input_ids[rows], attention_mask=attention_mask[rows],
                      position_ids=position_ids_from_mask(attention_mask[rows]))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return torch.stack([t for t in sums if t is not None]).float() / queries.sum()


def attention_metrics(per_head: Tensor) -> dict[str, float]:
    """`attention/entropy_l{i}`: the mean over heads of layer i (nats), from the [n_layers, n_heads] matrix."""
    return {f"attention/entropy_l{i}": float(row.mean()) for i, row in enumerate(per_head)}
