"""The entropy-dynamics probe (train/entropy_probe.py) against independent autograd / finite-difference computations."""

from __future__ import annotations

import pytest
import torch
from torch.utils._pytree import tree_flatten

from entropy_rl.core.entropy import token_entropy
from entropy_rl.metrics.dynamics import entropy_change_identity
from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.train.entropy_probe import (
    adam_bonus_sensitivity,
    linearised_entropy_change,
    linearised_logit_change,
    measure_after_update,
    probe_before_update,
    score_and_probe,
)
from entropy_rl.train.forward import response_logits, score_in_chunks

P, T, B, TAU = 5, 6, 6, 0.8  # prompt length, response length, rows, sampling temperature


@pytest.fixture
def setup():
    torch.manual_seed(0)
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                           intermediate_size=64, max_position_embeddings=32), tok, seed=0)
    ids = torch.randint(3, len(tok), (B, P + T))
    attn = torch.ones_like(ids)
    attn[0, :2] = 0  # a left-padded prompt
    mask = torch.ones(B, T)
    mask[1, 4:] = 0  # a short response
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt, ids, attn, mask


def batch_entropy(model, ids, attn, mask) -> torch.Tensor:
    """The token mean of H over `mask`, with gradient: what `entropy/token_mean` measures."""
    h = token_entropy(response_logits(model, ids, attn, P), TAU)
    return (h * mask).sum() / mask.sum()


def named_update(model, scale: float, only: str | None = None, seed: int = 1) -> dict[str, torch.Tensor]:
    """A random update of size `scale` per entry (only parameter `only`, if given), applied in place."""
    g = torch.Generator().manual_seed(seed)
    delta = {}
    with torch.no_grad():
        for n, p in model.named_parameters():
            d = scale * torch.randn(p.shape, generator=g) if only in (None, n) else torch.zeros_like(p)
            p.add_(d)
            delta[n] = d
    return delta


def test_probe_leaves_weights_grads_and_mode_untouched(setup) -> None:
    model, opt, ids, attn, mask = setup
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    probe = probe_before_update(model, opt, ids, attn, P, TAU, mask, chunk=4)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert probe.h_old == pytest.approx(float(batch_entropy(model, ids, attn, mask).detach()), abs=1e-6)
    assert probe.dh_per_bonus is None  # Adam has no second moments before its first step


def test_fused_scoring_pass_gives_the_scores_and_the_probe(setup) -> None:
    """score_and_probe = the no-grad scoring pass (values bit-identical, features included) + the probe's gradient of
    the batch entropy over the probe mask (a subset of the scoring mask), with h_old the probe mask's token mean."""
    model, opt, ids, attn, mask = setup
    from entropy_rl.core.policy_loss import get_policy_loss

    lp_reg = get_policy_loss("lp_reg")
    feats, params = lp_reg.obj.old_features, lp_reg.make_params()
    probe_mask = mask.clone()
    probe_mask[2, :3] = 0
    plain = score_in_chunks(model, ids, attn, P, TAU, 4, feats, params, mask=mask)
    h0 = batch_entropy(model, ids, attn, probe_mask)
    grads = torch.autograd.grad(h0, list(model.parameters()))
    (logp, ent, extras), probe = score_and_probe(model, opt, ids, attn, P, TAU, mask, probe_mask, 4, feats, params)
    assert torch.equal(logp, plain[0]) and torch.equal(ent, plain[1]) and torch.equal(extras["lp_proxy"], plain[2]["lp_proxy"])
    assert probe.h_old == pytest.approx(float(h0), rel=1e-6)
    for (name, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(probe.grad_h[name], g, rtol=1e-4, atol=1e-7)
        assert torch.equal(probe.theta_old[name], p.detach()) and p.grad is None


def test_measured_and_first_order_changes_match_autograd(setup) -> None:
    model, opt, ids, attn, mask = setup
    h0 = batch_entropy(model, ids, attn, mask)
    grads = torch.autograd.grad(h0, list(model.parameters()))
    probe = probe_before_update(model, opt, ids, attn, P, TAU, mask, chunk=4)
    delta = named_update(model, 3e-3)
    out = measure_after_update(model, probe, ids, attn, P, TAU, mask, chunk=4)
    expected_pred = sum(float((g * d).sum()) for g, d in zip(grads, delta.values()))
    with torch.no_grad():
        expected_actual = float(batch_entropy(model, ids, attn, mask) - h0)
    assert out["dynamics/dH_pred"] == pytest.approx(expected_pred, rel=1e-4, abs=1e-8)
    assert out["dynamics/dH_actual"] == pytest.approx(expected_actual, abs=1e-6)
    assert model.config._attn_implementation == "sdpa"  # the JVP's eager attention is switched back


def test_probe_keeps_only_parameter_sized_tensors_across_the_update(setup) -> None:
    """No [B, T, V] logits live in the probe between the two halves: every tensor it holds is a parameter's size."""
    model, opt, ids, attn, mask = setup
    probe = probe_before_update(model, opt, ids, attn, P, TAU, mask, chunk=4)
    shapes = {p.shape for p in model.parameters()}
    held = [v for v in tree_flatten(vars(probe))[0] if isinstance(v, torch.Tensor)]  # through dicts and lists
    assert held and not [tuple(t.shape) for t in held if t.shape not in shapes]


@pytest.mark.parametrize("chunk", [2, B])
def test_identity_equals_the_one_from_logits_kept_across_the_update(setup, chunk: int) -> None:
    """The old logits the identity reads after the step (the JVP's primal output at theta_old, eager attention) are
    those of the pre-update forward to fp32 rounding: dH_identity equals the one from logits kept across the step."""
    model, opt, ids, attn, mask = setup
    with torch.no_grad():
        old = [response_logits(model, ids[i : i + chunk], attn[i : i + chunk], P).float() for i in range(0, B, chunk)]
    probe = probe_before_update(model, opt, ids, attn, P, TAU, mask, chunk=chunk)
    named_update(model, 3e-3)
    out = measure_after_update(model, probe, ids, attn, P, TAU, mask, chunk=chunk)
    n_tokens = float(mask.sum())
    expected = 0.0
    with torch.no_grad():
        for k, i in enumerate(range(0, B, chunk)):
            m = mask[i : i + chunk]
            new = response_logits(model, ids[i : i + chunk], attn[i : i + chunk], P).float()
            expected += entropy_change_identity(old[k], new, m, TAU) * float(m.sum()) / n_tokens
    assert out["dynamics/dH_identity"] == pytest.approx(expected, rel=1e-5)
    assert out["dynamics/dH_identity"] != pytest.approx(0.0, abs=1e-5)  # a real change, not two zeros


def test_all_predictors_agree_for_a_small_step(setup) -> None:
    model, opt, ids, attn, mask = setup
    probe = probe_before_update(model, opt, ids, attn, P, TAU, mask, chunk=B)
    named_update(model, 2e-4)
    out = measure_after_update(model, probe, ids, attn, P, TAU, mask, chunk=B)
    actual = out["dynamics/dH_actual"]
    assert abs(actual) > 1e-5
    for key in ("dynamics/dH_pred", "dynamics/dH_pred_lin", "dynamics/dH_identity"):
        assert out[key] == pytest.approx(actual, rel=0.05), key


def test_linearised_predictor_is_exact_when_logits_are_linear_in_the_update(setup) -> None:
    """Logits are linear in the final RMSNorm gain, so J dtheta is the exact logit change and dH_pred_lin equals
    dH_actual for a large step, where the first-order dH_pred is visibly off."""
    model, opt, ids, attn, mask = setup
    probe = probe_before_update(model, opt, ids, attn, P, TAU, mask, chunk=4)
    named_update(model, 0.5, only="model.norm.weight")
    out = measure_after_update(model, probe, ids, attn, P, TAU, mask, chunk=4)
    actual = out["dynamics/dH_actual"]
    assert out["dynamics/dH_pred_lin"] == pytest.approx(actual, rel=1e-3, abs=1e-6)
    assert abs(out["dynamics/dH_pred"] - actual) > 0.05 * abs(actual)


def test_jvp_matches_central_finite_difference(setup) -> None:
    model, _, ids, attn, _ = setup
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    delta = {n: 1e-2 * torch.randn_like(p) for n, p in theta.items()}
    z, dz = linearised_logit_change(model, theta, delta, ids, attn, P)
    eps = 1e-2

    def logits_at(sign: float) -> torch.Tensor:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(theta[n] + sign * eps * delta[n])
            return response_logits(model, ids, attn, P)

    fd = (logits_at(1.0) - logits_at(-1.0)) / (2 * eps)
    assert torch.allclose(z, logits_at(0.0), atol=1e-5)
    assert torch.allclose(dz, fd, atol=1e-3 * float(fd.abs().max()))


def test_linearised_change_reads_only_theta_old_and_delta(setup) -> None:
    model, _, ids, attn, mask = setup
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    delta = {n: 1e-2 * torch.randn_like(p) for n, p in theta.items()}
    first = linearised_entropy_change(model, theta, delta, ids, attn, P, TAU, mask, chunk=4)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # the model's own weights must not enter
    assert linearised_entropy_change(model, theta, delta, ids, attn, P, TAU, mask, chunk=B) == pytest.approx(first, rel=1e-5)


def test_adam_bonus_sensitivity_by_hand() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.Adam([w], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    g_h = torch.tensor([0.5, 0.25])
    assert adam_bonus_sensitivity(opt, [g_h], [w]) is None
    w.grad = torch.tensor([0.2, -0.4])
    opt.step()
    # before step 2: v_hat = v / (1 - b2^1) = g1^2; scale = lr (1 - b1) / (1 - b1^2)
    v_hat = torch.tensor([0.2, -0.4]) ** 2
    expected = 0.1 * 0.1 / (1 - 0.9**2) * float((g_h**2 / (v_hat.sqrt() + 1e-8)).sum())
    assert adam_bonus_sensitivity(opt, [g_h], [w]) == pytest.approx(expected, rel=1e-6)


def test_a_per_token_temperature_is_sliced_with_its_rows(setup) -> None:
    """Strategies that sample rows at other temperatures (adaptive_temperature, arbitrary_entropy) give a [B, T]
    tau: in chunks smaller than the batch (chunk 4 of B = 6) every metric uses each row's own tau. A constant
    tensor equals the float, and a row-varying one gives the entropies computed row by row."""
    model, opt, ids, attn, mask = setup
    const = torch.full((B, T), TAU)
    probe_f = probe_before_update(model, opt, ids, attn, P, TAU, mask, chunk=4)
    probe_t = probe_before_update(model, opt, ids, attn, P, const, mask, chunk=4)
    assert probe_t.h_old == pytest.approx(probe_f.h_old, rel=1e-6)
    tau = torch.linspace(0.6, 1.4, B).unsqueeze(1).expand(B, T).contiguous()  # one temperature per row
    probe = probe_before_update(model, opt, ids, attn, P, tau, mask, chunk=4)
    with torch.no_grad():
        h_rows = token_entropy(response_logits(model, ids, attn, P) / tau.unsqueeze(-1))
    h_ref = float((h_rows * mask).sum() / mask.sum())
    assert probe.h_old == pytest.approx(h_ref, rel=1e-5)
    named_update(model, 3e-3)
    out_f = measure_after_update(model, probe_f, ids, attn, P, TAU, mask, chunk=4)
    out_t = measure_after_update(model, probe_t, ids, attn, P, const, mask, chunk=4)
    for key, value in out_f.items():
        assert out_t[key] == pytest.approx(value, rel=1e-4, abs=1e-8), key
    out = measure_after_update(model, probe, ids, attn, P, tau, mask, chunk=4)
    with torch.no_grad():
        h_new = token_entropy(response_logits(model, ids, attn, P) / tau.unsqueeze(-1))
    assert out["dynamics/dH_actual"] == pytest.approx(float((h_new * mask).sum() / mask.sum()) - h_ref, rel=1e-3, abs=1e-7)
