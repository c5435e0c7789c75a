"""Final hidden states and the LM head of a Hugging Face causal LM, for `core.token_stats` without [B, T, V] logits.

A causal LM's logits are `lm_head(last_hidden_state)` for most architectures (Qwen2/3, Llama, Mistral, GPT-2,
Phi with its bias, tied or untied embeddings). Some transform them afterwards (Gemma 2/3 soft-cap them, Cohere
and Granite scale them, Falcon-H1 multiplies them): `plain_lm_head` refuses those by config, and
`check_lm_head` compares the two on a few tokens for any architecture the list does not know.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

# config attribute -> the values under which it leaves the logits alone
LOGIT_TRANSFORMS: dict[str, tuple[float | None, ...]] = {
    "final_logit_softcapping": (None,),  # Gemma 2/3/3n/4: cap * tanh(z / cap)
    "logit_scale": (None, 1.0),  # Cohere, Cohere2: z * scale
    "logits_scaling": (None, 1.0),  # Granite: z / scaling
    "lm_head_multiplier": (None, 1.0),  # Falcon-H1: z * multiplier
}


@dataclass(frozen=True)
class LMHead:
    """The output projection: logits = hidden @ weight.T + bias.

    Attributes:
        weight: [V, d] (the input embedding itself when tied, so both gradients land in its one `.grad`).
        bias: [V] or None.
    """

    weight: Tensor
    bias: Tensor | None


def plain_lm_head(model: PreTrainedModel) -> LMHead:
    """The model's LM head, if its logits are exactly `lm_head(last_hidden_state)` as far as the config says.

    Args:
        model: a Hugging Face causal LM.

    Returns:
        LMHead with the head's own parameters (no copies).

    Raises:
        ValueError: the config sets a logit soft-cap or scale, or the head is not a plain linear layer.
    """
    cfg = model.config.get_text_config()
    for name, identity in LOGIT_TRANSFORMS.items():
        value = getattr(cfg, name, None)
        if value not in identity:
            raise ValueError(
                f"{type(model).__name__} transforms its logits ({name}={value}): hidden states + LM head would not "
                "give its distribution; score from the model's logits instead"
            )
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):  # a refusal like the others: one exception type for the caller
        raise ValueError(f"{type(model).__name__} has no linear LM head (got {type(head).__name__})")  # noqa: TRY004
    if model.base_model is model:
        raise ValueError(f"{type(model).__name__} is not a causal LM wrapping a base model")
    return LMHead(head.weight, head.bias)


def final_hidden_states(model: PreTrainedModel, **inputs: Tensor) -> Tensor:
    """The base model's last hidden state (after its final norm), the LM head's input: [B, L, d].

    Args:
        model: causal LM (its `base_model` is run, not the head).
        **inputs: forwarded to the base model (input_ids, attention_mask, position_ids, ...).

    Returns:
        [B, L, d] hidden states in the model's dtype, with the model's gradient mode.
    """
    return model.base_model(**inputs, use_cache=False).last_hidden_state


@torch.no_grad()
def check_lm_head(model: PreTrainedModel, head: LMHead, n_tokens: int = 8, rtol: float = 1e-3) -> None:
    """Compare the model's logits with hidden @ weight.T + bias on `n_tokens` ids, in eval mode; raise if they differ.

    Catches a logit transform that `plain_lm_head` does not know by name (a near-identity one, such as a soft-cap far
    above the logits of a fresh model, can still pass: the config list is the first line).

    Args:
        model: causal LM; its train/eval mode is restored afterwards.
        head: what `plain_lm_head` returned for it.
        n_tokens: length of the probe sequence (ids 0, 1, ... modulo V).
        rtol: allowed gap relative to the largest logit.

    Raises:
        ValueError: the largest difference exceeds rtol times the largest logit.
    """
    was_training = model.training
    model.eval()
    ids = torch.arange(n_tokens, device=head.weight.device).remainder(head.weight.shape[0]).unsqueeze(0)
    logits = model(input_ids=ids, use_cache=False).logits.float()
    mine = torch.nn.functional.linear(final_hidden_states(model, input_ids=ids), head.weight, head.bias).float()
    model.train(was_training)
    gap = (logits - mine).abs().max().item()
    if gap > rtol * logits.abs().max().item():
        raise ValueError(
            f"{type(model).__name__}'s logits differ from hidden @ lm_head by up to {gap:.3g}: it transforms them; "
            "score from the model's logits instead"
        )
