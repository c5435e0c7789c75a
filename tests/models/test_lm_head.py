"""Final hidden states + LM head of HF causal LMs: they reproduce the model's logits (and token_stats on them), the
tied weight is the input embedding, and models that transform their logits are refused by config or by check."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, CohereConfig, Gemma2Config, GraniteConfig, Qwen2Config

from entropy_rl.core.token_stats import token_stats
from entropy_rl.models.lm_head import LMHead, check_lm_head, final_hidden_states, plain_lm_head

SMALL = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
         "num_key_value_heads": 1, "intermediate_size": 32, "max_position_embeddings": 32}


def build(config_cls: type, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config_cls(**SMALL, **extra))


@pytest.mark.parametrize("tied", [True, False])
def test_hidden_and_head_reproduce_the_logits_and_token_stats(tied: bool) -> None:
    model = build(Qwen2Config, tie_word_embeddings=tied)
    head = plain_lm_head(model)
    assert (head.weight is model.get_input_embeddings().weight) == tied and head.bias is None
    check_lm_head(model, head)
    ids = torch.randint(40, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    hidden = final_hidden_states(model, input_ids=ids, attention_mask=mask)  # [2, 9, 16]
    logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(hidden @ head.weight.T, logits)
    x, tok = (hidden[:, :-1], ids[:, 1:])
    kernel = token_stats(x, tok, 0.7, lm_head_weight=head.weight, chunk_tokens=4, chunk_vocab=16)
    ref = token_stats(logits[:, :-1], tok, 0.7)
    torch.testing.assert_close(kernel.logp, ref.logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernel.entropy, ref.entropy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config_cls,extra,name", [
    (Gemma2Config, {"head_dim": 8}, "final_logit_softcapping=30.0"),
    (CohereConfig, {}, "logit_scale=0.0625"),
    (GraniteConfig, {"logits_scaling": 4.0}, "logits_scaling=4.0"),
])
def test_models_that_transform_their_logits_are_refused(config_cls: type, extra: dict, name: str) -> None:
    model = build(config_cls, **extra)
    with pytest.raises(ValueError, match=name):
        plain_lm_head(model)


def test_check_catches_a_transform_the_config_list_does_not_name() -> None:
    model = build(GraniteConfig, logits_scaling=4.0)  # past plain_lm_head, the numbers still tell
    head = model.get_output_embeddings()
    with pytest.raises(ValueError, match="differ from hidden @ lm_head"):
        check_lm_head(model, LMHead(head.weight, head.bias))
    assert model.training  # restored
