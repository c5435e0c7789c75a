"""HAPO loss: entropy score, asymmetric adaptive clip ranges, differential advantage redistribution (by hand)."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.policy_loss import get_policy_loss, policy_loss
from entropy_rl.methods.hapo import clip_ranges, entropy_score, redistribute

ENTRY = get_policy_loss("hapo")
# log-entropies [-2, -1, 0, 1, 2]; pivot 0.8 -> index round(0.8 * 4) = 3 -> m = 1
# h = [-3, -2, -1, 0, 1] / sqrt((9 + 4 + 1 + 0 + 1) / 5) = / sqrt(3)
# positive side: / max = 1/sqrt(3) -> last token 1; negative side: / min = -3/sqrt(3)
H = torch.exp(torch.tensor([[-2.0, -1.0, 0.0, 1.0, 2.0]]))
MASK = torch.ones(1, 5)


def test_entropy_score_released_code_is_non_negative() -> None:
    h_hat, m = entropy_score(H, MASK, 0.8, signed=False)
    assert float(m) == pytest.approx(1.0)
    torch.testing.assert_close(h_hat, torch.tensor([[1.0, 2 / 3, 1 / 3, 0.0, 1.0]]), atol=1e-6, rtol=0)


def test_entropy_score_signed_variant() -> None:
    h_hat, _ = entropy_score(H, MASK, 0.8, signed=True)
    torch.testing.assert_close(h_hat, torch.tensor([[-1.0, -2 / 3, -1 / 3, 0.0, 1.0]]), atol=1e-6, rtol=0)


def test_pivot_uses_python_rounding_and_ignores_padding() -> None:
    # 6 masked log-entropies 0..5, pivot 0.5: 0.5 * 5 = 2.5 -> round -> 2 (banker's) -> third smallest = 2
    ent = torch.exp(torch.tensor([[0.0, 1, 2, 3, 4, 5, 40]]))
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 1, 0]])
    _, m = entropy_score(ent, mask, 0.5, signed=False)
    assert float(m) == pytest.approx(2.0)


def test_asymmetric_clip_ranges() -> None:
    # signed h_hat [-1, -2/3, -1/3, 0, 1], eps 0.2, alpha 1:
    # eps_low = 0.2 (1 - h) where h <= 0 -> [0.4, 0.3333, 0.2667, 0.2, 0.2]; eps_high = 0.2 (1 + h) where h > 0
    h_hat, _ = entropy_score(H, MASK, 0.8, signed=True)
    lo, hi = clip_ranges(h_hat, ENTRY.make_params())
    torch.testing.assert_close(lo, torch.tensor([[0.4, 1 / 3, 0.8 / 3, 0.2, 0.2]]))
    torch.testing.assert_close(hi, torch.tensor([[0.2, 0.2, 0.2, 0.2, 0.4]]))


def test_redistribution_rule() -> None:
    # eps 0.2 -> neutral zone (0.9, 1.1). A = 1 everywhere, beta = 1.
    # h = 1  (high), r = 1.0 inside  -> A;     h = 1,    r = 1.3 outside -> A (1 + 1) = 2
    # h = -0.5 (low), r = 1.0 inside -> 0.5;   h = -0.5, r = 1.5 outside -> A
    h = torch.tensor([[1.0, 1.0, -0.5, -0.5]])
    r = torch.tensor([[1.0, 1.3, 1.0, 1.5]])
    eps = torch.full((1, 4), 0.2)
    out = redistribute(torch.ones(1, 4), h, r, eps, eps, 1.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 0.5, 1.0]]))


def test_loss_uses_adapted_bounds() -> None:
    # two tokens, log-entropies [0.69, -0.69]; pivot 0 -> m = -0.69 -> h = [1.39, 0] -> h_hat = [1, 0].
    # the high-entropy token (h_hat = 1) with A = +1 and r = 1.3: eps_high = 0.4 -> 1.3 is not clipped;
    # it is outside the neutral zone (1 + 0.4/2 = 1.2) -> A' = 2 -> loss = -2 * 1.3 = -2.6
    logp = torch.log(torch.tensor([[1.3, 1.0]])).requires_grad_(True)
    ent = torch.tensor([[2.0, 0.5]])
    out = policy_loss("hapo", logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2),
                      entropy=ent, old_entropy=ent, signed_entropy=True, entropy_pivot=0.0)
    assert float(out.per_token.detach()[0, 0]) == pytest.approx(-2.6, rel=1e-5)
    # plain PPO at eps 0.2 clips r = 1.3 to 1.2
    ppo = policy_loss("ppo_clip", logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
    assert float(ppo.per_token.detach()[0, 0]) == pytest.approx(-1.2, rel=1e-5)


def test_falls_back_to_old_entropy() -> None:
    logp = torch.zeros(1, 5, requires_grad=True)
    out = policy_loss("hapo", logp, torch.zeros(1, 5), torch.ones(1, 5), MASK, old_entropy=H)
    assert math.isfinite(float(out.per_token.sum()))
    with pytest.raises(ValueError, match="old_entropy"):
        policy_loss("hapo", logp, torch.zeros(1, 5), torch.ones(1, 5), MASK)
