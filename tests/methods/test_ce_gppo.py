"""CE-GPPO (arXiv:2509.20712, Kwai-Klear/CE-GPPO `compute_gppo_loss_general_beta`): hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.policy_loss import POLICY_LOSSES, get_policy_loss, policy_loss
from entropy_rl.methods.ce_gppo import Params
from entropy_rl.presets import resolve

ENTRY = get_policy_loss("ce_gppo")


def hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1 x 4, eps 0.2 / 0.2, dual clip c = 3.

    t0: A = +1, r = 1.5 > 1.2   clipped high (PPO: gradient 0)
    t1: A = -1, r = 0.5 < 0.8   clipped low  (PPO: gradient 0)
    t2: A = +1, r = 1.1         inside
    t3: A = -1, r = 4   > c = 3 dual-clipped (gradient 0 in both)
    """
    logp = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], requires_grad=True)
    old_logp = logp.detach() - torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1), math.log(4.0)]])
    return logp, old_logp, torch.tensor([[1.0, -1.0, 1.0, -1.0]])


def test_value_is_ppo_and_clipped_tokens_get_bounded_gradients() -> None:
    logp, old_logp, adv = hand_case()
    out = policy_loss("ce_gppo", logp, old_logp, adv, torch.ones(1, 4), beta1=0.75, beta2=1.0)
    # values (PPO's): t0 -1.2; t1 -(-1)(0.8) = 0.8; t2 -1.1; t3 dual -c A = 3
    torch.testing.assert_close(out.per_token.detach(), torch.tensor([[-1.2, 0.8, -1.1, 3.0]]))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    # t0: -beta2 (1 + eps_high) A = -1 * 1.2 * 1 = -1.2   t1: -beta1 (1 - eps_low) A = -0.75 * 0.8 * (-1) = 0.6
    # t2: -A r = -1.1                                      t3: 0 (dual clip)
    torch.testing.assert_close(g, torch.tensor([[-1.2, 0.6, -1.1, 0.0]]))
    assert float(out.metrics["policy/clipfrac"]) == pytest.approx(0.75)  # t0, t1, t3 (PPO meaning)
    assert float(out.metrics["method/ce_gppo/restored_frac"]) == pytest.approx(0.5)  # t0, t1


def test_betas_scale_each_side_independently() -> None:
    logp, old_logp, adv = hand_case()
    out = policy_loss("ce_gppo", logp, old_logp, adv, torch.ones(1, 4), beta1=0.25, beta2=0.0)
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    # t0: beta2 = 0 -> 0 (PPO); t1: -0.25 * 0.8 * (-1) = 0.2
    torch.testing.assert_close(g, torch.tensor([[0.0, 0.2, -1.1, 0.0]]))
    assert float(out.metrics["method/ce_gppo/restored_frac"]) == pytest.approx(0.25)  # t1 only


def test_zero_betas_reproduce_ppo_clip_value_and_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    logp = (-torch.rand(4, 6, generator=g) * 3).requires_grad_(True)
    old_logp = logp.detach() + 0.6 * torch.randn(4, 6, generator=g)
    adv, mask = torch.randn(4, 6, generator=g), torch.ones(4, 6)
    out = policy_loss("ce_gppo", logp, old_logp, adv, mask, beta1=0.0, beta2=0.0)
    ref = policy_loss("ppo_clip", logp, old_logp, adv, mask)
    torch.testing.assert_close(out.per_token, ref.per_token)
    g_out, g_ref = (torch.autograd.grad(o.per_token.sum(), logp)[0] for o in (out, ref))
    torch.testing.assert_close(g_out, g_ref)
    assert float(out.metrics["policy/clipfrac"]) > 0  # the case does clip


def test_beta_one_is_official_gppo_gradient_from_r_over_sg_r() -> None:
    # Official: l = -beta (1 + eps) r / sg(r) A on a clipped-high token; its gradient is -beta (1 + eps) A grad logp.
    logp, old_logp, adv = hand_case()
    ratio = torch.exp(logp - old_logp)
    official = -1.0 * 1.2 * ratio[0, 0] / ratio[0, 0].detach() * adv[0, 0]
    (g_official,) = torch.autograd.grad(official, logp)
    out = policy_loss("ce_gppo", logp, old_logp, adv, torch.ones(1, 4), beta1=1.0, beta2=1.0)
    (g,) = torch.autograd.grad(out.per_token[0, 0], logp)
    torch.testing.assert_close(g, g_official)


def test_restored_gradient_survives_the_log_ratio_clamp() -> None:
    # log r = 25 > 20: core.ppo clamps the ratio (no gradient through it), but the restored term does not use it
    logp = torch.tensor([[-1.0]], requires_grad=True)
    out = policy_loss("ce_gppo", logp, logp.detach() - 25.0, torch.tensor([[1.0]]), torch.ones(1, 1))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    torch.testing.assert_close(g, torch.tensor([[-1.2]]))  # -beta2 (1 + 0.2) A, beta2 = 1


def test_variant_holds_the_7b_recipe() -> None:
    p = ENTRY.make_params(**resolve("ce_gppo").overrides["algorithm"]["method_params"])
    assert (p.beta1, p.beta2, p.eps_low, p.eps_high, p.clip_ratio_c) == (0.75, 1.0, 0.2, 0.2, 10.0)
    assert dict(POLICY_LOSSES.get("ce_gppo").obj.neutral) == {"beta1": 0.0, "beta2": 0.0}


@pytest.mark.parametrize("bad", [{"beta1": -0.1}, {"beta2": -1.0}, {"clip_ratio_c": 1.0}, {"eps_low": -0.2}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
