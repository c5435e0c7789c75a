"""k1 / k2 / k3 values by hand and the forward-KL gradient of k3 (methods.md Appendix A)."""

import math

import pytest
import torch

from entropy_rl.core.kl import kl_estimate


def test_values_by_hand() -> None:
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(1.0)  # -1 - (-2)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5)  # 0.5 * 1^2
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-1) + 1 - 1)  # d = -1: e^-1 - (-1) - 1
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(logp, ref, "k4")


def test_k3_is_clamped_and_nonnegative() -> None:
    out = kl_estimate(torch.tensor([-100.0, 0.0]), torch.tensor([0.0, 0.0]), "k3")
    assert out[0].item() == 10.0 and out[1].item() == 0.0


def test_k3_expected_gradient_is_forward_kl() -> None:
    # exact expectation over a 4-token softmax: sum_a pi(a) grad k3(a) = grad KL(ref || pi)
    z = torch.tensor([0.3, -0.2, 1.0, 0.1], dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.tensor([0.0, 0.5, -0.5, 0.2], dtype=torch.float64), -1)
    logp = torch.log_softmax(z, -1)
    expected_k3 = (logp.exp().detach() * kl_estimate(logp, ref, "k3")).sum()
    (g_k3,) = torch.autograd.grad(expected_k3, z)
    forward_kl = (ref.exp() * (ref - torch.log_softmax(z, -1))).sum()
    (g_fwd,) = torch.autograd.grad(forward_kl, z)
    torch.testing.assert_close(g_k3, g_fwd)
