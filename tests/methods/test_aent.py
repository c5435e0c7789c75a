"""AEnt (arXiv:2509.03493): clamped entropy, its loss and the adaptive coefficient, hand-computed cases."""

from __future__ import annotations

import json
import math

import pytest
import torch

from entropy_rl.core.entropy import token_entropy
from entropy_rl.core.policy_loss import policy_loss
from entropy_rl.core.types import PolicyInputs
from entropy_rl.methods.aent import AEntState, AEntValues, Params, clamped_entropy, clamped_entropy_feature


def h(*weights: float) -> float:
    """Entropy of the distribution proportional to `weights` (nats)."""
    total = sum(weights)
    return -sum(w / total * math.log(w / total) for w in weights)


def batch_with_entropy(value: float) -> PolicyInputs:
    """A one-token batch whose clamped-entropy feature is `value` (what `before_update` reads)."""
    z = torch.zeros(1, 1)
    return PolicyInputs(z, z, z, torch.ones(1, 1), extras={"clamped_entropy": torch.full((1, 1), value)})


def test_clamped_entropy_drops_the_lowest_logits_and_renormalises() -> None:
    # V = 5, p proportional to [4, 2, 1, 0.5, 0.5], clamp 0.4 -> k = int(5 * 0.4) = 2 lowest removed
    # q = [4, 2, 1] / 7: H = 4/7 * 0.559616 + 2/7 * 1.252763 + 1/7 * 1.945910 = 0.955700
    logits = torch.log(torch.tensor([4.0, 2.0, 1.0, 0.5, 0.5]))
    out = clamped_entropy(logits, 1.0, 0.4)
    assert float(out) == pytest.approx(h(4, 2, 1), abs=1e-6)
    assert float(out) == pytest.approx(0.955700, abs=1e-5)
    # clamp 0.2 -> k = 1: one of the tied 0.5 goes: q = [4, 2, 1, 0.5] / 7.5
    assert float(clamped_entropy(logits, 1.0, 0.2)) == pytest.approx(h(4, 2, 1, 0.5), abs=1e-6)


def test_clamped_entropy_is_tempered_and_zero_clamp_is_the_full_entropy() -> None:
    # T = 2: p proportional to sqrt([4, 2, 1, 0.5, 0.5]); clamp 0.4 keeps [2, sqrt 2, 1]
    logits = torch.log(torch.tensor([4.0, 2.0, 1.0, 0.5, 0.5]))
    assert float(clamped_entropy(logits, 2.0, 0.4)) == pytest.approx(h(2, math.sqrt(2), 1), abs=1e-6)
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(clamped_entropy(x, 0.8, 0.0), token_entropy(x, 0.8))
    torch.testing.assert_close(clamped_entropy(x, 0.8, 0.1), token_entropy(x, 0.8))  # int(6 * 0.1) = 0 removed


def test_gradient_reaches_only_the_kept_logits() -> None:
    logits = torch.log(torch.tensor([[4.0, 2.0, 1.0, 0.5, 0.5]])).requires_grad_(True)
    (g,) = torch.autograd.grad(clamped_entropy(logits, 1.0, 0.4).sum(), logits)
    assert torch.isfinite(g).all() and torch.all(g[0, 3:] == 0) and torch.all(g[0, :3] != 0)


def test_feature_works_per_chunk_and_per_batch() -> None:
    logits = torch.randn(2, 3, 9, generator=torch.Generator().manual_seed(2))
    tokens = torch.zeros(2, 3, dtype=torch.long)
    full = clamped_entropy_feature(logits, tokens, 1.0, Params())
    torch.testing.assert_close(full.reshape(6), clamped_entropy_feature(logits.reshape(6, 9), tokens.reshape(6), 1.0, Params()))


def test_loss_is_ppo_minus_coef_times_clamped_entropy() -> None:
    # on-policy r = 1, A = -1: ppo = 1; H_clamp = 0.9557, c = 0.5 -> 1 - 0.47785 = 0.52215; d loss / d H = -0.5
    logp = torch.tensor([[-1.0]], requires_grad=True)
    hc = torch.tensor([[h(4, 2, 1)]], requires_grad=True)
    out = policy_loss("aent", logp, logp.detach(), torch.tensor([[-1.0]]), torch.ones(1, 1),
                      extras={"clamped_entropy": hc}, values=AEntValues(coef=0.5))
    torch.testing.assert_close(out.per_token, torch.tensor([[1.0 - 0.5 * h(4, 2, 1)]]))
    (g,) = torch.autograd.grad(out.per_token.sum(), hc)
    assert float(g) == pytest.approx(-0.5)
    # without values the function API uses a fresh state's coefficient, coef (0.0002)
    out = policy_loss("aent", logp, logp.detach(), torch.tensor([[-1.0]]), torch.ones(1, 1), extras={"clamped_entropy": hc})
    assert float(out.per_token.detach()) == pytest.approx(1.0 - 0.0002 * h(4, 2, 1))


def test_adaptive_coefficient_sequence() -> None:
    # c0 = 0.02, lr 0.01, band [0.1, 0.3], c in [0.001, 0.05], warm-up 1 (first update after step index 2)
    # step 0, 1: warm-up, c stays 0.02
    # step 2: H = 0.05 < 0.1: c = 0.02 - 0.01 * (0.05 - 0.1) = 0.0205
    # step 3: H = 0.5 > 0.3:  c = 0.0205 - 0.01 * (0.5 - 0.3) = 0.0185
    # step 4: H = 0.2 in band: c = 0.0185
    # step 5: H = 10: 0.0185 - 0.01 * 9.7 = -0.0785 -> clipped to 0.001
    p = Params(coef=0.02, coef_lr=0.01, entropy_low=0.1, entropy_high=0.3, coef_min=0.001, coef_max=0.05, warmup_steps=1)
    state = AEntState(p)
    used = []
    for value in [0.05, 0.05, 0.05, 0.5, 0.2, 10.0]:
        state.before_update(batch_with_entropy(value))
        used.append(state.values(p).coef)
        state.after_update({})
    assert used == pytest.approx([0.02, 0.02, 0.02, 0.0205, 0.0185, 0.0185])
    assert state.coef == pytest.approx(0.001)
    assert state.metrics() == {"method/aent/coef": pytest.approx(0.001), "method/aent/batch_entropy": pytest.approx(10.0)}


def test_fixed_coefficient_when_not_adaptive() -> None:
    p = Params(coef=0.01, adaptive=False, warmup_steps=0)
    state = AEntState(p)
    for value in [0.0, 5.0, 0.0]:
        state.before_update(batch_with_entropy(value))
        state.after_update({})
    assert state.values(p) == AEntValues(0.01)


def test_state_dict_survives_json_and_continues_identically() -> None:
    p = Params(coef=0.002, warmup_steps=0, coef_lr=0.01)
    a = AEntState(p)
    for value in [0.01, 0.02, 0.9]:
        a.before_update(batch_with_entropy(value))
        a.after_update({})
    b = AEntState(p)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict() and b.values(p) == a.values(p)
    for s in (a, b):
        s.before_update(batch_with_entropy(0.0))
        s.after_update({})
    assert b.coef == a.coef


@pytest.mark.parametrize("bad", [{"clamp": 1.0}, {"clamp": -0.1}, {"entropy_low": 0.5, "entropy_high": 0.1},
                                 {"coef_min": 0.1, "coef_max": 0.01}, {"coef": -1.0}, {"warmup_steps": -1}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
