"""RiskPO mixed-VaR advantages: hand-computed cases (torch.quantile, linear interpolation)."""

from __future__ import annotations

import pytest
import torch

from entropy_rl.core.advantage import compute_advantages

EPS = 1e-6


def test_single_group_no_bundling_uniform_credit() -> None:
    # papers = responses [1, 0, 0, 0]; sorted [0, 0, 0, 1]: q(0.2) at pos 0.6 -> 0; q(0.9) at pos 2.7 -> 0.7
    # S = 1: a_R = (1 - 0.3 + 0 - 0.7)/0.7 = 0, a_C = 0 -> 0
    # S = 0: a_R = (0 - 0 + 0 - 0.7)/(0.7 + eps) = -1, a_C = -(0 - 0)^+/0.2 = 0 -> (1.5*0 - 1)/2.5 = -0.4
    a = compute_advantages("riskpo", torch.tensor([1.0, 0, 0, 0]), torch.zeros(4, dtype=torch.long),
                           bundle_size=1, quantile_scope="bundle", norm_by_std=False, credit="uniform")
    v = -0.7 / (0.7 + EPS) / 2.5
    torch.testing.assert_close(a, torch.tensor([0.0, v, v, v]))
    # norm_by_std: / std([1,0,0,0]) = 0.5 -> -0.8; credit "std": / question std 0.5 -> -1.6
    a = compute_advantages("riskpo", torch.tensor([1.0, 0, 0, 0]), torch.zeros(4, dtype=torch.long),
                           bundle_size=1, quantile_scope="bundle")
    torch.testing.assert_close(a, torch.tensor([0.0, -1.6, -1.6, -1.6]), atol=1e-4, rtol=0)


def test_bundle_of_two_questions_batch_quantiles() -> None:
    # group 0 rewards [1, 0] (rows 0, 1), group 1 rewards [1, 1] (rows 2, 3); bundle_size 2:
    # paper 0 = rows (0, 2): S = 2; paper 1 = rows (1, 3): S = 1.
    # batch quantiles of [1, 2]: q(0.2) = 1.2, q(0.9) = 1.9
    # S = 2: a_R = (0.8 - 0.1 + 1.2 - 1.9)/0.7 = 0, a_C = 0 -> 0
    # S = 1: a_R = (0 - 0 - 0.7)/0.7 = -1, a_C = -(0.2)/0.2 = -1 -> (1.5*-1 - 1)/2.5 = -1
    # / std([2, 1]) = 0.7071 -> -1.4142; credit std: row 1 / std([1, 0]) = 0.7071 -> -2; row 3: std 0 -> 1 -> -1.4142
    a = compute_advantages("riskpo", torch.tensor([1.0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]), bundle_size=2)
    torch.testing.assert_close(a, torch.tensor([0.0, -2.0, 0.0, -2**0.5]), atol=1e-4, rtol=0)


def test_all_advantages_non_positive_and_uniform_groups_zero() -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (40,), generator=g).float()
    gid = torch.arange(10).repeat_interleave(4)
    a = compute_advantages("riskpo", r, gid)
    assert (a <= 1e-7).all()  # natural baseline: every paper at or above q_hi gets 0, the rest < 0
    a = compute_advantages("riskpo", torch.ones(8), torch.tensor([0] * 4 + [1] * 4), bundle_size=1, quantile_scope="bundle")
    assert torch.equal(a, torch.zeros(8))


def test_singleton_and_unequal_groups() -> None:
    # group 7 is a singleton with bundle_size 1: one paper -> 0
    a = compute_advantages("riskpo", torch.tensor([0.0, 1, 0]), torch.tensor([7, 3, 3]), bundle_size=1)
    assert float(a[0]) == 0.0
    # bundle of groups sizes 3 and 2: only 2 papers; row 2 (third response of group 0) gets 0
    a = compute_advantages("riskpo", torch.tensor([1.0, 0, 0, 1, 0]), torch.tensor([0, 0, 0, 1, 1]), bundle_size=2)
    assert float(a[2]) == 0.0


def test_bad_params() -> None:
    with pytest.raises(ValueError):
        compute_advantages("riskpo", torch.ones(2), torch.zeros(2, dtype=torch.long), alpha_low=0.9, alpha_high=0.2)


def test_tied_bundle_does_not_explode() -> None:
    # regression (docs/LOG.md): two bundles of 5 questions x 2 responses; the second bundle's papers tie
    # (both sum to 2) while batch quantiles come from all papers, so a != 0 and the bundle std is 0
    rewards = torch.tensor([1.0, 0.0] * 5 + [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    group_index = torch.arange(20) // 2
    adv = compute_advantages("riskpo", rewards, group_index)
    assert torch.isfinite(adv).all() and adv.abs().max() < 100, adv
