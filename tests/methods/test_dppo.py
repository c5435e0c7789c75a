"""DPPO (arXiv:2602.04879, verl 0.9.1 `compute_policy_loss_dppo_tv` / `_kl`): hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.policy_loss import get_policy_loss, policy_loss
from entropy_rl.core.types import PolicyInputs
from entropy_rl.methods.dppo import Params, binary_kl, trust_region
from entropy_rl.presets import resolve

ENTRY = get_policy_loss("dppo")


def probs_case(p_old: list[float], p: list[float], adv: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1 x n log-probs from probabilities: (logp with grad, old_logp, A)."""
    logp = torch.tensor([p]).log().requires_grad_(True)
    return logp, torch.tensor([p_old]).log(), torch.tensor([adv])


# TV case, delta 0.15 / 0.15:           p_old  p      A    p - p_old  inside?
TV_OLD = [0.5, 0.5, 1e-4, 0.9, 0.9, 0.5]  # t0: 0.5 -> 0.7, +1: +0.2 > 0.15      no  (A > 0 pushes up: capped above)
TV_NEW = [0.7, 0.6, 1e-2, 0.7, 0.8, 0.9]  # t1: 0.5 -> 0.6, +1: +0.1             yes
TV_ADV = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]  # t2: 1e-4 -> 1e-2, +1: +0.0099 (r = 100) yes (PPO would clip r = 100)
#                                        t3: 0.9 -> 0.7, -1: -0.2 < -0.15       no  (A < 0 pushes down: floored)
#                                        t4: 0.9 -> 0.8, -1: -0.1               yes
#                                        t5: 0.5 -> 0.9, -1: +0.4 (against A)   yes (only the pushed side is bounded)


def test_tv_mask_loss_and_truncated_weight() -> None:
    logp, old_logp, adv = probs_case(TV_OLD, TV_NEW, TV_ADV)
    out = policy_loss("dppo", logp, old_logp, adv, torch.ones(1, 6))
    # l = -A min(r, 20) logp on valid tokens: t1 -1.2 ln 0.6; t2 -20 ln 0.01 (r = 100 truncated at 20);
    # t4 +(8/9) ln 0.8; t5 +1.8 ln 0.9; t0, t3 = 0
    expected = [0.0, -1.2 * math.log(0.6), -20 * math.log(0.01), 0.0, 8 / 9 * math.log(0.8), 1.8 * math.log(0.9)]
    torch.testing.assert_close(out.per_token.detach(), torch.tensor([expected]))
    assert float(out.metrics["policy/clipfrac"]) == pytest.approx(2 / 6)  # t0, t3 outside
    assert float(out.metrics["policy/clipfrac_high"]) == pytest.approx(1 / 6)  # t0 (A > 0)
    assert float(out.metrics["policy/clipfrac_low"]) == pytest.approx(1 / 6)  # t3 (A <= 0)
    assert float(out.metrics["method/dppo/truncated_frac"]) == pytest.approx(1 / 6)  # t2
    # |p - p_old| = [0.2, 0.1, 0.0099, 0.2, 0.1, 0.4] -> mean 1.0099 / 6
    assert float(out.metrics["method/dppo/divergence_mean"]) == pytest.approx(1.0099 / 6, rel=1e-5)


def test_tv_gradient_is_minus_advantage_times_weight_inside_the_region_only() -> None:
    logp, old_logp, adv = probs_case(TV_OLD, TV_NEW, TV_ADV)
    out = policy_loss("dppo", logp, old_logp, adv, torch.ones(1, 6))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    # d/dlogp = -A w on valid tokens (w detached): [0, -1.2, -20, 0, 8/9, 1.8]
    torch.testing.assert_close(g, torch.tensor([[0.0, -1.2, -20.0, 0.0, 8 / 9, 1.8]]))
    ref = policy_loss("ppo_clip", logp, old_logp, adv, torch.ones(1, 6))
    (g_ppo,) = torch.autograd.grad(ref.per_token.sum(), logp)
    # PPO 0.2/0.2 silences the rare token t2 (r = 100 > 1.2), which DPPO trains, and trains t5 like DPPO (A r = 1.8)
    assert float(g_ppo[0, 2]) == 0.0 and float(g_ppo[0, 5]) == pytest.approx(1.8, rel=1e-5)


def test_no_truncation_when_ratio_cap_is_none() -> None:
    logp, old_logp, adv = probs_case([1e-4], [1e-2], [1.0])
    out = policy_loss("dppo", logp, old_logp, adv, torch.ones(1, 1), ratio_cap=None)
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    torch.testing.assert_close(g, torch.tensor([[-100.0]]))  # -A r, r = 1e-2 / 1e-4


# KL case, delta 0.05: D = p_old ln(p_old / p) + (1 - p_old) ln((1 - p_old) / (1 - p))
#   0.5 -> 0.7: 0.5 ln(0.5/0.7) + 0.5 ln(0.5/0.3) = 0.5 (-0.33647) + 0.5 (0.51083) = 0.08718 > 0.05
#   0.5 -> 0.6: 0.5 ln(0.5/0.6) + 0.5 ln(0.5/0.4) = 0.5 (-0.18232) + 0.5 (0.22314) = 0.02041 <= 0.05
#   0.5 -> 0.3: 0.5 ln(0.5/0.3) + 0.5 ln(0.5/0.7) = 0.08718 > 0.05
# k0: 0.5 -> 0.7, A +1: D too large and p > p_old      -> outside
# k1: 0.5 -> 0.6, A +1: D small                         -> inside
# k2: 0.5 -> 0.3, A +1: D too large but p <= p_old      -> inside (moved against the push)
# k3: 0.5 -> 0.3, A -1: D too large and p < p_old       -> outside
# k4: 0.5 -> 0.7, A -1: p >= p_old                      -> inside
def test_binary_kl_by_hand() -> None:
    d = binary_kl(torch.tensor([0.5, 0.5, 0.5]).log(), torch.tensor([0.7, 0.6, 0.3]).log())
    expected = [0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3),
                0.5 * math.log(0.5 / 0.6) + 0.5 * math.log(0.5 / 0.4),
                0.5 * math.log(0.5 / 0.3) + 0.5 * math.log(0.5 / 0.7)]
    torch.testing.assert_close(d, torch.tensor(expected), rtol=1e-5, atol=1e-6)  # the 1e-8 guards move the 8th digit


def test_kl_mask() -> None:
    logp, old_logp, adv = probs_case([0.5] * 5, [0.7, 0.6, 0.3, 0.3, 0.7], [1.0, 1.0, 1.0, -1.0, -1.0])
    valid, _ = trust_region(PolicyInputs(logp, old_logp, adv, torch.ones(1, 5)), Params(divergence="kl"))
    assert valid.tolist() == [[False, True, True, False, True]]
    out = policy_loss("dppo", logp, old_logp, adv, torch.ones(1, 5), divergence="kl")
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    # -A r on the valid tokens: k1 -1.2, k2 -0.6, k4 +1.4
    torch.testing.assert_close(g, torch.tensor([[0.0, -1.2, -0.6, 0.0, 1.4]]))


def test_threshold_defaults_follow_the_divergence() -> None:
    assert Params().bounds == (0.15, 0.15)  # TV recipe value
    assert Params(divergence="kl").bounds == (0.05, 0.05)  # KL recipe value
    assert Params(divergence="kl", delta_low=0.1).bounds == (0.1, 0.05)


def test_corrupted_log_probs_above_zero_stay_finite() -> None:
    # old_logp = +20 (p_old "e^20"): clamped to p_old = 1, so 1 - p_old = 0 and the binary KL is finite
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    out = policy_loss("dppo", logp, torch.tensor([[20.0, 20.0]]), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2),
                      divergence="kl")
    assert all(math.isfinite(float(v)) for v in out.metrics.values())
    assert torch.isfinite(out.per_token).all()


def test_variants_follow_the_recipe() -> None:
    for name, divergence in (("dppo", "tv"), ("dppo_kl", "kl")):
        algorithm = resolve(name).overrides["algorithm"]
        p = ENTRY.make_params(**algorithm["method_params"])
        assert (p.divergence, p.bounds, p.ratio_cap) == (divergence, Params(divergence=divergence).bounds, None)
        assert (algorithm["advantage"], algorithm["loss_agg_mode"]) == ("dr_grpo", "seq-mean-token-sum-norm")


@pytest.mark.parametrize("bad", [{"divergence": "js"}, {"delta_low": -0.1}, {"ratio_cap": 0.0}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
