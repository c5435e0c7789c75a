"""HAPO token-level group average advantage: hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.advantage import compute_advantages


def test_token_weighted_group_statistics() -> None:
    # lengths 4, 2, 4, 4 (14 tokens); rewards 1, 0, 0, 1. mu = 8/14 = 0.5714
    # var = (8 * (6/14)^2 + 6 * (8/14)^2) / 14 = 0.24490, sigma = 0.49487
    # A = (1 - 0.5714)/0.49487 = 0.8660; (0 - 0.5714)/0.49487 = -1.1547
    mask = torch.ones(4, 4)
    mask[1, 2:] = 0
    a = compute_advantages("hapo", torch.tensor([1.0, 0, 0, 1]), torch.zeros(4, dtype=torch.long), mask=mask)
    mu = 8 / 14
    sigma = math.sqrt((8 * (1 - mu) ** 2 + 6 * mu**2) / 14)
    hi, lo = (1 - mu) / (sigma + 1e-6), -mu / (sigma + 1e-6)
    expected = torch.tensor([[hi] * 4, [lo, lo, 0, 0], [lo] * 4, [hi] * 4])
    torch.testing.assert_close(a, expected)
    assert abs(hi - 0.8660) < 1e-3 and abs(lo + 1.1547) < 1e-3


def test_equal_lengths_is_grpo_with_population_std() -> None:
    # equal lengths: mu = 0.5, population std = 0.5 -> A = +-1 (GRPO's unbiased std would give +-0.866)
    a = compute_advantages("hapo", torch.tensor([1.0, 0, 0, 1]), torch.zeros(4, dtype=torch.long), mask=torch.ones(4, 3))
    torch.testing.assert_close(a[:, 0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5, rtol=0)


def test_fallback_to_grpo_when_normalised_value_is_large() -> None:
    # lengths 1 and 99: mu = 0.01, sigma = sqrt(0.01 * 0.99) = 0.0995; correct: 0.99/0.0995 = 9.95 >= 5 -> GRPO:
    # n = 2, unbiased std 0.7071: A = +-0.7071
    mask = torch.zeros(2, 99)
    mask[0, 0] = 1
    mask[1, :] = 1
    a = compute_advantages("hapo", torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.long), mask=mask)
    g = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert float(a[0, 0]) == pytest.approx(g, abs=1e-5)
    assert float(a[0, 1:].abs().sum()) == 0.0
    torch.testing.assert_close(a[1], torch.full((99,), -g))
    # a higher threshold keeps the token-level value
    a = compute_advantages("hapo", torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.long), mask=mask, fallback_threshold=20.0)
    assert float(a[0, 0]) == pytest.approx(0.99 / (math.sqrt(0.0099) + 1e-6), rel=1e-5)


def test_singletons_and_uniform_groups_are_zero() -> None:
    a = compute_advantages("hapo", torch.tensor([1.0, 1.0, 1.0]), torch.tensor([4, 9, 9]), mask=torch.ones(3, 2))
    assert torch.equal(a, torch.zeros(3, 2))
