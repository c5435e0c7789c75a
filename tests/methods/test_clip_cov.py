"""Clip-Cov (methods.md section 1 item 5): hand-computed cases, arithmetic in comments."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core import ppo

from entropy_rl.core.aggregate import aggregate
from entropy_rl.core.policy_loss import POLICY_LOSSES, get_policy_loss, policy_loss, run_select
from entropy_rl.core.types import PolicyInputs, StepContext, TokenWeights
from entropy_rl.methods.clip_cov import Params, n_to_detach
from entropy_rl.presets import resolve

ENTRY = get_policy_loss("clip_cov")


def variant_params(name: str) -> Params:
    """The Params a packaged variant sets (entropy_rl/presets/methods/<name>.yaml), checked to be a clip_cov variant."""
    algorithm = resolve(name).overrides["algorithm"]
    assert algorithm["method"] == "clip_cov"
    return ENTRY.make_params(**algorithm.get("method_params", {}))


def hand_case() -> PolicyInputs:
    """1 x 4, all valid.

    logp       = [-0.5, -1.0, -3.0, -3.5]   mean -2.0  -> centred [ 1.5, 1.0, -1.0, -1.5]
    A          = [ 2.0,  1.0, -1.0, -2.0]   mean  0.0  -> centred [ 2.0, 1.0, -1.0, -2.0]
    Cov        = [ 3.0,  1.0,  1.0,  3.0]   mean 2.0
    window (1, 5) strict: t0 (3.0) in; t1, t2 (1.0) out (strict); t3 (3.0) in
    old_logp: t3 = logp + 0.5 -> r3 = e^-0.5 = 0.6065 < 0.8 with A < 0: PPO-clipped -> not a candidate
    candidates = {t0}
    """
    logp = torch.tensor([[-0.5, -1.0, -3.0, -3.5]], requires_grad=True)
    old_logp = torch.tensor([[-0.5, -1.0, -3.0, -3.0]])
    adv = torch.tensor([[2.0, 1.0, -1.0, -2.0]])
    return PolicyInputs(logp, old_logp, adv, torch.ones(1, 4))


def test_hand_case_covariance_candidates_and_selection() -> None:
    x = hand_case()
    torch.testing.assert_close(ppo.token_covariance(x.logp.detach(), x.adv, x.mask), torch.tensor([[3.0, 1.0, 1.0, 3.0]]))
    p = Params()  # n_clip = max(1, floor(2e-4 * 4)) = 1
    sel = run_select(ENTRY, p, x, StepContext(), torch.Generator().manual_seed(0))
    assert sel["detach"].tolist() == [[True, False, False, False]]
    assert float(sel.metrics["method/clip_cov/n_candidates"]) == 1.0
    assert float(sel.metrics["method/clip_cov/n_selected"]) == 1.0
    assert float(sel.metrics["method/clip_cov/cov_mean"]) == pytest.approx(2.0)


def test_detached_token_has_zero_loss_and_gradient_but_counts_in_denominator() -> None:
    x = hand_case()
    out = policy_loss("clip_cov", x.logp, x.old_logp, x.adv, x.mask, generator=torch.Generator().manual_seed(0))
    # t0 detached -> 0; t1: -A r = -1 * 1 = -1; t2: -(-1) * 1 = 1;
    # t3: max(-A r, -A clip(r)) = max(2 * 0.6065, 2 * 0.8) = 1.6 (clipped low)
    torch.testing.assert_close(out.per_token, torch.tensor([[0.0, -1.0, 1.0, 1.6]]))
    loss = aggregate(out.per_token, x.mask, "token-mean")
    # denominator is all 4 valid tokens (not 3): (0 - 1 + 1 + 1.6) / 4 = 0.4
    assert float(loss.detach()) == pytest.approx(0.4)
    (g,) = torch.autograd.grad(loss, x.logp)
    # d/dlogp: t0 detached 0; t1 -A r / 4 = -0.25; t2 +0.25; t3 clipped 0
    torch.testing.assert_close(g, torch.tensor([[0.0, -0.25, 0.25, 0.0]]))
    assert float(out.metrics["method/clip_cov/detached_frac"]) == pytest.approx(0.25)
    assert float(out.metrics["method/clip_cov/n_selected"]) == 1.0


def test_draw_is_capped_by_the_candidate_count() -> None:
    # clip_ratio = 1 -> n_clip = 4, but |C| = 1 -> min(4, 1) = 1 selected
    sel = run_select(ENTRY, Params(clip_ratio=1.0), hand_case(), StepContext(), torch.Generator().manual_seed(0))
    assert int(sel["detach"].sum()) == 1


def test_n_to_detach_matches_official_floor_and_max1_except_zero() -> None:
    assert n_to_detach(2e-4, 4) == 1  # max(1, floor(0.0008)) = 1
    assert n_to_detach(2e-4, 12_345) == 2  # floor(2.469) = 2
    assert n_to_detach(0.5, 7) == 3  # floor(3.5) = 3
    assert n_to_detach(0.0, 1_000_000) == 0  # documented deviation: 0 keeps clip_ratio=0 neutral
    assert n_to_detach(0.5, 0) == 0


def random_case(seed: int = 0) -> PolicyInputs:
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(4, 16, generator=g) * 4
    adv = torch.randn(4, 1, generator=g).expand(4, 16).contiguous()
    mask = torch.ones(4, 16)
    mask[3, 10:] = 0
    return PolicyInputs(logp, logp.clone(), adv, mask)


def test_generator_determinism_and_uniform_draw() -> None:
    # wide window, nothing PPO-clipped (on-policy): every valid token (4 * 16 - 6 = 58) is a candidate;
    # n = floor(0.25 * 58) = floor(14.5) = 14
    p = Params(clip_ratio=0.25, cov_lb=-1e9, cov_ub=1e9)
    x = random_case()
    a = run_select(ENTRY, p, x, StepContext(), torch.Generator().manual_seed(7))
    b = run_select(ENTRY, p, x, StepContext(), torch.Generator().manual_seed(7))
    assert torch.equal(a["detach"], b["detach"])
    assert int(a["detach"].sum()) == 14 and float(a.metrics["method/clip_cov/n_candidates"]) == 58.0
    assert not a["detach"][3, 10:].any()  # padding never selected
    draws = {tuple(run_select(ENTRY, p, x, StepContext(), torch.Generator().manual_seed(s))["detach"].flatten().tolist()) for s in range(5)}
    assert len(draws) > 1  # the generator, not a fixed order, picks the tokens


def test_clip_ratio_zero_is_ppo_clip() -> None:
    x = random_case()
    x = PolicyInputs(x.logp.requires_grad_(True), x.logp.detach() + 0.3, x.adv, x.mask)
    out = ENTRY.obj.loss(x, Params(clip_ratio=0.0), run_select(ENTRY, Params(clip_ratio=0.0), x, StepContext(), torch.Generator()), StepContext())
    ref = POLICY_LOSSES.get("ppo_clip")
    expected = ref.obj.loss(x, ref.make_params(clip_ratio_c=None), TokenWeights(), StepContext())
    torch.testing.assert_close(out.per_token, expected.per_token)


def test_variants_hold_the_paper_and_verl_settings() -> None:
    assert variant_params("clip_cov_verl") == Params()
    paper = variant_params("clip_cov")
    assert (paper.eps_low, paper.eps_high, paper.clip_ratio, paper.cov_lb, paper.cov_ub) == (1.0, 1.0, 2e-4, 1.0, 5.0)


def test_paper_preset_clamps_ratio_to_0_2() -> None:
    # eps 1.0: r = e^1 = 2.718 with A = 1 is clipped at 2 -> loss -2; r = e^-1 with A = -1 is inside [0, 2]
    logp = torch.tensor([[1.0, -1.0]])
    x = PolicyInputs(logp, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    p = Params(eps_low=1.0, eps_high=1.0, clip_ratio=0.0)
    out = ENTRY.obj.loss(x, p, run_select(ENTRY, p, x, StepContext(), None), StepContext())
    torch.testing.assert_close(out.per_token, torch.tensor([[-2.0, math.exp(-1.0)]]))


@pytest.mark.parametrize("bad", [{"clip_ratio": -0.1}, {"clip_ratio": 1.5}, {"cov_lb": 5.0, "cov_ub": 1.0}, {"clip_ratio_c": 1.0}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
