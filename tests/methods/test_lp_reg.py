"""Hand-computed cases for `lp_reg` (methods.md section 5)."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.policy_loss import get_policy_loss, policy_loss
from entropy_rl.core.types import PolicyInputs, StepContext
from entropy_rl.methods.lp_reg import Params, lp_proxy_feature, min_p_proxy_logp, select

get_policy_loss("lp_reg")
PROBS = [0.5, 0.3, 0.15, 0.05]


def logits_1x1() -> torch.Tensor:
    return torch.tensor(PROBS).log().view(1, 1, 4)  # softmax(z) = PROBS exactly


@pytest.mark.parametrize(
    "token, tau, kappa, kind, expected",
    [
        # relative, kappa 0.2: keep p >= 0.2 * 0.5 = 0.1 -> {0.5, 0.3, 0.15}; tau 1: 0.15 / 0.95
        (2, 1.0, 0.2, "relative", math.log(0.15 / 0.95)),
        # fixed, kappa 0.2: keep p >= 0.2 -> {0.5, 0.3}; 0.3 / 0.8
        (1, 1.0, 0.2, "fixed", math.log(0.3 / 0.8)),
        # relative, kappa 0.2, tau 2: proxy prop. to sqrt(p) on the kept set (filter BEFORE temperature)
        (0, 2.0, 0.2, "relative", math.log(math.sqrt(0.5) / (math.sqrt(0.5) + math.sqrt(0.3) + math.sqrt(0.15)))),
        # relative, kappa 0.5: keep p >= 0.25 -> {0.5, 0.3}; tau 2: sqrt(.3) / (sqrt(.5) + sqrt(.3))
        (1, 2.0, 0.5, "relative", math.log(math.sqrt(0.3) / (math.sqrt(0.5) + math.sqrt(0.3)))),
    ],
)
def test_min_p_proxy_by_hand(token: int, tau: float, kappa: float, kind: str, expected: float) -> None:
    lp = min_p_proxy_logp(logits_1x1(), torch.tensor([[token]]), tau, kappa, kind)
    assert lp.dtype == torch.float32
    assert float(lp) == pytest.approx(expected, rel=1e-5)


def test_filtered_token_gets_huge_negative_proxy() -> None:
    # token 3 (p = 0.05 < 0.1) is masked to -1e4: log proxy ~ -1e4 - log(0.95), never selected
    assert float(min_p_proxy_logp(logits_1x1(), torch.tensor([[3]]), 1.0, 0.2, "relative")) < -9999


def make_x(logp: list[float], adv: list[float], lp_proxy: list[float], mask: list[float] | None = None) -> PolicyInputs:
    lp = torch.tensor([logp])
    return PolicyInputs(lp, lp.clone(), torch.tensor([adv]), torch.tensor([mask or [1.0] * len(logp)]),
                        extras={"lp_proxy": torch.tensor([lp_proxy])})


def test_selects_lowest_logp_negatives_then_proxy_filter() -> None:
    # 10 negative tokens, rho_neg 0.2 -> k = floor(2.0) = 2: the two lowest logp are positions 3 (-9) and 7 (-8);
    # position 7 has lp_proxy -8.5 <= logp, so only position 3 survives the logp < lp_proxy filter.
    logp = [-1.0, -2.0, -3.0, -9.0, -4.0, -5.0, -6.0, -8.0, -7.0, -1.5]
    proxy = [-0.5] * 10
    proxy[7] = -8.5
    sel = select(make_x(logp, [-1.0] * 10, proxy), Params(rho_neg=0.2), StepContext(), None)
    assert sel["reg"][0].nonzero().flatten().tolist() == [3]
    assert float(sel.metrics["method/lp_reg/n_candidates"]) == 2.0
    assert float(sel.metrics["method/lp_reg/n_selected"]) == 1.0


def test_positive_and_masked_tokens_are_not_selected_by_rho_neg() -> None:
    # positions 0 (A > 0) and 1 (masked) have the lowest logp but are not valid negatives
    logp = [-20.0, -30.0, -3.0, -4.0, -5.0, -6.0]
    sel = select(make_x(logp, [1.0] + [-1.0] * 5, [0.0] * 6, [1, 0, 1, 1, 1, 1]), Params(rho_neg=0.5), StepContext(), None)
    # N_neg = 4 valid negatives -> k = 2: positions 5 (-6) and 4 (-5)
    assert sel["reg"][0].nonzero().flatten().tolist() == [4, 5]


def test_min_k_rule() -> None:
    # N_neg = 10, rho 0.1 -> k = max(1, 1) = 1: official (min_k 2) applies nothing; min_k 1 takes the lowest one
    logp = [-float(i) for i in range(10)]
    x = make_x(logp, [-1.0] * 10, [0.0] * 10)
    assert int(select(x, Params(rho_neg=0.1), StepContext(), None)["reg"].sum()) == 0
    assert select(x, Params(rho_neg=0.1, min_k=1), StepContext(), None)["reg"][0].nonzero().flatten().tolist() == [9]
    # rho 0.0: nothing, whatever min_k
    assert int(select(x, Params(rho_neg=0.0, min_k=1), StepContext(), None)["reg"].sum()) == 0


def test_k3_value_and_gradient_raises_logp() -> None:
    # one selected token: pi = 0.1, pi_proxy = 0.3, A = -1, on-policy r = 1, beta 1, min_k 1
    # k3 = 3 - ln 3 - 1 = 0.901388; loss = -A r + k3 = 1 + 0.901388
    # d/dlogp: -A r = 1 (pushes logp down) + (1 - pi_proxy/pi) = 1 - 3 = -2 -> total -1 < 0: descent raises logp
    logp = torch.tensor([[math.log(0.1)]], requires_grad=True)
    out = policy_loss("lp_reg", logp, logp.detach(), torch.tensor([[-1.0]]), torch.ones(1, 1),
                      extras={"lp_proxy": torch.tensor([[math.log(0.3)]])}, rho_neg=1.0, min_k=1)
    k3 = 3 - math.log(3) - 1
    assert float(out.per_token.detach()) == pytest.approx(1 + k3, rel=1e-6)
    assert float(out.metrics["method/lp_reg/k3_mean"]) == pytest.approx(k3, rel=1e-6)
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    assert float(g) == pytest.approx(-1.0, rel=1e-5)


def test_selected_tokens_lose_the_clip() -> None:
    # A = -1, r = 0.5, eps_low 0.2: PPO clips (loss max(0.5, 0.8) = 0.8, no gradient);
    # selected: -A r = 0.5 with d/dlogp = 0.5, plus beta * k3 with beta 0
    logp = torch.tensor([[math.log(0.05)]], requires_grad=True)
    old = torch.tensor([[math.log(0.1)]])
    kw = dict(extras={"lp_proxy": torch.tensor([[0.0]])}, eps_low=0.2, eps_high=0.2, beta=0.0, min_k=1)
    clipped = policy_loss("lp_reg", logp, old, torch.tensor([[-1.0]]), torch.ones(1, 1), rho_neg=0.0, **kw)
    unclipped = policy_loss("lp_reg", logp, old, torch.tensor([[-1.0]]), torch.ones(1, 1), rho_neg=1.0, **kw)
    assert float(clipped.per_token.detach()) == pytest.approx(0.8)
    assert float(unclipped.per_token.detach()) == pytest.approx(0.5, rel=1e-6)
    assert float(torch.autograd.grad(unclipped.per_token.sum(), logp)[0]) == pytest.approx(0.5, rel=1e-6)


def test_defaults_are_the_recipe_and_the_feature_uses_the_params() -> None:
    p = Params()
    assert (p.eps_low, p.eps_high, p.clip_ratio_c, p.kappa, p.rho_neg, p.rho_pos, p.beta, p.min_k) == (
        1.0, 9.0, None, 0.02, 0.01, 0.0, 1.0, 2)
    logits = torch.log(torch.tensor([[[0.6, 0.3, 0.08, 0.02]]]))
    tokens = torch.tensor([[1]])
    # kappa 0.1 relative: keep p >= 0.06 -> {0.6, 0.3, 0.08}; log(0.3 / 0.98)
    assert float(lp_proxy_feature(logits, tokens, 1.0, Params(kappa=0.1))) == pytest.approx(math.log(0.3 / 0.98), rel=1e-5)
    # kappa 0.4 relative: keep p >= 0.24 -> {0.6, 0.3}; log(0.3 / 0.9)
    assert float(lp_proxy_feature(logits, tokens, 1.0, Params(kappa=0.4))) == pytest.approx(math.log(0.3 / 0.9), rel=1e-5)
