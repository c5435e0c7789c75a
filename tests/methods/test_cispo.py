"""CISPO (arXiv:2506.13585, verl 0.9.1 `compute_policy_loss_cispo`): hand-computed cases, arithmetic in comments."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.policy_loss import POLICY_LOSSES, get_policy_loss, policy_loss
from entropy_rl.core.types import PolicyInputs, StepContext, TokenWeights
from entropy_rl.methods.cispo import Params
from entropy_rl.presets import resolve

ENTRY = get_policy_loss("cispo")


def hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1 x 4: log-ratios [0.5, -0.5, 0, 0.1] -> r = [1.6487, 0.6065, 1, 1.1052]; A = [1, -1, 2, -1].

    eps 0.2 / 0.2 -> w = clip(r, 0.8, 1.2) = [1.2, 0.8, 1.0, 1.1052] (t0 capped, t1 floored).
    """
    logp = torch.tensor([[-1.0, -1.0, -2.0, -0.5]], requires_grad=True)
    old_logp = logp.detach() - torch.tensor([[0.5, -0.5, 0.0, 0.1]])
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    return logp, old_logp, adv


def test_loss_is_minus_clipped_weight_times_advantage_times_logp() -> None:
    logp, old_logp, adv = hand_case()
    out = policy_loss("cispo", logp, old_logp, adv, torch.ones(1, 4))
    # l = -w A logp: t0 -1.2 * 1 * (-1) = 1.2; t1 -0.8 * (-1) * (-1) = -0.8; t2 -1 * 2 * (-2) = 4;
    # t3 -e^0.1 * (-1) * (-0.5) = -0.5 e^0.1 = -0.55259
    expected = torch.tensor([[1.2, -0.8, 4.0, -0.5 * math.exp(0.1)]])
    torch.testing.assert_close(out.per_token.detach(), expected)
    assert float(out.metrics["policy/clipfrac"]) == pytest.approx(0.5)  # t0 and t1 clipped
    assert float(out.metrics["policy/clipfrac_low"]) == pytest.approx(0.25)
    assert float(out.metrics["policy/clipfrac_high"]) == pytest.approx(0.25)
    # (1.2 + 0.8 + 1 + 1.10517) / 4 = 1.02629
    assert float(out.metrics["method/cispo/weight_mean"]) == pytest.approx((3.0 + math.exp(0.1)) / 4, rel=1e-6)


def test_every_token_keeps_its_gradient_where_ppo_drops_it() -> None:
    logp, old_logp, adv = hand_case()
    out = policy_loss("cispo", logp, old_logp, adv, torch.ones(1, 4))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    # d/dlogp (-w A logp) = -w A (w is a constant): [-1.2, 0.8, -2, e^0.1]
    torch.testing.assert_close(g, torch.tensor([[-1.2, 0.8, -2.0, math.exp(0.1)]]))
    ref = policy_loss("ppo_clip", logp, old_logp, adv, torch.ones(1, 4))
    (g_ppo,) = torch.autograd.grad(ref.per_token.sum(), logp)
    # PPO: t0 (A > 0, r > 1.2) and t1 (A < 0, r < 0.8) are clipped -> 0; t2 -A r = -2; t3 -A r = e^0.1
    torch.testing.assert_close(g_ppo, torch.tensor([[0.0, 0.0, -2.0, math.exp(0.1)]]))


def test_no_gradient_flows_through_the_weight() -> None:
    # r = e^0.1 is inside the clip: were w not detached, the gradient would be -A (r logp)' = -A r (1 + logp).
    logp = torch.tensor([[-0.5]], requires_grad=True)
    out = policy_loss("cispo", logp, logp.detach() - 0.1, torch.tensor([[1.0]]), torch.ones(1, 1))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    torch.testing.assert_close(g, torch.tensor([[-math.exp(0.1)]]))  # -w A = -e^0.1, not -e^0.1 * 0.5


def test_on_policy_gradient_equals_ppo_clip() -> None:
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g) * 3).requires_grad_(True)
    adv, mask = torch.randn(3, 5, generator=g), torch.ones(3, 5)
    grads = []
    for name in ("cispo", "ppo_clip"):
        out = policy_loss(name, logp, logp.detach(), adv, mask)  # r = 1: w = 1, PPO unclipped
        grads.append(torch.autograd.grad(out.per_token.sum(), logp)[0])
    torch.testing.assert_close(grads[0], grads[1])  # both -A


def test_paper_variant_has_no_floor() -> None:
    p = ENTRY.make_params(**resolve("cispo").overrides["algorithm"]["method_params"])
    assert (p.eps_low, p.eps_high) == (1.0, 0.28)
    # r = e^-3 = 0.0498 with A = -1: floor 1 - 1 = 0, so w = r; r = e^1 with A = 1: capped at 1.28
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    x = PolicyInputs(logp, logp.detach() - torch.tensor([[-3.0, 1.0]]), torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2))
    out = ENTRY.obj.loss(x, p, TokenWeights(), StepContext())
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    torch.testing.assert_close(g, torch.tensor([[math.exp(-3.0), -1.28]]))  # -w A


def test_default_params_are_verls_and_registration_has_no_neutral() -> None:
    assert Params() == Params(eps_low=0.2, eps_high=0.2)  # verl ActorConfig clip_ratio_low / _high
    assert POLICY_LOSSES.get("cispo").obj.neutral is None


@pytest.mark.parametrize("bad", [{"eps_low": -0.1}, {"eps_high": -1.0}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        Params(**bad)
