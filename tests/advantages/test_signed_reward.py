"""signed_reward: A = 2 r - 1, no baseline (the +-1 rewards of arXiv:2506.01347)."""

from __future__ import annotations

import torch

from entropy_rl.core.advantage import compute_advantages


def test_binary_rewards_become_plus_minus_one_without_a_group_baseline() -> None:
    # group 0 = [1, 0] (mixed), group 1 = [1, 1] (all correct), group 2 = [0] (singleton)
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    g = torch.tensor([0, 0, 1, 1, 2])
    # 2r - 1 = [1, -1, 1, 1, -1]: the all-correct group and the singleton still train (grpo would give them 0)
    torch.testing.assert_close(compute_advantages("signed_reward", r, g), torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0]))
    assert float(compute_advantages("grpo", r, g)[2]) == 0.0


def test_fractional_rewards_map_linearly() -> None:
    # 0.25 -> -0.5, 0.5 -> 0, 0.75 -> 0.5
    a = compute_advantages("signed_reward", torch.tensor([0.25, 0.5, 0.75]), torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(a, torch.tensor([-0.5, 0.0, 0.5]))
