"""GPG: -alpha A log pi with the mini-batch valid-sample correction (hand-computed)."""

from __future__ import annotations

import pytest
import torch

from entropy_rl.core.policy_loss import get_policy_loss, policy_loss, run_select
from entropy_rl.core.types import PolicyInputs, StepContext


def batch():
    logp = torch.tensor([[-0.5, -1.0], [-2.0, -0.1], [-0.3, -0.3], [-1.0, -1.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0], [-0.5, -0.5], [0.0, 0.0], [0.0, 0.0]])  # rows 2, 3 invalid (A = 0)
    return logp, adv, torch.ones(4, 2)


def test_loss_and_gradient_by_hand() -> None:
    # alpha = B / B_valid = 4 / 2 = 2. l = -2 A logp: row 0: -2*1*(-0.5) = 1.0, -2*1*(-1) = 2.0;
    # row 1: -2*(-0.5)*(-2) = -2.0, -2*(-0.5)*(-0.1) = -0.1. Gradient = -alpha A.
    logp, adv, mask = batch()
    out = policy_loss("gpg", logp, logp.detach() + 0.3, adv, mask)  # old_logp does not enter the loss
    torch.testing.assert_close(out.per_token.detach(), torch.tensor([[1.0, 2.0], [-2.0, -0.1], [0.0, 0.0], [0.0, 0.0]]))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    torch.testing.assert_close(g, -2.0 * adv)
    assert float(out.metrics["method/gpg/alpha"]) == 2.0
    assert float(out.metrics["method/gpg/valid_frac"]) == 0.5


def test_without_correction_alpha_is_one() -> None:
    logp, adv, mask = batch()
    out = policy_loss("gpg", logp, logp.detach(), adv, mask, valid_correction=False)
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    torch.testing.assert_close(g, -adv)


def test_alpha_is_a_mini_batch_quantity_sliced_per_micro_batch() -> None:
    logp, adv, mask = batch()
    entry = get_policy_loss("gpg")
    sel = run_select(entry, entry.make_params(), PolicyInputs(logp, logp.detach(), adv, mask), StepContext(), None)
    assert torch.equal(sel.rows(slice(2, 4))["alpha"], torch.full((2, 1), 2.0))  # not 4/0 for the invalid half


def test_all_invalid_gives_alpha_one_and_zero_loss() -> None:
    logp = torch.randn(3, 2, requires_grad=True)
    out = policy_loss("gpg", logp, logp.detach(), torch.zeros(3, 2), torch.ones(3, 2))
    assert float(out.metrics["method/gpg/alpha"]) == 1.0
    assert float(out.per_token.abs().sum()) == pytest.approx(0.0)
