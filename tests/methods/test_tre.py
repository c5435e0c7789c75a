"""TRE (arXiv:2602.03635): trust-region entropy (TRE-K, TRE-P) and its loss, hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.entropy import token_entropy
from entropy_rl.core.policy_loss import policy_loss
from entropy_rl.methods.tre import Params, tre_entropy_feature, trust_region_entropy


def h(*q: float) -> float:
    """Entropy -sum q log q of a normalised distribution (nats)."""
    return -sum(x * math.log(x) for x in q)


PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])  # V = 4, already sorted


def test_tre_k_renormalises_the_top_k_and_rescales_to_log_v() -> None:
    # p = [3, 1, 0.5, 0.5] / 5, K = 2: q = [3, 1] / 4 = [0.75, 0.25]
    # H = 0.75 * 0.287682 + 0.25 * 1.386294 = 0.562335; rescaled by log 4 / log 2 = 2 -> 1.124671
    logits = torch.log(torch.tensor([3.0, 1.0, 0.5, 0.5]))
    out = trust_region_entropy(logits, 1.0, Params(top_k=2))
    assert float(out) == pytest.approx(2 * h(0.75, 0.25), abs=1e-6)
    assert float(out) == pytest.approx(1.124671, abs=1e-5)


def test_tre_k_uses_the_tempered_logits() -> None:
    # T = 2: z / T -> top-2 q proportional to [sqrt 3, 1] = [0.633975, 0.366025]
    # H = 0.633975 * 0.455746 + 0.366025 * 1.005052 = 0.656807; x 2 = 1.313614
    logits = torch.log(torch.tensor([3.0, 1.0, 0.5, 0.5]))
    q = math.sqrt(3) / (math.sqrt(3) + 1)
    out = trust_region_entropy(logits, 2.0, Params(top_k=2))
    assert float(out) == pytest.approx(2 * h(q, 1 - q), abs=1e-6)
    assert float(out) == pytest.approx(1.313614, abs=1e-5)


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [
        # mass of the tokens ranked above: [0, 0.5, 0.8, 0.95]; keep where < top_p (the crossing token is kept)
        (0.85, (0.5, 0.3, 0.15)),  # 0.8 < 0.85: m = 3, q = [0.526316, 0.315789, 0.157895]
        (0.6, (0.5, 0.3)),  # 0.5 < 0.6 keeps 0.3 as well (SIREN's top-p would keep only 0.5): q = [0.625, 0.375]
        (0.4, (0.5,)),  # only the top token: m = 1 -> 0
    ],
)
def test_tre_p_keeps_the_token_that_crosses_top_p(top_p: float, kept: tuple[float, ...]) -> None:
    out = float(trust_region_entropy(torch.log(PROBS), 1.0, Params(region="top_p", top_p=top_p)))
    if len(kept) == 1:
        assert out == 0.0
        return
    q = [x / sum(kept) for x in kept]
    # rescaled by log V / log m: 0.85 -> H(q) * log 4 / log 3; 0.6 -> 0.661563 * 2 = 1.323126
    assert out == pytest.approx(h(*q) * math.log(4) / math.log(len(kept)), abs=1e-6)
    if top_p == 0.6:
        assert out == pytest.approx(1.323126, abs=1e-5)


def test_uniform_policy_gives_log_v_in_both_regions() -> None:
    # uniform over V = 8: any region of m tokens has entropy log m, rescaled by log 8 / log m -> log 8 = 2.079442
    logits = torch.zeros(8)
    for p in (Params(top_k=3), Params(region="top_p", top_p=0.99)):
        assert float(trust_region_entropy(logits, 1.0, p)) == pytest.approx(math.log(8), abs=1e-6)


def test_k_at_least_v_is_the_full_entropy() -> None:
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(trust_region_entropy(logits, 0.7, Params(top_k=9)), token_entropy(logits, 0.7))


def test_top_p_searches_only_the_256_most_probable_tokens() -> None:
    # V = 300: 255 tokens at logit 1, 45 at logit 0. The 0.99 nucleus needs more than 256 tokens; the official cap
    # keeps the first 256 candidates (255 at logit 1 + one at logit 0), rescaled by log 300 / log 256
    logits = torch.cat([torch.ones(255), torch.zeros(45)])
    region = torch.cat([torch.ones(255), torch.zeros(1)])
    expected = token_entropy(region) * math.log(300) / math.log(256)
    torch.testing.assert_close(trust_region_entropy(logits, 1.0, Params(region="top_p", top_p=0.99)), expected)


def test_gradient_flows_only_through_the_region_and_is_finite() -> None:
    logits = torch.log(PROBS).repeat(2, 1).requires_grad_(True)
    for p in (Params(top_k=2), Params(region="top_p", top_p=0.6)):
        (g,) = torch.autograd.grad(trust_region_entropy(logits, 1.0, p).sum(), logits)
        assert torch.isfinite(g).all()
        assert torch.all(g[:, 2:] == 0) and torch.all(g[:, :2] != 0)  # tokens 3 and 4 are outside both regions


def test_feature_works_per_chunk_and_per_batch() -> None:
    # the same rows as [B, T, V] and flattened [n, V] (the per-chunk feature signature) give the same values
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 7, generator=g)
    tokens = torch.zeros(2, 3, dtype=torch.long)
    for p in (Params(), Params(region="top_p", top_p=0.9)):
        full = tre_entropy_feature(logits, tokens, 0.9, p)
        flat = tre_entropy_feature(logits.reshape(6, 7), tokens.reshape(6), 0.9, p)
        assert full.shape == (2, 3)
        torch.testing.assert_close(full.reshape(6), flat)


def test_loss_is_ppo_minus_coef_times_trust_region_entropy() -> None:
    # on-policy r = 1, A = 1: ppo = -1; H_TRE = 1.124671, coef 0.1 -> -1 - 0.1124671 = -1.1124671
    # d loss / d H = -coef: the bonus has gradient
    logp = torch.tensor([[-1.0]], requires_grad=True)
    h_tre = torch.tensor([[2 * h(0.75, 0.25)]], requires_grad=True)
    out = policy_loss("tre", logp, logp.detach(), torch.tensor([[1.0]]), torch.ones(1, 1),
                      extras={"tre_entropy": h_tre}, coef=0.1)
    torch.testing.assert_close(out.per_token, torch.tensor([[-1.1124671]]))
    (g,) = torch.autograd.grad(out.per_token.sum(), h_tre)
    assert float(g) == pytest.approx(-0.1)
    assert float(out.metrics["method/tre/entropy"]) == pytest.approx(1.124671, abs=1e-5)


@pytest.mark.parametrize("bad", [{"top_k": 1}, {"top_p": 1.0}, {"top_p": 0.0}, {"region": "top_q"}, {"coef": -1.0}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
