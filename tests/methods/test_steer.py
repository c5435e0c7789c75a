"""STEER (methods.md section 2): hand-computed Omega and weights, arithmetic in comments."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.policy_loss import POLICY_LOSSES, get_policy_loss, policy_loss, run_select
from entropy_rl.core.types import PolicyInputs, StepContext, TokenWeights
from entropy_rl.methods.steer import Params, steer_omega
from entropy_rl.presets import resolve

ENTRY = get_policy_loss("steer")


def variant_params(name: str) -> Params:
    """The Params a packaged variant sets (entropy_rl/presets/methods/<name>.yaml), checked to be a steer variant."""
    algorithm = resolve(name).overrides["algorithm"]
    assert algorithm["method"] == "steer"
    return ENTRY.make_params(**algorithm.get("method_params", {}))


PROBS = [0.5, 0.25, 0.8]


def hand_case(adv: float = 1.0, entropy: list[float] | None = None) -> PolicyInputs:
    """1 x 3, on-policy (p_old = p, r = 1), A = adv, H_old = 1 nat.

    Omega = (A / p_old) p (1 - p)(log p + H) = A (1 - p)(log p + 1):
      t0  p = 0.5 : 0.5  * (-0.693147 + 1) =  0.153426
      t1  p = 0.25: 0.75 * (-1.386294 + 1) = -0.289721
      t2  p = 0.8 : 0.2  * (-0.223144 + 1) =  0.155371
    |Omega| = [0.153426, 0.289721, 0.155371], mean 0.199506, max 0.289721 (t1)
    """
    logp = torch.log(torch.tensor([PROBS])).requires_grad_(True)
    h = torch.tensor([entropy or [1.0, 1.0, 1.0]])
    return PolicyInputs(logp, logp.detach().clone(), torch.full((1, 3), adv), torch.ones(1, 3), old_entropy=h)


OMEGA = [0.15342641, -0.28972077, 0.15537129]


def test_hand_omega() -> None:
    x = hand_case()
    torch.testing.assert_close(steer_omega(x.logp.detach(), x.old_logp, x.adv, x.old_entropy), torch.tensor([OMEGA]))


def test_omega_off_policy_carries_the_ratio() -> None:
    # p_old = p / 2 (old_logp = logp - ln 2): A / p_old doubles, so Omega = r A (1 - p)(log p + H) with r = 2
    x = hand_case()
    om = steer_omega(x.logp.detach(), x.old_logp - math.log(2.0), x.adv, x.old_entropy)
    torch.testing.assert_close(om, 2 * torch.tensor([OMEGA]))


def test_exp_map_hand_weights() -> None:
    # k = -ln 0.8 / max(0.289721, 0.02) = 0.223144 / 0.289721 = 0.770202
    # w = clamp(exp(-k |Omega|), 0.8, 1):
    #   t0 exp(-0.770202 * 0.153426) = exp(-0.118169) = 0.888546
    #   t1 exp(-0.770202 * 0.289721) = exp(ln 0.8)    = 0.8       (the max-|Omega| token gets lambda_min)
    #   t2 exp(-0.770202 * 0.155371) = exp(-0.119667) = 0.887216
    sel = run_select(ENTRY, Params(), hand_case(), StepContext(), None)
    torch.testing.assert_close(sel["weight"], torch.tensor([[0.88854557, 0.8, 0.88721557]]))
    assert float(sel.metrics["method/steer/weight_min"]) == pytest.approx(0.8)
    assert float(sel.metrics["method/steer/weight_mean"]) == pytest.approx((0.88854557 + 0.8 + 0.88721557) / 3)
    assert float(sel.metrics["method/steer/omega_abs_mean"]) == pytest.approx(0.19950616, abs=1e-6)
    # p99 by linear interpolation at 0.99 * (3 - 1) = 1.98 between sorted [0.153426, 0.155371, 0.289721]:
    # 0.155371 + 0.98 * (0.289721 - 0.155371) = 0.287034
    assert float(sel.metrics["method/steer/omega_abs_p99"]) == pytest.approx(0.28703378, abs=1e-6)


def test_linear_map_hand_weights() -> None:
    # [w_min, w_max] = [0.8, 1.2]; Omega_min = 0.153426 (t0), Omega_max = 0.289721 (t1)
    # slope = 0.4 / (0.289721 - 0.153426) = 0.4 / 0.136295 = 2.934824
    #   t0 1.2 - 0                       = 1.2
    #   t1 1.2 - 0.136295 * 2.934824     = 0.8
    #   t2 1.2 - (0.155371 - 0.153426) * 2.934824 = 1.2 - 0.005708 = 1.194292
    sel = run_select(ENTRY, Params(weight_map="linear", weight_max=1.2), hand_case(), StepContext(), None)
    torch.testing.assert_close(sel["weight"], torch.tensor([[1.2, 0.8, 1.19429212]]))


def test_linear_map_with_equal_omegas_gives_the_midpoint() -> None:
    # A = 0 -> Omega = 0 everywhere -> max == min -> w = (0.8 + 1.2) / 2 = 1.0
    sel = run_select(ENTRY, Params(weight_map="linear", weight_max=1.2), hand_case(adv=0.0), StepContext(), None)
    torch.testing.assert_close(sel["weight"], torch.ones(1, 3))


def test_exp_map_floor_keeps_small_batches_near_one() -> None:
    # A = 0.01 -> |Omega| = [0.0015343, 0.0028972, 0.0015537], max 0.0028972 < 0.02 -> divide by the floor 0.02:
    # k = 0.223144 / 0.02 = 11.157178;  w = exp(-k |Omega|) = [0.983028, 0.968192, 0.982814]; none reaches 0.8
    sel = run_select(ENTRY, Params(), hand_case(adv=0.01), StepContext(), None)
    torch.testing.assert_close(sel["weight"], torch.tensor([[0.98302762, 0.96819220, 0.98281434]]))


def test_first_order_omega_is_p_times_official() -> None:
    # p * Omega = [0.5 * 0.153426, 0.25 * -0.289721, 0.8 * 0.155371] = [0.076713, -0.072430, 0.124297]
    # the max |.| is now t2: k = 0.223144 / 0.124297 = 1.795244 -> w = [0.871344, 0.878069, 0.8]
    x = hand_case()
    om = steer_omega(x.logp.detach(), x.old_logp, x.adv, x.old_entropy, "first_order")
    torch.testing.assert_close(om, torch.tensor([[0.07671320, -0.07243019, 0.12429703]]))
    sel = run_select(ENTRY, Params(omega="first_order"), x, StepContext(), None)
    torch.testing.assert_close(sel["weight"], torch.tensor([[0.87134357, 0.87806918, 0.8]]))


def test_non_finite_omega_is_zero_and_masked_weights_are_zero() -> None:
    # H_old = nan at t0 -> Omega_0 non-finite -> 0 -> weight exp(0) = 1; the rest as in the hand case but
    # k uses max over {0, 0.289721, 0.155371}
    x = hand_case(entropy=[float("nan"), 1.0, 1.0])
    sel = run_select(ENTRY, Params(), x, StepContext(), None)
    torch.testing.assert_close(sel["weight"], torch.tensor([[1.0, 0.8, 0.88721557]]))
    x = PolicyInputs(x.logp, x.old_logp, x.adv, torch.tensor([[1.0, 1.0, 0.0]]), old_entropy=torch.ones(1, 3))
    assert float(run_select(ENTRY, Params(), x, StepContext(), None)["weight"][0, 2]) == 0.0


def test_weights_are_detached_gradient_is_w_times_ppo_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(2, 4, generator=g) * 3).requires_grad_(True)
    old_logp = logp.detach() + 0.3 * torch.randn(2, 4, generator=g)
    adv = torch.randn(2, 1, generator=g).expand(2, 4)
    h = torch.rand(2, 4, generator=g) * 2
    out = policy_loss("steer", logp, old_logp, adv, torch.ones(2, 4), old_entropy=h)
    (g_steer,) = torch.autograd.grad(out.per_token.sum(), logp)
    x = PolicyInputs(logp, old_logp, adv, torch.ones(2, 4), old_entropy=h)
    w = run_select(ENTRY, Params(), x, StepContext(), None)["weight"]
    assert not w.requires_grad
    ref = POLICY_LOSSES.get("ppo_clip")
    ppo_out = ref.obj.loss(x, ref.make_params(eps_low=0.2, eps_high=0.28, clip_ratio_c=10.0), TokenWeights(), StepContext())
    (g_ppo,) = torch.autograd.grad(ppo_out.per_token.sum(), logp)
    torch.testing.assert_close(g_steer, w * g_ppo)
    assert float(w.min()) == pytest.approx(0.8)  # the max-|Omega| token


def test_weight_min_one_is_all_ones() -> None:
    sel = run_select(ENTRY, Params(weight_min=1.0), hand_case(), StepContext(), None)
    torch.testing.assert_close(sel["weight"], torch.ones(1, 3))


def test_variants_hold_the_scripts_settings() -> None:
    assert variant_params("steer") == Params()
    lin = variant_params("steer_linear")
    assert (lin.weight_map, lin.weight_min, lin.weight_max) == ("linear", 0.8, 1.2)
    assert "old_entropy" in POLICY_LOSSES.get("steer").obj.inputs


@pytest.mark.parametrize(
    "bad", [{"weight_map": "log"}, {"omega": "exact"}, {"weight_min": 0.0}, {"weight_min": 1.1}, {"clip_ratio_c": 0.5}]
)
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
