"""BAPO (methods.md §11): bound search against hand-computed cases and against the official loop."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.policy_loss import get_policy_loss, policy_loss, run_select
from entropy_rl.core.types import PolicyInputs, StepContext

ENTRY = get_policy_loss("bapo")


def inputs(ratios, advs) -> PolicyInputs:
    r = torch.tensor(ratios, dtype=torch.float32).view(-1, 1)
    logp = torch.log(r).requires_grad_(True)
    return PolicyInputs(logp, torch.zeros_like(r), torch.tensor(advs, dtype=torch.float32).view(-1, 1), torch.ones_like(r))


def chosen(x: PolicyInputs, **kw):
    sel = run_select(ENTRY, ENTRY.make_params(**kw), x, StepContext(), None)
    return float(sel["c_low"][0, 0]), float(sel["c_high"][0, 0]), float(sel.metrics["method/bapo/pos_share"]), sel


def test_target_met_at_start() -> None:
    # A=+1, r=2 -> P = min(2, 1.2) = 1.2; A=-1, r=0.5 -> N = max(0.5, 0.6) = 0.6; P/N = 2 >= 1: keep (0.6, 1.2)
    c_low, c_high, share, sel = chosen(inputs([2.0, 0.5], [1.0, -1.0]))
    assert (c_low, c_high) == pytest.approx((0.6, 1.2))
    assert share == pytest.approx(1.2 / 1.8)
    # loss: token 0: max(-2, -1.2) = -1.2; token 1: max(0.5, 0.6) = 0.6 (dual clip -c A = 3 does not bind)
    out = ENTRY.obj.loss(inputs([2.0, 0.5], [1.0, -1.0]), ENTRY.make_params(), sel, StepContext())
    torch.testing.assert_close(out.per_token.detach().view(-1), torch.tensor([-1.2, 0.6]))


def test_upper_bound_raised_until_target() -> None:
    # A=+1, r=1.5: P = min(1.5, c_high); A=-1, r=1.27: N = 1.27 for any c_low <= 0.9.
    # start P/N = 1.2/1.27 < 1; stage 1 cannot change N -> c_low ends at b_low = 0.9;
    # stage 2: c_high 1.25 (P/N 0.984), 1.30 (1.024 >= 1) -> stop at 1.3
    c_low, c_high, share, _ = chosen(inputs([1.5, 1.27], [1.0, -1.0]))
    assert c_low == pytest.approx(0.9)
    assert c_high == pytest.approx(1.3)
    assert share == pytest.approx(1.3 / (1.3 + 1.27), rel=1e-6)


def test_unreachable_target_saturates_both_bounds() -> None:
    # A=+1, r=1 -> P = 1 for any c_high >= 1; A=-2, r=0.5 -> N = 2 max(0.5, c_low) grows with c_low:
    # P/N never reaches 1, so the search ends at (b_low, b_high) = (0.9, 3.0); share = 1/(1 + 1.8)
    c_low, c_high, share, _ = chosen(inputs([1.0, 0.5], [1.0, -2.0]))
    assert (c_low, c_high) == pytest.approx((0.9, 3.0))
    assert share == pytest.approx(1 / 2.8)


def test_target_share_conversion() -> None:
    # rho0 = 1/3 -> P/N target 0.5; A=+1, r=1 (P=1), A=-1, r=1.9 (N=1.9): 1/1.9 = 0.526 >= 0.5 -> start bounds
    c_low, c_high, _, _ = chosen(inputs([1.0, 1.9], [1.0, -1.0]), target_positive_share=1 / 3)
    assert (c_low, c_high) == pytest.approx((0.6, 1.2))
    assert ENTRY.make_params(target_positive_share=0.5).target_ratio == pytest.approx(1.0)


def official_search(ratio, adv, mask, p):
    """Straight port of WooooDyy/BAPO recipe/bapo/policy_loss.py's loop, for comparison."""

    def pn(lo, hi):
        eff = torch.where(adv >= 0, torch.minimum(ratio, torch.tensor(hi)), torch.maximum(ratio, torch.tensor(lo)))
        e = eff * adv * mask
        pos, neg = e.clamp(min=0).sum(), (-e.clamp(max=0)).sum()
        return math.inf if neg <= 0 else float(pos / (neg + p.eps))

    lo, hi, t = p.a_low, p.a_high, p.target_ratio
    v = pn(lo, hi)
    while v < t and lo < p.b_low and p.delta_low > 0:
        lo = min(lo + p.delta_low, p.b_low)
        v = pn(lo, hi)
    while v < t and hi < p.b_high and p.delta_high > 0:
        hi = min(hi + p.delta_high, p.b_high)
        v = pn(lo, hi)
    return lo, hi


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_search_matches_official_loop(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 5
    logp = torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    old = logp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4
    adv = (torch.randn(B, 1, generator=g, dtype=torch.float64) - 0.3 * seed / 5).expand(B, T)
    mask = (torch.rand(B, T, generator=g) > 0.2).double()
    p = ENTRY.make_params(target_positive_share=0.3 + 0.1 * seed)
    sel = run_select(ENTRY, p, PolicyInputs(logp, old, adv * mask, mask), StepContext(), None)
    lo, hi = official_search(torch.exp(logp - old), adv * mask, mask, p)
    assert float(sel["c_low"][0, 0]) == pytest.approx(lo, abs=1e-12)
    assert float(sel["c_high"][0, 0]) == pytest.approx(hi, abs=1e-12)


def test_public_api_runs_select_and_reports_bounds() -> None:
    x = inputs([2.0, 0.5], [1.0, -1.0])
    out = policy_loss("bapo", x.logp, x.old_logp, x.adv, x.mask)
    assert {"method/bapo/c_low", "method/bapo/c_high", "method/bapo/pos_share"} <= set(out.metrics)


def test_bad_params() -> None:
    with pytest.raises(ValueError):
        ENTRY.make_params(a_low=0.95, b_low=0.9)
    with pytest.raises(ValueError):
        ENTRY.make_params(target_positive_share=1.0)
