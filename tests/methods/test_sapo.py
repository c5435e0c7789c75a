"""SAPO (arXiv:2511.20347, verl 0.9.1 `compute_policy_loss_sapo`): hand-computed cases, arithmetic in comments."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.policy_loss import policy_loss
from entropy_rl.methods.sapo import Params
from entropy_rl.presets import resolve


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1 x 4: log-ratios [0, 0.5, -0.5, ln 2] -> r = [1, 1.6487, 0.6065, 2]; A = [1, 1, -1, -2].

    tau = [1, 1, 1.05, 1.05] (tau_pos where A > 0, tau_neg elsewhere).
    """
    logp = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], requires_grad=True)
    old_logp = logp.detach() - torch.tensor([[0.0, 0.5, -0.5, math.log(2.0)]])
    return logp, old_logp, torch.tensor([[1.0, 1.0, -1.0, -2.0]])


def test_loss_is_minus_soft_gate_times_advantage() -> None:
    logp, old_logp, adv = hand_case()
    out = policy_loss("sapo", logp, old_logp, adv, torch.ones(1, 4))
    # f(r) = sigmoid(tau (r - 1)) 4 / tau; l = -f A
    # t0: sigmoid(0) * 4 = 2 -> -2
    # t1: sigmoid(0.64872) = 0.65672 -> f = 2.62689 -> -2.62689
    # t2: sigmoid(1.05 * (0.60653 - 1)) = sigmoid(-0.41314) = 0.39816 -> f = 0.39816 * 4 / 1.05 = 1.51680 -> +1.51680
    # t3: sigmoid(1.05) = 0.74077 -> f = 2.82200 -> -f * (-2) = 5.64400
    f = [4 * sigmoid(0.0), 4 * sigmoid(math.exp(0.5) - 1), 4 / 1.05 * sigmoid(1.05 * (math.exp(-0.5) - 1)),
         4 / 1.05 * sigmoid(1.05)]
    torch.testing.assert_close(out.per_token.detach(), torch.tensor([[-f[0], -f[1], f[2], 2 * f[3]]]))
    assert "policy/clipfrac" not in out.metrics  # nothing is clipped


def test_gradient_is_the_gate_derivative_times_ratio() -> None:
    logp, old_logp, adv = hand_case()
    out = policy_loss("sapo", logp, old_logp, adv, torch.ones(1, 4))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    # d/dlogp -f(r) A = -A f'(r) r, f'(r) = 4 s (1 - s), s = sigmoid(tau (r - 1))
    # t0: -1 * 4 * 0.5 * 0.5 * 1 = -1 (on-policy: PPO's -A)
    # t1: -1 * 4 * 0.65672 * 0.34328 * 1.64872 = -0.90175 * 1.64872 = -1.48674
    # t2: +1 * 4 * 0.39816 * 0.60184 * 0.60653 = 0.95851 * 0.60653 = 0.58137
    # t3: +2 * 4 * 0.74077 * 0.25923 * 2 = 2 * 0.76811 * 2 = 3.07244
    def w(r: float, tau: float) -> float:
        s = sigmoid(tau * (r - 1.0))
        return 4 * s * (1 - s) * r

    expected = [-w(1.0, 1.0), -w(math.exp(0.5), 1.0), w(math.exp(-0.5), 1.05), 2 * w(2.0, 1.05)]
    torch.testing.assert_close(g, torch.tensor([expected]))
    # method/sapo/grad_weight_mean = token mean of 4 s (1 - s) r
    mean_w = (w(1.0, 1.0) + w(math.exp(0.5), 1.0) + w(math.exp(-0.5), 1.05) + w(2.0, 1.05)) / 4
    assert float(out.metrics["method/sapo/grad_weight_mean"]) == pytest.approx(mean_w, rel=1e-6)


def test_larger_temperature_damps_off_policy_gradients_faster() -> None:
    # r = 2, A = -1: weight 4 s (1 - s) r with s = sigmoid(tau):
    # tau 1.05 -> 0.76811 * 2 = 1.53622; tau 3 -> 4 * 0.95257 * 0.04743 * 2 = 0.36149
    logp = torch.tensor([[-1.0]], requires_grad=True)
    old_logp, adv = logp.detach() - math.log(2.0), torch.tensor([[-1.0]])
    grads = []
    for tau in (1.05, 3.0):
        out = policy_loss("sapo", logp, old_logp, adv, torch.ones(1, 1), tau_neg=tau)
        grads.append(float(torch.autograd.grad(out.per_token.sum(), logp)[0]))
    assert grads[0] == pytest.approx(4 * sigmoid(1.05) * (1 - sigmoid(1.05)) * 2, rel=1e-6)
    assert grads[1] == pytest.approx(4 * sigmoid(3.0) * (1 - sigmoid(3.0)) * 2, rel=1e-6)
    assert grads[1] < 0.25 * grads[0]


def test_on_policy_gradient_equals_ppo_clip_for_any_temperature() -> None:
    g = torch.Generator().manual_seed(1)
    logp = (-torch.rand(3, 5, generator=g) * 3).requires_grad_(True)
    adv, mask = torch.randn(3, 5, generator=g), torch.ones(3, 5)
    out = policy_loss("sapo", logp, logp.detach(), adv, mask, tau_pos=2.0, tau_neg=7.0)
    ref = policy_loss("ppo_clip", logp, logp.detach(), adv, mask)
    g_sapo, g_ppo = (torch.autograd.grad(o.per_token.sum(), logp)[0] for o in (out, ref))
    torch.testing.assert_close(g_sapo, g_ppo)  # 4 * 0.5 * 0.5 * 1 = 1 -> both -A


def test_zero_advantage_gives_zero_loss_and_gradient() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    out = policy_loss("sapo", logp, logp.detach() - 0.3, torch.zeros(1, 2), torch.ones(1, 2))
    assert float(out.per_token.detach().abs().sum()) == 0.0
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    assert float(g.abs().sum()) == 0.0


def test_variant_and_defaults() -> None:
    assert Params() == Params(tau_pos=1.0, tau_neg=1.05)  # paper / verl ActorConfig
    algorithm = resolve("sapo").overrides["algorithm"]
    assert algorithm["method"] == "sapo" and algorithm["loss_agg_mode"] == "seq-mean-token-mean"


@pytest.mark.parametrize("bad", [{"tau_pos": 0.0}, {"tau_neg": -1.0}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        Params(**bad)
