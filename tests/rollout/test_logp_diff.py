"""rollout/logp_diff_mean and rollout/logp_diff_max: engine vs trainer log-probs over response tokens only."""

import pytest
import torch

from entropy_rl.metrics.names import is_known
from entropy_rl.rollout.base import logp_diff_metrics


def test_mean_and_max_of_the_absolute_difference_on_the_mask() -> None:
    sampling = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -9.0, 0.0]])
    trainer = torch.tensor([[-1.5, -2.0, -1.0], [-0.25, -1.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # off-mask differences (2 and 7) are ignored
    m = logp_diff_metrics(sampling, trainer, mask)
    assert m["rollout/logp_diff_mean"] == pytest.approx((0.5 + 0 + 0.25 + 8) / 4)
    assert m["rollout/logp_diff_max"] == pytest.approx(8.0)
    assert all(is_known(k) for k in m)


def test_no_response_tokens_give_zero() -> None:
    z = torch.zeros(2, 3)
    assert logp_diff_metrics(z - 1, z, z) == {"rollout/logp_diff_mean": 0.0, "rollout/logp_diff_max": 0.0}
