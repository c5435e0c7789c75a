"""Hand-computed cases for `siren` (methods.md section 6), and the key property: the linearised per-token
penalty has exactly the gradient of the mini-batch objective lambda (H_sel - H_anchor)^2, for every
aggregation mode and micro-batch split."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.aggregate import AGG_MODES, Aggregation, aggregate
from entropy_rl.core.policy_loss import get_policy_loss, policy_loss, run_select
from entropy_rl.core.types import PolicyInputs, StepContext
from entropy_rl.methods.siren import (
    Params,
    SirenState,
    SirenValues,
    peak_mask,
    selected_entropy,
    topp_entropy,
    topp_entropy_feature,
)

ENTRY = get_policy_loss("siren")


def h_of(probs: list[float], **kw) -> torch.Tensor:
    return topp_entropy(torch.tensor(probs).log(), 1.0, **kw)


def test_topp_entropy_excludes_the_crossing_token() -> None:
    # p = [.5, .2, .2, .1], cum = [.5, .7, .9, 1.0]; keep cum < .8 -> first two; the third (crossing) is out
    # q = [5/7, 2/7]; H = -(5/7 ln 5/7 + 2/7 ln 2/7) = 0.598270
    expected = -(5 / 7 * math.log(5 / 7) + 2 / 7 * math.log(2 / 7))
    assert float(h_of([0.5, 0.2, 0.2, 0.1], top_p=0.8)) == pytest.approx(expected, rel=1e-5)
    # top_k = 10000 > V = 4 works (K = min(K, V)); top_k = 3 gives the same (the 4th is never kept)
    assert float(h_of([0.5, 0.2, 0.2, 0.1], top_p=0.8, top_k=10_000)) == pytest.approx(expected, rel=1e-5)
    assert float(h_of([0.5, 0.2, 0.2, 0.1], top_p=0.8, top_k=3)) == pytest.approx(expected, rel=1e-5)
    # top_k = 1: only the top token kept -> q = [1] -> H = 0
    assert float(h_of([0.5, 0.2, 0.2, 0.1], top_p=0.8, top_k=1)) == pytest.approx(0.0, abs=1e-6)


def test_topp_entropy_is_zero_when_top1_reaches_p_with_finite_zero_gradient() -> None:
    # top-1 = .85 >= .8 -> m = 0 -> H = 0
    z = torch.tensor([0.85, 0.1, 0.05]).log().requires_grad_(True)
    h = topp_entropy(z, 1.0, top_p=0.8)
    assert float(h.detach()) == 0.0
    (g,) = torch.autograd.grad(h, z)
    assert torch.all(g == 0)


def test_topp_entropy_uses_tempered_probabilities() -> None:
    # tau = 2: p prop. to sqrt([.64, .32, .04]) = [.8, .5657, .2] / 1.5657 = [.511, .361, .128]
    # cum = [.511, .872, 1.0]: keep first only -> H = 0; at tau 1, cum = [.64, .96] keeps the first only too
    # top_p = 0.9 at tau 2 keeps two: q = [.8, .5657] / 1.3657
    z = torch.tensor([0.64, 0.32, 0.04]).log()
    q = torch.tensor([0.8, math.sqrt(0.32)]) / (0.8 + math.sqrt(0.32))
    assert float(topp_entropy(z, 2.0, top_p=0.9)) == pytest.approx(float(-(q * q.log()).sum()), rel=1e-5)


def test_peak_mask_by_hand() -> None:
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 9.0, 9.0], [7.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0] * 5, [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    s = peak_mask(h, mask, 0.8)
    # row 0: q_.8 at position .8*4 = 3.2 -> 4 + .2 = 4.2 -> {5}
    # row 1: over [1, 2, 3]: position 1.6 -> 2.6 -> {3}; padding 9s never selected
    # row 2: one token: quantile = 7, strict > -> nothing
    assert s.tolist() == [[False] * 4 + [True], [False, False, True, False, False], [False] * 5]
    # H_sel = (5/1 + 3/1 + 0) / 3 = 8/3 (the empty row still counts)
    assert float(selected_entropy(h, s)) == pytest.approx(8 / 3)


def random_batch(seed: int = 0, b: int = 8, t: int = 6, v: int = 7):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, t, v, generator=g) * 1.5).requires_grad_(True)
    lengths = torch.tensor([t - (i % 4) for i in range(b)])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
    return logits, mask


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("n_micro", [1, 4])
def test_linearised_penalty_has_the_gradient_of_the_minibatch_objective(mode: str, n_micro: int) -> None:
    lam, anchor, tau = 0.7, 0.3, 0.9
    logits, mask = random_batch()
    b, t = mask.shape
    h = topp_entropy(logits, tau, top_p=0.8, top_k=10_000)  # [B, T] with grad
    zeros = torch.zeros(b, t)
    logp = torch.zeros(b, t, requires_grad=True)
    x = PolicyInputs(logp, logp.detach(), zeros, mask, extras={"topp_entropy": h})
    p = Params(coef=lam)
    # the trainer's context: this step's anchor and its aggregation (norm_length 10 != T: taken from the context)
    ctx = StepContext(SirenValues(anchor), Aggregation(mode, num_tokens=mask.sum(), num_seqs=b, norm_length=10.0))
    # exact objective over the mini-batch (the peak mask carries no gradient)
    s = peak_mask(h, mask, 0.8)
    exact = lam * (selected_entropy(h, s) - anchor) ** 2
    (g_exact,) = torch.autograd.grad(exact, logits, retain_graph=True)
    # trainer-style: select once over the mini-batch, loss per micro-batch, aggregate with mini-batch normalisers
    sel = run_select(ENTRY, p, x, ctx, None)
    total, size = 0.0, b // n_micro
    for start in range(0, b, size):
        rows = slice(start, start + size)
        out = ENTRY.obj.loss(x.rows(rows), p, sel.rows(rows), ctx)
        total = total + aggregate(out.per_token, mask[rows], mode, num_tokens=mask.sum(), num_seqs=b, norm_length=10.0)
    (g_lin,) = torch.autograd.grad(total, logits)
    assert g_exact.abs().sum() > 0
    torch.testing.assert_close(g_lin, g_exact, rtol=1e-5, atol=1e-7)
    # the aggregated value is the penalty itself (A = 0: the PPO part is 0)
    torch.testing.assert_close(total.detach(), exact.detach(), rtol=1e-5, atol=1e-7)
    assert float(sel.metrics["method/siren/penalty"]) == pytest.approx(float(exact.detach()), rel=1e-5)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_microbatch_selection_weights_each_penalty_by_its_share_of_sequences(mode: str) -> None:
    """selection_scope=microbatch: H_sel per micro-batch, penalty weighted B_micro / B_mb (official 1 / grad accum)."""
    lam, anchor, n_micro = 0.7, 0.3, 2
    logits, mask = random_batch(2)
    b, t = mask.shape
    h = topp_entropy(logits, 1.0)
    logp = torch.zeros(b, t, requires_grad=True)
    x = PolicyInputs(logp, logp.detach(), torch.zeros(b, t), mask, extras={"topp_entropy": h})
    p = Params(coef=lam)
    ctx = StepContext(SirenValues(anchor), Aggregation(mode, num_tokens=mask.sum(), num_seqs=b, norm_length=10.0))
    total, expected, size = 0.0, 0.0, b // n_micro
    for start in range(0, b, size):
        rows = slice(start, start + size)
        xr = x.rows(rows)
        out = ENTRY.obj.loss(xr, p, run_select(ENTRY, p, xr, ctx, None), ctx)
        total = total + ctx.agg.reduce(out.per_token, xr.mask)
        h_sel = selected_entropy(h[rows], peak_mask(h[rows], mask[rows], 0.8))
        expected = expected + size / b * lam * (h_sel - anchor) ** 2
    (g, g_expected) = (torch.autograd.grad(v, logits, retain_graph=True)[0] for v in (total, expected))
    assert g_expected.abs().sum() > 0
    torch.testing.assert_close(g, g_expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(total.detach(), expected.detach(), rtol=1e-5, atol=1e-7)


def test_no_anchor_means_zero_penalty() -> None:
    logits, mask = random_batch(1)
    h = topp_entropy(logits, 1.0)
    logp = torch.zeros(mask.shape, requires_grad=True)
    out = policy_loss("siren", logp, logp.detach(), torch.zeros(mask.shape), mask, extras={"topp_entropy": h}, coef=1.0)
    loss = aggregate(out.per_token, mask)
    assert float(loss.detach()) == 0.0
    assert torch.all(torch.autograd.grad(loss, logits)[0] == 0)


def test_anchor_is_set_once_from_the_first_batch_and_saved() -> None:
    p = Params()
    state = ENTRY.obj.make_state(p)
    assert state.values(p).anchor is None  # a fresh state: no anchor until it has seen a batch
    h1 = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 2.0, 6.0, 1.0, 1.0]])
    mask = torch.ones(2, 5)
    x1 = PolicyInputs(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(2, 5), mask, extras={"topp_entropy": h1})
    state.before_update(x1)
    # row 0 -> {5}; row 1: sorted [1,1,2,2,6], position 3.2 -> 2 + .2*4 = 2.8 -> {6}; H_sel = (5 + 6) / 2 = 5.5
    assert state.values(p).anchor == pytest.approx(5.5)
    x2 = PolicyInputs(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(2, 5), mask, extras={"topp_entropy": h1 * 0})
    state.before_update(x2)
    assert state.values(p).anchor == pytest.approx(5.5)  # fixed afterwards
    restored = ENTRY.obj.make_state(p)
    restored.load_state_dict(state.state_dict())
    assert restored.values(p) == state.values(p) == SirenValues(5.5)


def test_feature_uses_the_params() -> None:
    z = torch.log(torch.tensor([[[0.5, 0.2, 0.2, 0.1]]]))
    tokens = torch.zeros(1, 1, dtype=torch.long)
    # top_p 0.8 keeps {0.5, 0.2} (0.9 crosses at the third): q = [5/7, 2/7]
    q = torch.tensor([5 / 7, 2 / 7])
    assert float(topp_entropy_feature(z, tokens, 1.0, Params(top_p=0.8))) == pytest.approx(float(-(q * q.log()).sum()), rel=1e-5)
    # top_p 0.95 keeps {0.5, 0.2, 0.2}: q = [5/9, 2/9, 2/9]
    q = torch.tensor([5 / 9, 2 / 9, 2 / 9])
    assert float(topp_entropy_feature(z, tokens, 1.0, Params(top_p=0.95))) == pytest.approx(float(-(q * q.log()).sum()), rel=1e-5)


def test_state_type() -> None:
    assert isinstance(ENTRY.obj.make_state(Params()), SirenState)
