"""CANON (methods.md §14): hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from entropy_rl.core.advantage import compute_advantages


def run(r, g, s, T=4, mask=None, **kw):
    r = torch.tensor(r, dtype=torch.float32)
    g = torch.tensor(g)
    ent = torch.tensor(s, dtype=torch.float32).unsqueeze(-1).expand(len(s), T).clone()
    m = torch.ones(len(s), T) if mask is None else mask
    return compute_advantages("canon", r, g, mask=m, old_entropy=ent, **kw)


def test_default_pure_inter_group() -> None:
    # s ascending = batch order: C- = {0, 1} (rewards 1, 1; mu- = 1), C+ = {2, 3} (rewards 0, 0; mu+ = 0)
    # lam = 1: C+: r - mu- = -1; C-: r - mu+ = +1; / L_max = 8
    a = run([1, 1, 0, 0], [0] * 4, [0.1, 0.2, 0.3, 0.4], max_length=8)
    torch.testing.assert_close(a, torch.tensor([0.125, 0.125, -0.125, -0.125]))


def test_alpha_beta_and_default_lmax_is_T() -> None:
    # same split; beta = 0.5: C+: (0 - 1 + 0.5) = -0.5; C-: (1 - 0 - 0.5) = 0.5; L_max = T = 4
    a = run([1, 1, 0, 0], [0] * 4, [0.1, 0.2, 0.3, 0.4], beta=0.5)
    torch.testing.assert_close(a, torch.tensor([0.5, 0.5, -0.5, -0.5]) / 4)
    # alpha = 2: C+: 0 - 2*1 = -2; C-: 2*1 - 0 = 2
    a = run([1, 1, 0, 0], [0] * 4, [0.1, 0.2, 0.3, 0.4], alpha=2.0, max_length=1)
    torch.testing.assert_close(a, torch.tensor([2.0, 2.0, -2.0, -2.0]))


def test_sort_by_entropy_not_batch_order() -> None:
    # s = [0.4, 0.1, 0.3, 0.2] -> ascending order idx 1, 3, 2, 0: C- = {1, 3} rewards (0, 1), mu- = 0.5;
    # C+ = {2, 0} rewards (0, 1), mu+ = 0.5. lam = 1: A = r - 0.5 on both halves.
    a = run([1, 0, 0, 1], [0] * 4, [0.4, 0.1, 0.3, 0.2], max_length=1)
    torch.testing.assert_close(a, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # rewards [1, 1, 0, 0] with the same s: C- = {1, 3} (1, 0) mu- = .5; C+ = {2, 0} (0, 1) mu+ = .5; intra (lam=0):
    # C-: r - mu- -> idx1 .5, idx3 -.5; C+: r - mu+ -> idx2 -.5, idx0 .5
    a = run([1, 1, 0, 0], [0] * 4, [0.4, 0.1, 0.3, 0.2], lam=0.0, max_length=1)
    torch.testing.assert_close(a, torch.tensor([0.5, 0.5, -0.5, -0.5]))


def test_lam_half_even_n_is_dr_grpo_over_lmax() -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (12,), generator=g).float()
    gid = torch.tensor([5] * 6 + [9] * 6)
    ent = torch.rand(12, 7, generator=g)
    a = compute_advantages("canon", r, gid, mask=torch.ones(12, 7), old_entropy=ent, lam=0.5, max_length=10)
    expected = compute_advantages("dr_grpo", r, gid) / 10
    torch.testing.assert_close(a, expected)


def test_odd_group_halves() -> None:
    # n = 3, m = 1. s = [0.3, 0.1, 0.2]: C- = {1} (r 0, mu- 0); C+ = {2, 0} (r 1, 1; mu+ 1)
    # lam = 1: C+: r - 0 = 1; C-: 0 - 1 = -1
    a = run([1, 0, 1], [0] * 3, [0.3, 0.1, 0.2], max_length=1)
    torch.testing.assert_close(a, torch.tensor([1.0, -1.0, 1.0]))


def test_ties_stable_and_singletons_zero_and_mask() -> None:
    # equal s: stable sort keeps batch order: C- = {0, 1}. Padding entropy (huge) is ignored by the mask.
    mask = torch.ones(5, 4)
    mask[0, 2:] = 0
    ent = torch.full((5, 4), 0.5)
    ent[0, 2:] = 100.0
    a = compute_advantages("canon", torch.tensor([1.0, 1, 0, 0, 1]), torch.tensor([0, 0, 0, 0, 3]),
                           mask=mask, old_entropy=ent, max_length=1)
    torch.testing.assert_close(a, torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0]))


def test_singleton_reward_is_the_official_codes_advantage() -> None:
    # group 5 is a singleton (r 0.7). Official code: the lone response is in C+ (m = 0) and both half means are 0,
    # so A = [lam (r - alpha * 0 + beta) + (1 - lam)(r - 0)] / L_max = (0.7 + 0.5 * 0.2) / 2 = 0.4
    r, g = torch.tensor([1.0, 0.0, 0.7]), torch.tensor([2, 2, 5])
    mask, ent = torch.ones(3, 2), torch.tensor([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]])
    kw = dict(mask=mask, old_entropy=ent, lam=0.5, alpha=3.0, beta=0.2, max_length=2)
    a = compute_advantages("canon", r, g, singleton="reward", **kw)
    assert float(a[2]) == pytest.approx(0.4)
    zero = compute_advantages("canon", r, g, **kw)  # the toolkit default: a lone response carries no signal
    assert float(zero[2]) == 0.0
    torch.testing.assert_close(a[:2], zero[:2])  # the rule touches singletons only
    with pytest.raises(ValueError, match="singleton"):
        compute_advantages("canon", r, g, singleton="mean", **kw)


def test_needs_entropy() -> None:
    with pytest.raises(ValueError, match="old_entropy"):
        compute_advantages("canon", torch.ones(2), torch.zeros(2, dtype=torch.long), mask=torch.ones(2, 3))
