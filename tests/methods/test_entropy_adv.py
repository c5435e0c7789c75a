"""Entropy-based advantage shaping (arXiv:2506.14758): hand-computed cases (arithmetic in comments)."""

from __future__ import annotations

import pytest
import torch

from entropy_rl.core.policy_loss import policy_loss
from entropy_rl.methods.entropy_adv import Params


def test_shaped_advantage_per_token() -> None:
    # alpha 0.4, kappa 2. A = [1, 1, -1, 0], H = [0.5, 4, 4, 3]
    # alpha H = [0.2, 1.6, 1.6, 1.2]; |A| / kappa = [0.5, 0.5, 0.5, 0]; psi = min = [0.2, 0.5, 0.5, 0]
    # A' = A + psi = [1.2, 1.5, -0.5, 0]; on-policy r = 1: loss = -A' = [-1.2, -1.5, 0.5, 0], d loss / d logp = -A'
    logp = torch.tensor([[-1.0, -2.0, -0.5, -1.5]], requires_grad=True)
    entropy = torch.tensor([[0.5, 4.0, 4.0, 3.0]], requires_grad=True)
    out = policy_loss("entropy_adv", logp, logp.detach(), torch.tensor([[1.0, 1.0, -1.0, 0.0]]), torch.ones(1, 4),
                      entropy=entropy, alpha=0.4, kappa=2.0)
    expected = torch.tensor([[-1.2, -1.5, 0.5, 0.0]])
    torch.testing.assert_close(out.per_token, expected)
    g_logp, g_h = torch.autograd.grad(out.per_token.sum(), [logp, entropy], allow_unused=True)
    torch.testing.assert_close(g_logp, expected)
    assert g_h is None  # the entropy term is detached: no gradient into H
    # psi mean (0.2 + 0.5 + 0.5 + 0) / 4 = 0.3; the cap binds on 2 of the 3 tokens with A != 0; H mean 11.5 / 4
    assert float(out.metrics["method/entropy_adv/psi"]) == pytest.approx(0.3)
    assert float(out.metrics["method/entropy_adv/capped_frac"]) == pytest.approx(2 / 3)
    assert float(out.metrics["method/entropy_adv/entropy"]) == pytest.approx(2.875)


def test_shaping_goes_through_the_clip() -> None:
    # r = e^0.2624 = 1.3, A = 1, H = 0.5 -> A' = 1 + min(0.2, 0.5) = 1.2
    # loss = max(-1.2 * 1.3, -1.2 * clip(1.3, 0.8, 1.2)) = max(-1.56, -1.44) = -1.44, clipped: no gradient
    old = torch.tensor([[-1.0]])
    logp = (old + torch.log(torch.tensor(1.3))).requires_grad_(True)
    out = policy_loss("entropy_adv", logp, old, torch.tensor([[1.0]]), torch.ones(1, 1), entropy=torch.tensor([[0.5]]))
    torch.testing.assert_close(out.per_token, torch.tensor([[-1.44]]))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    assert float(g) == 0.0 and float(out.metrics["policy/clipfrac_high"]) == 1.0


def test_sign_of_the_advantage_is_never_flipped() -> None:
    # psi <= |A| / kappa < |A| for kappa > 1: A' has A's sign, A' = 0 where A = 0, |A'| <= (1 + 1/kappa) |A|
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(16, 8, generator=g) * torch.randint(0, 2, (16, 8), generator=g)
    h = torch.rand(16, 8, generator=g) * 10
    logp = torch.full((16, 8), -1.0, requires_grad=True)
    out = policy_loss("entropy_adv", logp, logp.detach(), adv, torch.ones(16, 8), entropy=h, alpha=1.0, kappa=1.5)
    shaped = -out.per_token.detach()  # on-policy: loss = -A'
    assert torch.equal(torch.sign(shaped), torch.sign(adv))
    assert torch.all(shaped.abs() <= adv.abs() * (1 + 1 / 1.5) + 1e-6)


@pytest.mark.parametrize("bad", [{"kappa": 1.0}, {"kappa": 0.5}, {"alpha": -0.1}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
