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
