"""PPO clipped surrogate, hand-computed (torchtune style: the arithmetic is in the comments)."""

import math

import pytest
import torch

from entropy_rl import policy_loss
from entropy_rl.core.ppo import clipped_surrogate


def test_unclipped_region_is_minus_a_r() -> None:
    # r = e^0.1 = 1.10517 inside [0.8, 1.2]; A = 2 -> loss = -2 * 1.10517
    s = clipped_surrogate(torch.tensor([[0.1]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]))
    assert s.loss.item() == pytest.approx(-2 * math.exp(0.1))
    assert not s.clipped.any()


def test_upper_clip_binds_for_positive_advantage() -> None:
    # r = e^0.5 = 1.6487 > 1.2; A = 1: max(-1.6487, -1.2) = -1.2, no gradient
    logp = torch.tensor([[0.5]], requires_grad=True)
    s = clipped_surrogate(logp, torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    assert s.loss.item() == pytest.approx(-1.2)
    assert s.clipped_high.item() and not s.clipped_low.item()
    (g,) = torch.autograd.grad(s.loss.sum(), logp)
    assert g.item() == 0.0


def test_clip_higher_moves_the_ceiling() -> None:
    # eps_high = 0.28: r = 1.25 is now inside -> loss = -1.25
    s = clipped_surrogate(torch.tensor([[math.log(1.25)]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), eps_high=0.28)
    assert s.loss.item() == pytest.approx(-1.25)


def test_lower_clip_binds_for_negative_advantage() -> None:
    # r = e^-0.5 = 0.6065 < 0.8; A = -1: max(0.6065, 0.8) = 0.8
    s = clipped_surrogate(torch.tensor([[-0.5]]), torch.tensor([[0.0]]), torch.tensor([[-1.0]]))
    assert s.loss.item() == pytest.approx(0.8)
    assert s.clipped_low.item()


def test_dual_clip_caps_negative_advantage_losses() -> None:
    # r = e^2 = 7.389, A = -1: PPO gives 7.389; dual clip c = 3 caps at -c*A = 3
    s = clipped_surrogate(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[-1.0]]), clip_ratio_c=3.0)
    assert s.loss.item() == pytest.approx(3.0)
    assert s.clipped_dual.item()
    s = clipped_surrogate(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[-1.0]]), clip_ratio_c=None)
    assert s.loss.item() == pytest.approx(math.exp(2.0))


def test_log_ratio_is_clamped() -> None:
    s = clipped_surrogate(torch.tensor([[100.0]]), torch.tensor([[0.0]]), torch.tensor([[0.0]]))
    assert torch.isfinite(s.ratio).all() and s.ratio.item() == pytest.approx(math.exp(20.0))


def test_public_api_and_params_validation() -> None:
    logp = torch.zeros(2, 3, requires_grad=True)
    out = policy_loss("ppo_clip", logp, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), torch.ones(2, 3), eps_high=0.28)
    assert out.per_token.shape == (2, 3)
    assert set(out.metrics) >= {"policy/clipfrac", "policy/approx_kl"}
    with pytest.raises(ValueError, match="eps_low"):
        policy_loss("ppo_clip", logp, logp.detach(), torch.zeros(2), torch.ones(2, 3), eps_low=-0.1)
    with pytest.raises(TypeError, match="did you mean 'eps_high'"):
        policy_loss("ppo_clip", logp, logp.detach(), torch.zeros(2), torch.ones(2, 3), eps_hihg=0.3)
    with pytest.raises(KeyError, match="ppo_clip"):
        policy_loss("ppo_clipp", logp, logp.detach(), torch.zeros(2), torch.ones(2, 3))


def test_entropy_bonus_needs_entropy_and_subtracts_it() -> None:
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="needs `entropy`"):
        policy_loss("entropy_bonus", logp, logp, torch.zeros(1), torch.ones(1, 2))
    ent = torch.tensor([[0.5, 1.0]])
    # A = 0 so the PPO part is 0; loss = -coef * H = -0.1 * [0.5, 1.0]
    out = policy_loss("entropy_bonus", logp, logp, torch.zeros(1), torch.ones(1, 2), entropy=ent, coef=0.1)
    torch.testing.assert_close(out.per_token, torch.tensor([[-0.05, -0.1]]))
