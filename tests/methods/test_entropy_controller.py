"""entropy_controller: schedules, the coefficient rule by hand, clipping, state round trip, base validation."""

import math

import pytest
import torch

from entropy_rl.core.policy_loss import get_policy_loss, policy_loss
from entropy_rl.core.types import PolicyInputs
from entropy_rl.methods.entropy_controller import ControllerState, Params
from entropy_rl.train.config import ConfigError, load_config

ENTRY = get_policy_loss("entropy_controller")


def batch_with_entropy(h: float) -> PolicyInputs:
    z = torch.zeros(1, 2)
    return PolicyInputs(z, z, z, torch.ones(1, 2), None, torch.full((1, 2), h))


def test_schedules() -> None:
    assert Params(target=0.4).target_at(100) == 0.4
    lin = Params(target=0.4, target_end=0.2, schedule="linear", horizon=100)
    assert lin.target_at(0) == 0.4 and lin.target_at(50) == pytest.approx(0.3) and lin.target_at(500) == pytest.approx(0.2)
    cos = Params(target=0.4, target_end=0.2, schedule="cosine", horizon=100)
    # halfway: 0.4 - 0.2 * 0.5 * (1 - cos(pi/2)) = 0.3; a quarter: 0.4 - 0.2 * 0.5 * (1 - cos(pi/4))
    assert cos.target_at(50) == pytest.approx(0.3)
    assert cos.target_at(25) == pytest.approx(0.4 - 0.2 * 0.5 * (1 - math.cos(math.pi / 4)))


def test_coefficient_lands_the_prediction_on_the_target() -> None:
    p = Params(target=0.3, coef=0.01, gain=1.0, smoothing=0.0, integral=0.0)  # raw values, no integral: the rule
    state = ControllerState(p)
    state.before_update(batch_with_entropy(0.25))
    assert state.values(p).coef == 0.01  # no dynamics yet: initial coefficient
    # last step: dH_pred = -0.02 with coef 0.01 and s = 0.5 -> base alone did -0.02 - 0.005 = -0.025
    state.after_update({"dynamics/dH_pred": -0.02, "dynamics/dH_per_bonus": 0.5})
    state.before_update(batch_with_entropy(0.28))
    # gap = 0.3 - 0.28 = 0.02; coef = (0.02 - (-0.025)) / 0.5 = 0.09
    assert state.values(p).coef == pytest.approx(0.09)
    assert state.metrics()["method/entropy_controller/abs_error"] == pytest.approx(0.02)


def test_smoothing_averages_the_entropy_and_base_drift() -> None:
    p = Params(target=0.3, gain=0.5, smoothing=0.5, integral=0.0)
    state = ControllerState(p)
    state.before_update(batch_with_entropy(0.20))
    state.after_update({"dynamics/dH_pred": -0.02, "dynamics/dH_per_bonus": 0.5})  # coef 0: base did -0.02
    state.before_update(batch_with_entropy(0.40))
    # H~ = 0.5 * 0.20 + 0.5 * 0.40 = 0.30 -> gap = 0.5 * (0.3 - 0.3) = 0; dH~_base = -0.02 (first estimate)
    # coef = (0 - (-0.02)) / 0.5 = 0.04
    assert state.values(p).coef == pytest.approx(0.04)


def test_coefficient_is_clipped_and_state_round_trips() -> None:
    p = Params(target=1.0, coef_max=0.05)
    state = ControllerState(p)
    state.before_update(batch_with_entropy(0.1))
    state.after_update({"dynamics/dH_pred": 0.0, "dynamics/dH_per_bonus": 0.01})
    state.before_update(batch_with_entropy(0.1))
    assert state.values(p).coef == 0.05
    restored = ControllerState(p)
    restored.load_state_dict(state.state_dict())
    assert restored.state_dict() == state.state_dict()


def test_loss_is_base_minus_coef_entropy_and_base_is_validated() -> None:
    logp = torch.zeros(1, 2, requires_grad=True)
    ent = torch.tensor([[0.5, 1.0]])
    out = policy_loss("entropy_controller", logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), entropy=ent,
                      old_entropy=ent, coef=0.2)
    torch.testing.assert_close(out.per_token, torch.tensor([[-0.1, -0.2]]))  # A = 0: only -0.2 * H
    with pytest.raises(ValueError, match="own state or features"):
        Params(base="siren")
    with pytest.raises(TypeError, match="eps_hihg"):
        Params(base="ppo_clip", base_params={"eps_hihg": 0.3})
    with pytest.raises(KeyError, match="ppo_clip"):
        Params(base="ppo_clipp")


def test_integral_accumulates_the_error_and_does_not_wind_up_into_a_clip() -> None:
    p = Params(target=0.3, gain=0.5, integral=0.1, smoothing=0.0, coef_max=1.0)
    state = ControllerState(p)
    state.before_update(batch_with_entropy(0.28))
    state.after_update({"dynamics/dH_pred": -0.01, "dynamics/dH_per_bonus": 0.5})  # coef 0: base did -0.01
    state.before_update(batch_with_entropy(0.28))
    # e = 0.02, I = 0.02: coef = (0.5 * 0.02 + 0.1 * 0.02 + 0.01) / 0.5 = 0.044
    assert state.values(p).coef == pytest.approx(0.044)
    state.after_update({"dynamics/dH_pred": -0.01 + 0.044 * 0.5, "dynamics/dH_per_bonus": 0.5})  # base -0.01 again
    state.before_update(batch_with_entropy(0.28))
    # I = 0.04: coef = (0.01 + 0.004 + 0.01) / 0.5 = 0.048
    assert state.values(p).coef == pytest.approx(0.048)
    # entropy far above the target drives the coefficient to its lower clip; the negative error is not integrated
    for _ in range(3):
        state.after_update({"dynamics/dH_pred": -0.01, "dynamics/dH_per_bonus": 0.5})
        state.before_update(batch_with_entropy(0.9))
        assert state.values(p).coef == 0.0
    assert state.error_sum == pytest.approx(0.04)


@pytest.mark.parametrize("every", [0, 2])
def test_a_run_without_the_probe_at_every_step_is_refused_before_training(every: int) -> None:
    # before the step context: 6 steps with train.dynamics_every=0 trained at coefficient 0.0 throughout, no error
    with pytest.raises(ConfigError, match=f"'dynamics/dH_pred'.*train.dynamics_every=1.*got {every}"):
        load_config(None, ["algorithm.method=entropy_controller", f"train.dynamics_every={every}"])
    load_config(None, ["algorithm.method=entropy_controller", "train.dynamics_every=1"])


def test_after_update_reads_the_declared_probe_metric() -> None:
    state = ControllerState(Params())
    with pytest.raises(KeyError, match="dH_pred"):
        state.after_update({"entropy/token_mean": 0.3})
