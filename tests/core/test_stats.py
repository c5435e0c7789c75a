"""entropy_rl.core.stats: quantiles against numpy, STEER's Omega by hand."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.stats import entropy_change_omega, quantiles

np = pytest.importorskip("numpy")

QS = [0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 1.0]


# ---- quantiles ----


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1001])
@pytest.mark.parametrize("seed", [0, 1])
def test_quantiles_match_numpy_linear(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    got = quantiles(x, QS)
    want = np.quantile(x.numpy(), QS, method="linear")
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_quantiles_with_ties_and_fp32():
    x = torch.tensor([3.0, 1.0, 1.0, 2.0, 2.0, 2.0, 5.0], dtype=torch.float32)
    got = quantiles(x, QS)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), np.quantile(x.numpy().astype(np.float64), QS), rtol=1e-6)


def test_quantiles_hand_values_and_int_input():
    # sorted [0, 10, 20, 30]; q=0.5 -> position 1.5 -> 10 + 0.5 * (20 - 10) = 15; q=1/3 -> position 1 -> 10
    got = quantiles(torch.tensor([30, 0, 20, 10]), [0.5, 1 / 3])
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx([15.0, 10.0])


def test_quantiles_empty_returns_zeros_and_validates():
    assert quantiles(torch.empty(0), [0.1, 0.9]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="1-D"):
        quantiles(torch.zeros(2, 2), [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantiles(torch.zeros(3), [1.5])


# ---- Omega ----


def test_omega_on_policy_is_a_times_one_minus_p_times_logp_plus_h() -> None:
    # p = 0.5, A = 2, H = 1: (A / p_old) * p (1 - p)(log p + H) = 4 * 0.25 * (1 - 0.693147) = 0.306853
    logp = torch.tensor([[math.log(0.5)]], dtype=torch.float64)
    got = entropy_change_omega(logp, logp, torch.tensor([[2.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64))
    assert float(got) == pytest.approx(2 * 0.5 * (math.log(0.5) + 1.0), rel=1e-12)


def test_omega_off_policy_scales_by_one_over_p_old_and_zeroes_non_finite() -> None:
    # p = 0.5, p_old = 0.25: 4x the on-policy A (1 - p)(log p + H) * p / p -> (A / 0.25) * 0.25 * (log 0.5 + H)
    logp = torch.tensor([[math.log(0.5), math.log(0.5)]], dtype=torch.float64)
    old = torch.tensor([[math.log(0.25), math.log(0.25)]], dtype=torch.float64)
    adv = torch.tensor([[1.0, float("inf")]], dtype=torch.float64)
    got = entropy_change_omega(logp, old, adv, torch.zeros(1, 2, dtype=torch.float64))
    assert float(got[0, 0]) == pytest.approx((1.0 / 0.25) * 0.25 * math.log(0.5), rel=1e-12)
    assert float(got[0, 1]) == 0.0
