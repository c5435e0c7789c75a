"""KL-Cov (methods.md section 1 item 6): hand-computed cases, arithmetic in comments."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from entropy_rl.core import ppo

from entropy_rl.core.policy_loss import POLICY_LOSSES, get_policy_loss, policy_loss, run_select
from entropy_rl.core.types import PolicyInputs, StepContext
from entropy_rl.methods import kl_cov
from entropy_rl.methods.kl_cov import Params, n_to_penalise
from entropy_rl.presets import resolve

ENTRY = get_policy_loss("kl_cov")


def variant_params(name: str) -> Params:
    """The Params a packaged variant sets (entropy_rl/presets/methods/<name>.yaml), checked to be a kl_cov variant."""
    algorithm = resolve(name).overrides["algorithm"]
    assert algorithm["method"] == "kl_cov"
    return ENTRY.make_params(**algorithm.get("method_params", {}))


@pytest.fixture(autouse=True)
def fresh_on_policy_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no on-policy streak and the once-per-process warning not yet given."""
    monkeypatch.setattr(kl_cov, "_ON_POLICY", {"streak": 0, "warned": False})


def hand_case() -> PolicyInputs:
    """1 x 4 plus a padded position, off-policy on t0 and t3.

    logp (current) = [-0.5, -1.0, -3.0, -3.5]  mean -2.0  -> centred [ 1.5,  1.0, -1.0,  -1.5 ]
    A              = [ 2.0,  1.0, -1.0, -1.0]  mean 0.25  -> centred [ 1.75, 0.75, -1.25, -1.25]
    Cov            = [2.625, 0.75, 1.25, 1.875]           (order: t0 > t3 > t2 > t1)
    old_logp       = [-0.6, -1.0, -3.0, -3.3] -> logp - old_logp = [0.1, 0, 0, -0.2]
    position 4 is padding with a huge Cov-looking value: never selected.
    """
    logp = torch.tensor([[-0.5, -1.0, -3.0, -3.5, 5.0]], requires_grad=True)
    old_logp = torch.tensor([[-0.6, -1.0, -3.0, -3.3, 0.0]])
    adv = torch.tensor([[2.0, 1.0, -1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    return PolicyInputs(logp, old_logp, adv, mask)


def test_n_to_penalise_is_max1_floor_of_a_fraction() -> None:
    assert n_to_penalise(2e-4, 4) == 1  # max(1, floor(0.0008))
    assert n_to_penalise(2e-3, 10_000) == 20  # 0.2 percent of 10k (PRIME k_percent 0.2 / 100)
    assert n_to_penalise(0.5, 4) == 2
    assert n_to_penalise(0.0, 100) == 0  # official `if k != 0`: nothing selected


@pytest.mark.parametrize(("ratio", "expected"), [(0.25, [0]), (0.5, [0, 3]), (0.75, [0, 2, 3]), (2e-4, [0])])
def test_hand_case_top_k_by_covariance(ratio: float, expected: list[int]) -> None:
    # k = max(1, floor(ratio * 4)): 0.25 -> 1 {t0}; 0.5 -> 2 {t0, t3}; 0.75 -> 3 {t0, t3, t2}; 2e-4 -> 1
    x = hand_case()
    torch.testing.assert_close(ppo.token_covariance(x.logp.detach(), x.adv, x.mask), torch.tensor([[2.625, 0.75, 1.25, 1.875, 0.0]]))
    sel = run_select(ENTRY, Params(kl_ratio=ratio), x, StepContext(), None)
    assert sel["penalize"][0].nonzero().flatten().tolist() == expected


def test_hand_case_penalty_value_and_gradient_sign() -> None:
    x = hand_case()
    out = policy_loss("kl_cov", x.logp, x.old_logp, x.adv, x.mask, kl_ratio=0.5, kl_coef=1.0)
    # t0: -A r + beta |d| = -2 e^0.1 + 0.1 = -2.210342 + 0.1 = -2.110342
    # t1: -1 * e^0 = -1;  t2: +1 * e^0 = 1
    # t3: -(-1) e^-0.2 + 0.2 = 0.818731 + 0.2 = 1.018731
    expected = torch.tensor([[-2 * math.exp(0.1) + 0.1, -1.0, 1.0, math.exp(-0.2) + 0.2]])
    torch.testing.assert_close(out.per_token[:, :4], expected)
    (g,) = torch.autograd.grad((out.per_token * x.mask).sum(), x.logp)
    # d/dlogp: t0: -A r + beta sign(0.1) = -2.210342 + 1 = -1.210342 (penalty pushes logp down, back to old)
    #          t3: -A r + beta sign(-0.2) = 0.818731 - 1 = -0.181269 (penalty pushes logp up, back to old)
    torch.testing.assert_close(g, torch.tensor([[-2 * math.exp(0.1) + 1.0, -1.0, 1.0, math.exp(-0.2) - 1.0, 0.0]]))
    # abs log-ratio means: over valid tokens (0.1 + 0 + 0 + 0.2) / 4 = 0.075; over selected {t0, t3}: 0.15
    assert float(out.metrics["method/kl_cov/abs_logratio_mean"]) == pytest.approx(0.075)
    assert float(out.metrics["method/kl_cov/abs_logratio_selected_mean"]) == pytest.approx(0.15)
    assert float(out.metrics["method/kl_cov/n_selected"]) == 2.0
    # mean Cov over valid tokens: (2.625 + 0.75 + 1.25 + 1.875) / 4 = 1.625
    assert float(out.metrics["method/kl_cov/cov_mean"]) == pytest.approx(1.625)


def test_no_clipping_anywhere() -> None:
    # r = e^2 = 7.389 with A = 1: ppo_clip would clip at 1.2 (zero gradient); KL-Cov keeps -A r and gradient -e^2
    logp = torch.tensor([[2.0, -2.0]], requires_grad=True)
    x = PolicyInputs(logp, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    out = ENTRY.obj.loss(x, Params(kl_ratio=0.0), run_select(ENTRY, Params(kl_ratio=0.0), x, StepContext(), None), StepContext())
    # t1: r = e^-2 with A = -1: ppo_clip would clip at 0.8; here loss = e^-2, gradient e^-2
    torch.testing.assert_close(out.per_token, torch.tensor([[-math.exp(2.0), math.exp(-2.0)]]))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    torch.testing.assert_close(g, torch.tensor([[-math.exp(2.0), math.exp(-2.0)]]))
    assert float(out.metrics["policy/clipfrac"]) == 0.0


def on_policy_case() -> PolicyInputs:
    x = hand_case()
    return PolicyInputs(x.logp.detach(), x.logp.detach().clone(), x.adv, x.mask)


def test_on_policy_warns_once_after_two_consecutive_zero_penalty_mini_batches() -> None:
    x = on_policy_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # first on-policy mini-batch: normal (every rollout's first one is)
        run_select(ENTRY, Params(), x, StepContext(), None)
    with pytest.warns(UserWarning, match="on-policy"):
        run_select(ENTRY, Params(), x, StepContext(), None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        run_select(ENTRY, Params(), x, StepContext(), None)


def test_off_policy_mini_batches_reset_the_streak() -> None:
    on, off = on_policy_case(), hand_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 8 mini-batches per rollout: on, off x 7, on, off ... never warns
        for _ in range(3):
            run_select(ENTRY, Params(), on, StepContext(), None)
            for _ in range(7):
                run_select(ENTRY, Params(), off, StepContext(), None)


def test_on_policy_penalty_and_its_gradient_are_zero() -> None:
    x = on_policy_case()
    logp = x.logp.clone().requires_grad_(True)
    out = policy_loss("kl_cov", logp, x.old_logp, x.adv, x.mask, kl_ratio=0.5, kl_coef=1.0)
    (g,) = torch.autograd.grad((out.per_token * x.mask).sum(), logp)
    torch.testing.assert_close(g, -x.adv)  # r = 1: gradient of -A r is -A; the |0| subgradient is 0
    assert float(out.metrics["method/kl_cov/abs_logratio_mean"]) == 0.0


def test_variants_hold_the_paper_and_verl_settings() -> None:
    assert variant_params("kl_cov_verl") == Params() == Params(kl_ratio=2e-4, kl_coef=0.1)
    assert (variant_params("kl_cov").kl_ratio, variant_params("kl_cov").kl_coef) == (2e-3, 1.0)  # paper 7B
    assert (variant_params("kl_cov_32b").kl_ratio, variant_params("kl_cov_32b").kl_coef) == (2e-4, 1.0)


def test_no_neutral_setting_is_declared() -> None:
    assert POLICY_LOSSES.get("kl_cov").obj.neutral is None


@pytest.mark.parametrize("bad", [{"kl_ratio": 0.2 * 100}, {"kl_ratio": -1e-4}, {"kl_coef": -0.1}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
