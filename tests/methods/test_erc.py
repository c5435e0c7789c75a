"""ERC (arXiv:2512.05591, Kwai-Klear/ERC `compute_policy_loss_grpo_erc`): hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from entropy_rl.core.policy_loss import get_policy_loss, policy_loss
from entropy_rl.methods.erc import Params
from entropy_rl.presets import resolve

ENTRY = get_policy_loss("erc")


def hand_case() -> dict:
    """1 x 5 on-policy (r = 1), so PPO's loss is -A and its gradient -A.

    H_old = [1, 1, 1, 1, 0]; H_cur = [1, 1.04, 0.9, 1.2, 0]
    rho = (H + 1e-8) / (H_old + 1e-8) = [1, 1.04, 0.9, 1.2, 1]   bounds (0.95, 1.05), strict
    keep = [yes, yes, no (0.9 <= 0.95), no (1.2 >= 1.05), yes (0 / 0 guarded to 1)]
    """
    logp = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -3.0]], requires_grad=True)
    entropy = torch.tensor([[1.0, 1.04, 0.9, 1.2, 0.0]], requires_grad=True)
    return {"logp": logp, "old_logp": logp.detach(), "advantages": torch.tensor([[1.0, -1.0, 2.0, -2.0, 0.5]]),
            "mask": torch.ones(1, 5), "entropy": entropy, "old_entropy": torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])}


def test_out_of_bound_entropy_ratio_drops_the_gradient_but_keeps_the_value() -> None:
    case = hand_case()
    out = policy_loss("erc", **case)
    torch.testing.assert_close(out.per_token.detach(), torch.tensor([[-1.0, 1.0, -2.0, 2.0, -0.5]]))  # -A r, r = 1
    g_logp, g_h = torch.autograd.grad(out.per_token.sum(), [case["logp"], case["entropy"]], allow_unused=True)
    torch.testing.assert_close(g_logp, torch.tensor([[-1.0, 1.0, 0.0, 0.0, -0.5]]))  # -A where kept
    assert g_h is None  # rho only selects: no gradient through H_cur
    assert float(out.metrics["method/erc/dropped_frac"]) == pytest.approx(0.4)  # 2 of 5
    # mean rho = (1 + 1.04 + 0.9 + 1.2 + 1) / 5 = 1.028
    assert float(out.metrics["method/erc/ratio_mean"]) == pytest.approx(1.028, rel=1e-6)


def test_bounds_are_strict() -> None:
    # rho = 0.5 / 1 = 0.5 exactly (the 1e-8 guards vanish in float32) and 1.5: both on a bound -> dropped
    case = hand_case()
    case.update(entropy=torch.tensor([[0.5, 1.5, 1.0, 1.0, 1.0]]), old_entropy=torch.ones(1, 5))
    out = policy_loss("erc", **case, h_ratio_low=0.5, h_ratio_high=1.5)
    (g,) = torch.autograd.grad(out.per_token.sum(), case["logp"])
    torch.testing.assert_close(g, torch.tensor([[0.0, 0.0, -2.0, 2.0, -0.5]]))


def test_ppo_clip_still_applies_inside_the_entropy_bounds() -> None:
    # rho = 1 everywhere; r = e^0.5 = 1.65 > 1.2 with A = +1: PPO-clipped -> value -1.2, gradient 0
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    out = policy_loss("erc", logp, logp.detach() - torch.tensor([[0.5, 0.0]]), torch.tensor([[1.0, 1.0]]),
                      torch.ones(1, 2), entropy=torch.ones(1, 2), old_entropy=torch.ones(1, 2))
    torch.testing.assert_close(out.per_token.detach(), torch.tensor([[-1.2, -1.0]]))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    torch.testing.assert_close(g, torch.tensor([[0.0, -1.0]]))
    assert float(out.metrics["policy/clipfrac"]) == pytest.approx(0.5)


def test_missing_entropy_is_a_clear_error() -> None:
    logp = torch.zeros(1, 2, requires_grad=True)
    with pytest.raises(ValueError, match="method 'erc' needs `entropy`"):
        policy_loss("erc", logp, logp.detach(), torch.ones(1, 2), torch.ones(1, 2), old_entropy=torch.ones(1, 2))


def test_variant_holds_the_dapo_recipe() -> None:
    p = ENTRY.make_params(**resolve("erc").overrides["algorithm"]["method_params"])
    assert (p.h_ratio_low, p.h_ratio_high, p.eps_low, p.eps_high, p.clip_ratio_c) == (0.95, 1.05, 0.2, 0.28, 10.0)


@pytest.mark.parametrize("bad", [{"h_ratio_low": 1.0}, {"h_ratio_high": 0.99}, {"h_ratio_low": -0.1},
                                 {"clip_ratio_c": 0.5}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
