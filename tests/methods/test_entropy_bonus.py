"""Hand-computed cases for `entropy_bonus`, static and adaptive (methods.md section 3b)."""

from __future__ import annotations

import pytest
import torch

from entropy_rl.core.policy_loss import get_policy_loss, policy_loss
from entropy_rl.methods.entropy_bonus import AdaptiveEntropyState, BonusValues, Params

ENTRY = get_policy_loss("entropy_bonus")


def test_static_loss_is_ppo_minus_coef_entropy() -> None:
    # on-policy r = 1, A = 2: ppo = -2; H = 0.5, coef 0.1 -> -2 - 0.05 = -2.05
    logp = torch.tensor([[-1.0]], requires_grad=True)
    out = policy_loss("entropy_bonus", logp, logp.detach(), torch.tensor([[2.0]]), torch.ones(1, 1),
                      entropy=torch.tensor([[0.5]]), coef=0.1)
    torch.testing.assert_close(out.per_token, torch.tensor([[-2.05]]))


def test_static_state_is_constant() -> None:
    p = Params(coef=0.01)
    state = ENTRY.obj.make_state(p)
    assert state.values(p) == BonusValues(0.01)
    state.after_update({"entropy/token_mean": 5.0})
    assert state.values(p) == BonusValues(0.01) and state.metrics() == {}


def test_adaptive_controller_sequence() -> None:
    # target 0.2, delta 0.005, c in [0, 0.012], c0 = 0
    p = Params(adaptive=True, coef=0.0, target_entropy=0.2, delta=0.005, coef_min=0.0, coef_max=0.012)
    state = AdaptiveEntropyState(p)
    applied, coefs = [], []
    for h in [0.1, 0.1, 0.3, 0.1, 0.1, 0.2]:
        applied.append(state.values(p).coef)  # coefficient used by this step (gated by the previous step's H)
        state.after_update({"entropy/token_mean": h})
        coefs.append(state.coef)
    # H <= 0.2 -> +delta, H > 0.2 -> -delta, clipped at 0.012; H == target counts as <= (TRL)
    assert coefs == pytest.approx([0.005, 0.010, 0.005, 0.010, 0.012, 0.012])
    # gate: open at start; closed for the step after H = 0.3 (> target) -> coef 0 there
    assert applied == pytest.approx([0.0, 0.005, 0.010, 0.0, 0.010, 0.012])
    assert state.metrics() == {"method/entropy_bonus/coef": pytest.approx(0.012), "method/entropy_bonus/applied": 1.0}


def test_adaptive_lower_clip_and_initial_coef() -> None:
    # c0 = coef = 0.003; H = 0.5 > 0.2 -> 0.003 - 0.005 = -0.002 -> clipped to coef_min 0.001
    p = Params(adaptive=True, coef=0.003, coef_min=0.001)
    state = AdaptiveEntropyState(p)
    assert state.values(p).coef == pytest.approx(0.003)
    state.after_update({"entropy/token_mean": 0.5})
    assert state.coef == pytest.approx(0.001)
    assert state.values(p).coef == 0.0  # gate closed: 0.5 > 0.2


def test_adaptive_state_dict_round_trip() -> None:
    p = Params(adaptive=True, coef=0.0)
    a = AdaptiveEntropyState(p)
    for h in [0.1, 0.4, 0.05]:
        a.after_update({"entropy/token_mean": h})
    b = AdaptiveEntropyState(p)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert b.values(p) == a.values(p)
    a.after_update({"entropy/token_mean": 0.3})
    b.after_update({"entropy/token_mean": 0.3})
    assert b.coef == a.coef


def test_invalid_adaptive_bounds_raise() -> None:
    with pytest.raises(ValueError):
        Params(coef_min=0.5, coef_max=0.1)
