"""QAE (arXiv:2509.22611): K-quantile group baseline, hand-computed cases (arithmetic in comments)."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.advantages.qae import Params
from entropy_rl.core.advantage import compute_advantages

G8 = torch.zeros(8, dtype=torch.long)


def binary(successes: int, n: int = 8) -> torch.Tensor:
    """n binary rewards: `successes` ones after n - successes zeros."""
    return torch.tensor([0.0] * (n - successes) + [1.0] * successes)


def test_hard_group_reinforces_only_its_rare_successes() -> None:
    # 2 of 8 correct (p = 0.25 <= 1 - K = 0.6): sorted [0 x6, 1 x2], linear index 0.4 * 7 = 2.8 -> v[2] = v[3] = 0 -> b = 0
    # mean 0.25, unbiased var (6 * 0.25^2 + 2 * 0.75^2) / 7 = 1.5 / 7 = 0.214286, std 0.462910
    # A(success) = 1 / 0.462910 = 2.160247, A(failure) = 0 / std = 0
    a = compute_advantages("qae", binary(2), G8)
    std = math.sqrt(1.5 / 7)
    torch.testing.assert_close(a, torch.tensor([0.0] * 6 + [1 / (std + 1e-6)] * 2))
    assert float(a[-1]) == pytest.approx(2.160247, abs=1e-5)


def test_easy_group_penalises_only_its_remaining_failures() -> None:
    # 7 of 8 correct (p = 0.875 > 0.6): linear index 2.8 -> v[2] = v[3] = 1 -> b = 1
    # mean 0.875, var (0.875^2 + 7 * 0.125^2) / 7 = 0.875 / 7 = 0.125, std 0.353553; A(failure) = -1 / 0.353553 = -2.828427
    a = compute_advantages("qae", binary(7), G8)
    torch.testing.assert_close(a, torch.tensor([-1 / (math.sqrt(0.125) + 1e-6)] + [0.0] * 7))
    assert float(a[0]) == pytest.approx(-2.828427, abs=1e-5)


def test_threshold_group_linear_code_vs_inverted_cdf_paper() -> None:
    # 5 of 8 correct (p = 0.625 > 0.6). mean 0.625, var (3 * 0.625^2 + 5 * 0.375^2) / 7 = 1.875 / 7, std 0.517549
    # linear (official torch.quantile): v[2] + 0.8 (v[3] - v[2]) = 0 + 0.8 * 1 = 0.8
    #   A(success) = 0.2 / 0.517549 = 0.386437, A(failure) = -0.8 / 0.517549 = -1.545750
    # inverted_cdf (paper): index ceil(0.4 * 8) - 1 = 3 -> b = 1: A(success) = 0, A(failure) = -1 / 0.517549 = -1.932184
    std = math.sqrt(1.875 / 7)
    lin = compute_advantages("qae", binary(5), G8)
    torch.testing.assert_close(lin, torch.tensor([-0.8] * 3 + [0.2] * 5) / (std + 1e-6))
    assert float(lin[-1]) == pytest.approx(0.386437, abs=1e-5) and float(lin[0]) == pytest.approx(-1.545750, abs=1e-5)
    inv = compute_advantages("qae", binary(5), G8, quantile="inverted_cdf")
    torch.testing.assert_close(inv, torch.tensor([-1.0] * 3 + [0.0] * 5) / (std + 1e-6))


def test_inverted_cdf_is_the_papers_threshold_on_binary_rewards() -> None:
    # b_K = 0 iff p <= 1 - K, else 1 (paper Eq. 4), for every success count of a group of 8, K = 0.4 and 0.6
    for k in (0.4, 0.6):
        for s in range(1, 8):
            a = compute_advantages("qae", binary(s), G8, k=k, quantile="inverted_cdf", scale_by_std=False)
            b = 0.0 if s / 8 <= 1 - k else 1.0
            torch.testing.assert_close(a, binary(s) - b, msg=f"k={k} successes={s}")


def test_continuous_rewards_and_no_std_scaling() -> None:
    # rewards [0, 0.5, 1, 2], K = 0.5. linear: index 0.5 * 3 = 1.5 -> 0.5 + 0.5 (1 - 0.5) = 0.75
    #   -> A = [-0.75, -0.25, 0.25, 1.25]; inverted: index ceil(0.5 * 4) - 1 = 1 -> 0.5 -> A = [-0.5, 0, 0.5, 1.5]
    r = torch.tensor([0.0, 0.5, 1.0, 2.0])
    g = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(compute_advantages("qae", r, g, k=0.5, scale_by_std=False),
                               torch.tensor([-0.75, -0.25, 0.25, 1.25]))
    torch.testing.assert_close(compute_advantages("qae", r, g, k=0.5, quantile="inverted_cdf", scale_by_std=False),
                               torch.tensor([-0.5, 0.0, 0.5, 1.5]))


def test_inverted_cdf_rounds_k_times_n_before_the_ceiling() -> None:
    # 0.28 * 25 = 7.000000000000001 in floating point: the 7th smallest (index 6) of 0..24 is 6, not 7
    r = torch.arange(25, dtype=torch.float32)
    a = compute_advantages("qae", r, torch.zeros(25, dtype=torch.long), k=0.28, quantile="inverted_cdf", scale_by_std=False)
    torch.testing.assert_close(a, r - 6.0)


def test_pairs_at_k_half_equal_grpo() -> None:
    # groups of two: the linear median (0.5 quantile) of {r1, r2} is their mean, so QAE(K=0.5) == GRPO
    r = torch.tensor([1.0, 0.0, 0.3, 0.9, 1.0, 1.0])
    g = torch.tensor([0, 0, 5, 5, 2, 2])
    torch.testing.assert_close(compute_advantages("qae", r, g, k=0.5), compute_advantages("grpo", r, g))


def test_several_groups_uniform_groups_and_singletons() -> None:
    # group 7: [1, 0, 0, 0] -> b = 0 (index 1.2 between two zeros); std = sqrt(0.75 / 3) = 0.5 -> A = [2, 0, 0, 0]
    # group 3: all ones -> b = 1, std 0 -> A = 0 / eps = 0; group 9: a singleton -> 0 (or r / (1 + eps) with "reward")
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.4])
    g = torch.tensor([7, 7, 7, 7, 3, 3, 9])
    a = compute_advantages("qae", r, g)
    torch.testing.assert_close(a, torch.tensor([1 / (0.5 + 1e-6), 0, 0, 0, 0, 0, 0]))
    a = compute_advantages("qae", r, g, singleton="reward")
    assert float(a[-1]) == pytest.approx(0.4 / (1 + 1e-6))


@pytest.mark.parametrize("bad", [{"k": 0.0}, {"k": 1.0}, {"quantile": "nearest"}, {"singleton": "mean"}, {"eps": -1.0}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
