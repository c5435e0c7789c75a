"""Hand-computed checks of the grpo, dr_grpo and rloo estimators (methods.md §15)."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.advantage import compute_advantages

R = torch.tensor([1.0, 0.0, 0.0, 1.0])
G = torch.zeros(4, dtype=torch.long)


def test_grpo_unbiased_std() -> None:
    # mean 0.5; unbiased std = sqrt(4 * 0.25 / 3) = 0.57735; A = +-0.5 / (0.57735 + 1e-6) = +-0.86603
    a = compute_advantages("grpo", R, G)
    s = math.sqrt(1 / 3)
    torch.testing.assert_close(a, torch.tensor([0.5, -0.5, -0.5, 0.5]) / (s + 1e-6))
    assert abs(float(a[0]) - 0.8660) < 1e-4


def test_dr_grpo_mean_only() -> None:
    torch.testing.assert_close(compute_advantages("dr_grpo", R, G), torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_rloo_leave_one_out() -> None:
    # r_0 - mean(0, 0, 1) = 1 - 1/3 = 2/3 = 4/3 * 0.5;  r_1 - mean(1, 0, 1) = -2/3
    torch.testing.assert_close(compute_advantages("rloo", R, G), torch.tensor([2, -2, -2, 2]) / 3.0)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_singleton_rule(name: str) -> None:
    r = torch.tensor([0.7, 1.0, 0.0])
    g = torch.tensor([3, 8, 8])  # group 3 is a singleton
    a = compute_advantages(name, r, g)
    assert float(a[0]) == 0.0  # toolkit rule: a lone response carries no relative signal
    a = compute_advantages(name, r, g, singleton="reward")
    assert float(a[0]) == pytest.approx(0.7 / (1 + 1e-6) if name == "grpo" else 0.7, rel=1e-7)  # verl: mean 0, std 1


def test_grpo_singleton_reward_divides_by_one_plus_eps_as_verl() -> None:
    # verl compute_grpo_outcome_advantage: a singleton has mean 0 and std 1, so A = (r - 0) / (1 + eps)
    r, g = torch.tensor([0.7, 1.0, 0.0]), torch.tensor([3, 8, 8])
    a = compute_advantages("grpo", r, g, singleton="reward", eps=0.5)
    assert float(a[0]) == pytest.approx(0.7 / 1.5)
    a = compute_advantages("grpo", r, g, singleton="reward", eps=0.5, scale_by_std=False)
    assert float(a[0]) == pytest.approx(0.7)  # no std scaling (Dr.GRPO): A = r


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_non_contiguous_group_ids(name: str) -> None:
    # ids 42 and -7 interleaved: same result as contiguous ids 0/1 in the same order
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    g = torch.tensor([42, -7, 42, 42, -7, -7])
    a = compute_advantages(name, r, g)
    contiguous = compute_advantages(name, r, torch.tensor([0, 1, 0, 0, 1, 1]))
    torch.testing.assert_close(a, contiguous)
    # group 42 = [1, 0, 1] (mean 2/3), group -7 = [0, 1, 1] (mean 2/3): Dr.GRPO gives r - 2/3
    if name == "dr_grpo":
        torch.testing.assert_close(a, r - 2 / 3)


def test_grpo_equal_rewards_give_zero() -> None:
    a = compute_advantages("grpo", torch.ones(4), G)
    assert torch.equal(a, torch.zeros(4))
