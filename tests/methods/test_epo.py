"""Hand-computed cases for `epo` (methods.md section 8)."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.policy_loss import get_policy_loss, policy_loss
from entropy_rl.methods.epo import EpoState, EpoValues, Params, smooth_weight

get_policy_loss("epo")


def run(h: list[float], history_mean: float | None = None, epoch: int = 0, **params):
    """EPO's loss on one row of entropies h, with the run-time values (Hbar, e) a state would give."""
    ent = torch.tensor([h], requires_grad=True)
    logp = torch.zeros(1, len(h), requires_grad=True)
    out = policy_loss("epo", logp, logp.detach(), torch.zeros(1, len(h)), torch.ones(1, len(h)), entropy=ent,
                      values=EpoValues(history_mean, epoch), **params)
    (g,) = torch.autograd.grad(out.per_token.sum(), ent)
    return out, g


def test_hinge_values_and_gradient_signs() -> None:
    # coef 0.1, smooth_coef 2, Hbar 1, band [0.8, 1.2], A = 0 (PPO part 0), w = 1
    # H = 1.5: S = 0.3 -> l = -0.1 (1.5 - 2 * 0.3) = -0.09; dl/dH = -0.1 (1 - 2) = +0.1 (descent lowers H)
    # H = 0.5: S = 0.3 -> l = -0.1 (0.5 - 0.6) = +0.01; dl/dH = -0.1 (1 + 2) = -0.3 (descent raises H)
    # H = 1.0: in band, S = 0 -> l = -0.1;              dl/dH = -0.1 (plain bonus)
    out, g = run([1.5, 0.5, 1.0], coef=0.1, smooth_coef=2.0, history_mean=1.0)
    torch.testing.assert_close(out.per_token.detach(), torch.tensor([[-0.09, 0.01, -0.1]]))
    torch.testing.assert_close(g, torch.tensor([[0.1, -0.3, -0.1]]))
    assert float(out.metrics["method/epo/out_of_band_frac"]) == pytest.approx(2 / 3)
    assert float(out.metrics["method/epo/smooth_penalty"]) == pytest.approx(0.2)


def test_official_mode_smoothing_has_exactly_zero_gradient() -> None:
    # P = 0.1 out of band, 0 inside: a constant. Gradient = plain bonus -coef per token, bit for bit.
    h = [1.5, 0.5, 1.0, 0.79, 1.21]
    out_s, g_s = run(h, coef=0.1, smooth_coef=1.0, mode="official", history_mean=1.0, smooth_weights=True, epoch=10)
    out_0, g_0 = run(h, coef=0.1, smooth_coef=0.0, mode="official", history_mean=1.0)
    assert torch.equal(g_s, g_0)
    assert torch.equal(g_s, torch.full_like(g_s, -0.1))
    # the value does change: + coef * smooth_coef * w(10) * 0.1 on the 4 out-of-band tokens
    w = smooth_weight(10)
    expected = torch.tensor([[-0.15, -0.05, -0.1, -0.079, -0.121]]) + torch.tensor([[1.0, 1, 0, 1, 1]]) * 0.1 * w * 0.1
    torch.testing.assert_close(out_s.per_token.detach(), expected)
    assert not torch.equal(out_s.per_token, out_0.per_token)


def test_unknown_history_turns_smoothing_off() -> None:
    out_none, g_none = run([1.5, 0.5], coef=0.1, smooth_coef=2.0)  # history_mean None
    torch.testing.assert_close(out_none.per_token.detach(), torch.tensor([[-0.15, -0.05]]))
    torch.testing.assert_close(g_none, torch.full((1, 2), -0.1))


def test_schedule_values() -> None:
    # e <= 75: 1 - 0.2 (1 - exp(-2 e / 75)); e > 75: 0.8 exp(-3 (e - 75) / 75); e clamped to [0, 150]
    assert smooth_weight(0) == pytest.approx(1.0)
    assert smooth_weight(75) == pytest.approx(1 - 0.2 * (1 - math.exp(-2)))  # 0.827067
    assert smooth_weight(100) == pytest.approx(0.8 * math.exp(-1))  # 0.294304
    assert smooth_weight(150) == pytest.approx(0.8 * math.exp(-3))  # 0.039830
    assert smooth_weight(500) == smooth_weight(150)
    # applied to the smoothing term only: hinge at epoch 100, H = 1.5, S = 0.3, coef 0.1, cs 2
    out, g = run([1.5], coef=0.1, smooth_coef=2.0, history_mean=1.0, smooth_weights=True, epoch=100)
    w = 0.8 * math.exp(-1)
    assert float(out.per_token.detach()) == pytest.approx(-0.1 * (1.5 - 2 * w * 0.3), rel=1e-6)
    assert float(g) == pytest.approx(-0.1 * (1 - 2 * w), rel=1e-6)


def test_state_history_mean_epoch_and_round_trip() -> None:
    p = Params()
    state = EpoState(p)
    assert state.values(p) == EpoValues(None, 0)
    for h in [1.0, 2.0, 3.0]:
        state.after_update({"entropy/token_mean": h})
    q = state.values(p)
    assert q.history_mean == pytest.approx(2.0) and q.epoch == 3  # all-time mean of (1, 2, 3)
    restored = EpoState(p)
    restored.load_state_dict(state.state_dict())
    assert restored.values(p) == q


def test_function_api_defaults_to_the_first_step() -> None:
    # no values given: a fresh state's (Hbar unknown, e = 0), so smoothing is off as at the first step of a run
    ent = torch.tensor([[1.5, 0.5]], requires_grad=True)
    logp = torch.zeros(1, 2, requires_grad=True)
    out = policy_loss("epo", logp, logp.detach(), torch.zeros(1, 2), torch.ones(1, 2), entropy=ent, coef=0.1, smooth_coef=2.0)
    torch.testing.assert_close(out.per_token.detach(), torch.tensor([[-0.15, -0.05]]))
