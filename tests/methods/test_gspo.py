"""GSPO: sequence ratio, sequence-level clipping, token-form gradients (hand-computed)."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.policy_loss import get_policy_loss, policy_loss

ENTRY = get_policy_loss("gspo")


def test_sequence_ratio_and_clipping_by_hand() -> None:
    # row 0: log-ratios [0.2, 0.0] -> log s = 0.1, s = 1.10517; A = +1 > 0 and s > 1 + 4e-4 -> clipped:
    #   loss = -(1 + 4e-4) on both tokens, zero gradient.
    # row 1: log-ratios [0.3, 7.0 (masked)] -> log s = 0.3 (mask excludes the padding), A = -1:
    #   -A s = 1.34986 > -A clip(s) = 1.0004 -> unclipped; d loss / d logp_t = -A s = 1.34986 on the real token.
    logp = torch.tensor([[0.2, 0.0], [0.3, 7.0]], requires_grad=True)
    old = torch.zeros(2, 2)
    adv = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = policy_loss("gspo", logp, old, adv, mask)
    s1 = math.exp(0.3)
    torch.testing.assert_close(out.per_token.detach()[0], torch.tensor([-1.0004, -1.0004]))
    assert float(out.per_token.detach()[1, 0]) == pytest.approx(s1, rel=1e-6)
    (g,) = torch.autograd.grad((out.per_token * mask).sum(), logp)
    torch.testing.assert_close(g, torch.tensor([[0.0, 0.0], [s1, 0.0]]))
    assert float(out.metrics["method/gspo/seq_ratio_mean"]) == pytest.approx((math.exp(0.1) + s1) / 2, rel=1e-6)


def test_every_token_of_a_sequence_shares_the_ratio_value() -> None:
    # log-ratios [0.5, -0.1, 0.2] -> s = exp(0.2); A = -1 so nothing clips above; l_t = s for all t
    logp = torch.tensor([[0.5, -0.1, 0.2]], requires_grad=True)
    out = policy_loss("gspo", logp, torch.zeros(1, 3), torch.full((1, 3), -1.0), torch.ones(1, 3), eps_low=0.5)
    torch.testing.assert_close(out.per_token.detach(), torch.full((1, 3), math.exp(0.2)))


def test_on_policy_gradient_equals_ppo() -> None:
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 5, generator=g).requires_grad_(True)
    adv = torch.randn(4, 1, generator=g).expand(4, 5)
    mask = torch.ones(4, 5)
    grads = []
    for name in ("gspo", "ppo_clip"):
        out = policy_loss(name, logp, logp.detach(), adv, mask)
        grads.append(torch.autograd.grad((out.per_token * mask).sum(), logp)[0])
    torch.testing.assert_close(grads[0], grads[1])  # both -A per token at ratio 1


def test_large_sequence_ratio_is_capped() -> None:
    # log s = 15 > 10: value capped at e^10, finite gradient (zero: the cap stops it)
    logp = torch.tensor([[15.0]], requires_grad=True)
    out = policy_loss("gspo", logp, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1))
    assert float(out.per_token) == pytest.approx(math.exp(10.0), rel=1e-5)
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    assert torch.isfinite(g).all()
