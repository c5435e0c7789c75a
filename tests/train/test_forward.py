"""Scoring passes (train/forward.py): what the update pass computes of H_cur, masks and per-token temperature."""

from __future__ import annotations

import pytest
import torch

from entropy_rl.core.policy_loss import get_policy_loss
from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.train.forward import entropy_for_update, score_in_chunks, score_responses

P, T, B = 4, 5, 6


@pytest.fixture(scope="module")
def setup():
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                           intermediate_size=64, max_position_embeddings=32), tok, seed=0)
    ids = torch.randint(3, len(tok), (B, P + T), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    mask = torch.ones(B, T)
    mask[1, 3:] = 0
    return model, ids, attn, mask


@pytest.mark.parametrize("method,want", [("entropy_bonus", "grad"), ("entropy_controller", "grad"), ("epo", "grad"),
                                         ("top_entropy", "grad"), ("hapo", "nograd"), ("clip_cov", "nograd"),
                                         ("ppo_clip", False), ("gspo", False)])
def test_update_pass_computes_entropy_with_grad_only_for_methods_that_declare_it(method: str, want) -> None:
    """Grad where "entropy" is in the method's inputs; detached where only a selection may read H_cur (hapo prefers
    it when present); none otherwise."""
    assert entropy_for_update(get_policy_loss(method).obj) == want


def test_update_pass_entropy_modes(setup) -> None:
    model, ids, attn, mask = setup
    logp, entropy, _ = score_responses(model, ids, attn, P, 0.8, want_entropy=False)
    assert entropy is None and logp.requires_grad
    _, detached, _ = score_responses(model, ids, attn, P, 0.8, want_entropy="nograd")
    _, with_grad, _ = score_responses(model, ids, attn, P, 0.8, want_entropy="grad")
    assert not detached.requires_grad and with_grad.requires_grad and torch.equal(detached, with_grad.detach())


def test_masked_scoring_equals_unmasked_on_the_mask_and_reads_zero_off_it(setup) -> None:
    model, ids, attn, mask = setup
    lp_reg = get_policy_loss("lp_reg")
    features = lp_reg.obj.old_features
    full = score_in_chunks(model, ids, attn, P, 0.8, 4, features, lp_reg.make_params())
    masked = score_in_chunks(model, ids, attn, P, 0.8, 4, features, lp_reg.make_params(), mask=mask)
    on = mask.bool()
    for a, b in zip((full[0], full[1], full[2]["lp_proxy"]), (masked[0], masked[1], masked[2]["lp_proxy"])):
        assert torch.equal(a[on], b[on]) and (b[~on] == 0).all()


def test_per_token_temperature_equals_the_float(setup) -> None:
    model, ids, attn, mask = setup
    flat = score_in_chunks(model, ids, attn, P, 0.8, 4)
    per_token = score_in_chunks(model, ids, attn, P, torch.full((B, T), 0.8), 4)
    assert torch.equal(flat[0], per_token[0]) and torch.equal(flat[1], per_token[1])
    hotter = torch.full((B, T), 0.8)
    hotter[:, -1] = 1.6
    varied = score_in_chunks(model, ids, attn, P, hotter, 4)
    assert torch.equal(varied[1][:, :-1], flat[1][:, :-1]) and (varied[1][:, -1] > flat[1][:, -1]).all()


def param_grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad]))


@pytest.mark.parametrize("tau", [0.8, "per-token"])
def test_kernel_path_equals_the_logits_path_values_and_gradients(setup, tau) -> None:
    """The trainer's default (hidden states + tied LM head through the kernel) against the model's logits: logp,
    H_cur (with gradient), a feature, and the parameter gradients of a loss reading all three, to fp32 rounding."""
    model, ids, attn, mask = setup
    temperature = torch.linspace(0.6, 1.4, B * T).reshape(B, T) if tau == "per-token" else tau
    lp_reg = get_policy_loss("lp_reg")
    adv = torch.linspace(-1.0, 1.0, B * T).reshape(B, T)
    runs = []
    for use_kernel in (True, False):
        logp, ent, feats = score_responses(model, ids, attn, P, temperature, lp_reg.obj.old_features,
                                           lp_reg.make_params(), want_entropy="grad", mask=mask, use_kernel=use_kernel)
        nograd_logp, nograd_ent, _ = score_responses(model, ids, attn, P, temperature, mask=mask, use_kernel=use_kernel)
        loss = (adv * logp).sum() + 0.3 * ent.sum() + 0.1 * feats["lp_proxy"].sum()
        runs.append((logp, ent, feats["lp_proxy"], nograd_logp, nograd_ent, param_grads(model, loss)))
    for a, b in zip(runs[0][:5], runs[1][:5]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for ga, gb in zip(runs[0][5], runs[1][5]):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    nograd_ent = runs[0][4].detach()
    assert float(nograd_ent.abs().sum()) > 0 and (nograd_ent[mask == 0] == 0).all()


def test_scoring_head_is_the_tied_embedding_and_refuses_transformed_logits(setup) -> None:
    from transformers import AutoModelForCausalLM, GraniteConfig

    from entropy_rl.train.forward import response_logits, scoring_head
    from entropy_rl.core.token_stats import token_stats

    model = setup[0]
    head = scoring_head(model)
    assert head is not None and head.weight is model.get_input_embeddings().weight
    torch.manual_seed(0)
    granite = AutoModelForCausalLM.from_config(GraniteConfig(
        vocab_size=len("0123456789+=") + 3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32, logits_scaling=4.0))
    assert scoring_head(granite) is None  # logits / 4: scored from the model's own logits
    ids, attn = setup[1] % 15, setup[2]
    logp, ent, _ = score_responses(granite, ids, attn, P, 0.8)
    ref = token_stats(response_logits(granite, ids, attn, P), ids[:, P:], 0.8)
    assert torch.equal(logp, ref.logp) and torch.equal(ent, ref.entropy)


def test_entropy_grad_mask_keeps_the_scores_and_accumulates_the_token_mean_entropy_gradient(setup) -> None:
    """The fused probe pass: same values as the no-grad pass, and .grad = d/dtheta sum_t m_t H_t / sum_t m_t for a
    mask that is a subset of the scoring mask, summed over chunks of rows."""
    from entropy_rl.core.entropy import token_entropy
    from entropy_rl.train.forward import response_logits

    model, ids, attn, mask = setup
    model.train()
    probe_mask = mask.clone()
    probe_mask[0, :2] = 0  # e.g. a copied prefix trained only in its source row
    plain = score_in_chunks(model, ids, attn, P, 0.8, 4, mask=mask)
    model.zero_grad(set_to_none=True)
    fused = score_in_chunks(model, ids, attn, P, 0.8, 4, mask=mask, entropy_grad_mask=probe_mask)
    assert torch.equal(plain[0], fused[0]) and torch.equal(plain[1], fused[1]) and not fused[1].requires_grad
    assert model.training  # mode restored
    h = (token_entropy(response_logits(model, ids, attn, P), 0.8) * probe_mask).sum() / probe_mask.sum()
    for p, g in zip(model.parameters(), param_grads(model, h)):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)
    model.zero_grad(set_to_none=True)
    outside = torch.zeros_like(mask)
    outside[1, 4] = 1.0  # mask[1, 3:] is 0
    with pytest.raises(ValueError, match="nonzero on tokens the scoring mask skips"):
        score_in_chunks(model, ids, attn, P, 0.8, 4, mask=mask, entropy_grad_mask=outside)
    with pytest.raises(ValueError, match="needs the entropy"):
        score_in_chunks(model, ids, attn, P, 0.8, 4, want_entropy=False, entropy_grad_mask=mask)
