"""token_entropy against a float64 reference, temperature, fp32 output and gradient (chunking: test_token_stats.py)."""

import math

import pytest
import torch

from entropy_rl import token_entropy
from entropy_rl.core.entropy import token_logprobs


def reference(logits: torch.Tensor, tau: float) -> torch.Tensor:
    p = torch.softmax(logits.double() / tau, -1)
    return -(p * torch.log(p)).sum(-1)


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.7])
def test_matches_float64_reference(tau: float) -> None:
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(1)) * 4
    out = token_entropy(logits, tau)
    assert out.dtype == torch.float32 and out.shape == (3, 7)
    torch.testing.assert_close(out.double(), reference(logits, tau), rtol=1e-5, atol=1e-6)


def test_uniform_is_log_v_and_one_hot_is_zero() -> None:
    assert token_entropy(torch.zeros(1, 16)).item() == pytest.approx(math.log(16), rel=1e-6)
    one_hot = torch.full((1, 5), -1e9)
    one_hot[0, 2] = 0.0
    assert token_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    masked = torch.tensor([[0.0, float("-inf"), 0.0]])  # -inf logits (top-k masking) must not give NaN
    assert token_entropy(masked).item() == pytest.approx(math.log(2), rel=1e-6)


def test_bf16_input_is_computed_in_fp32() -> None:
    logits = torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    out = token_entropy(logits.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(logits.bfloat16().float(), 1.0), rtol=1e-5, atol=1e-6)


def test_gradient_matches_logit_space_formula() -> None:
    # dH/dz_v = -p_v (log p_v + H) at tau = 1 (methods.md section 1)
    z = torch.randn(6, dtype=torch.float64, requires_grad=True)
    h = token_entropy(z.float()).double()
    (g,) = torch.autograd.grad(token_entropy(z.float()), z)
    p = torch.softmax(z.detach(), -1)
    torch.testing.assert_close(g, -p * (torch.log(p) + h.detach()), rtol=1e-4, atol=1e-6)


def test_rejects_non_positive_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(torch.zeros(1, 3), 0.0)


def test_token_logprobs_tempered() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = [1/4, 3/4] at tau = 1
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    # tau = 2: softmax([0, log(3)/2]) = [1, sqrt 3] / (1 + sqrt 3)
    assert token_logprobs(logits, torch.tensor([[1]]), 2.0).item() == pytest.approx(math.log(3**0.5 / (1 + 3**0.5)))
