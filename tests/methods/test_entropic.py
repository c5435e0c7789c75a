"""EntroPIC (arXiv:2511.15248): the PI controller, the high-probability adjustment and its aggregation, by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from entropy_rl.core.aggregate import Aggregation, aggregate
from entropy_rl.core.policy_loss import get_policy_loss, policy_loss, run_select
from entropy_rl.core.types import PolicyInputs, StepContext
from entropy_rl.methods.entropic import EntropicState, EntropicValues, Params

ENTRY = get_policy_loss("entropic")


def batch_with_entropy(value: float) -> PolicyInputs:
    """Two tokens, the second masked out: the state must read `value` and ignore the 99."""
    z = torch.zeros(1, 2)
    ent = torch.tensor([[value, 99.0]])
    return PolicyInputs(z, z, z, torch.tensor([[1.0, 0.0]]), ent, ent)


def test_pi_controller_sequence() -> None:
    # target 0.5, kp 1, ki 0.1; alpha = clip(kp e + ki I, -1, 1) with I of the finished steps, then I += e
    # H = 1.0: e = 0.5,  alpha = 0.5 + 0.1 * 0   = 0.5,   I = 0.5
    # H = 0.9: e = 0.4,  alpha = 0.4 + 0.1 * 0.5 = 0.45,  I = 0.9
    # H = 0.2: e = -0.3, alpha = -0.3 + 0.1 * 0.9 = -0.21, I = 0.6
    # H = 3.0: e = 2.5,  alpha = 2.5 + 0.06 = 2.56 -> 1.0, I = 3.1
    p = Params(target_entropy=0.5, kp=1.0, ki=0.1)
    state = EntropicState(p)
    assert state.values(p) == EntropicValues(0.0)  # before any batch
    alphas = []
    for h in [1.0, 0.9, 0.2, 3.0]:
        state.before_update(batch_with_entropy(h))
        alphas.append(state.values(p).alpha)
        state.after_update({})
    assert alphas == pytest.approx([0.5, 0.45, -0.21, 1.0])
    assert state.integral == pytest.approx(3.1)
    assert state.metrics() == {"method/entropic/alpha": 1.0, "method/entropic/integral": pytest.approx(3.1),
                               "method/entropic/error": pytest.approx(2.5)}


def test_token_mean_adjustment_is_normalised_over_high_probability_tokens() -> None:
    # on-policy (r = 1), p = [0.99, 0.97, 0.5, 0.96], A = [1, -1, 1, 0], alpha 0.3, high_prob 0.95
    # high tokens 0, 1, 3 (N_high = 3 of N = 4): official = mean(-A) + 0.3 * mean_high(-r|A|)
    #   = (-1 + 1 - 1 + 0) / 4 + 0.3 * (-1 - 1 - 0) / 3 = -0.25 - 0.2 = -0.45
    # per token: coef = 0.3 * (1/3) / (1/4) = 0.4 on high tokens -> [-1 - 0.4, 1 - 0.4, -1, 0] = [-1.4, 0.6, -1, 0]
    # a confident positive token counts 1.4, a confident negative one 0.6 (alpha > 0 lowers the entropy)
    logp = torch.log(torch.tensor([[0.99, 0.97, 0.5, 0.96]])).requires_grad_(True)
    out = policy_loss("entropic", logp, logp.detach(), torch.tensor([[1.0, -1.0, 1.0, 0.0]]), torch.ones(1, 4),
                      old_entropy=torch.ones(1, 4), values=EntropicValues(0.3))
    torch.testing.assert_close(out.per_token, torch.tensor([[-1.4, 0.6, -1.0, 0.0]]))
    total = aggregate(out.per_token, torch.ones(1, 4), "token-mean")
    assert float(total.detach()) == pytest.approx(-0.45)
    (g,) = torch.autograd.grad(total, logp)  # d(-A r - coef r |A|)/d logp = (-A - coef |A|) r, over N = 4
    torch.testing.assert_close(g, torch.tensor([[-0.35, 0.15, -0.25, 0.0]]))
    assert float(out.metrics["method/entropic/high_frac"]) == pytest.approx(0.75)


def test_seq_mean_token_mean_takes_each_sequences_high_token_mean() -> None:
    # seq 0 as above (4 valid); seq 1: p = [0.98, 0.3], A = [-1, -1], 2 valid (high: token 0 only)
    # PPO: seq means (-0.25, (1 + 1) / 2 = 1) -> (-0.25 + 1) / 2 = 0.375
    # adjustment: high-token means (-2/3, -1) -> (-2/3 - 1) / 2 = -5/6, times alpha 0.3 = -0.25; total 0.125
    probs = torch.tensor([[0.99, 0.97, 0.5, 0.96], [0.98, 0.3, 0.5, 0.5]])
    logp = torch.log(probs).requires_grad_(True)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    adv = torch.tensor([[1.0, -1, 1, 0], [-1, -1, 0, 0]])
    out = policy_loss("entropic", logp, logp.detach(), adv, mask, old_entropy=torch.ones(2, 4),
                      loss_agg_mode="seq-mean-token-mean", values=EntropicValues(0.3))
    assert float(aggregate(out.per_token.detach(), mask, "seq-mean-token-mean")) == pytest.approx(0.125)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_micro_batches_give_the_mini_batch_gradient(mode: str) -> None:
    """Select once over the mini-batch with alpha = 0.7, then 1 vs 4 micro-batches: same gradient."""
    g = torch.Generator().manual_seed(0)
    b, t = 8, 5
    logp = (torch.rand(b, t, generator=g) * -0.2).requires_grad_(True)  # probabilities 0.82 .. 1, many above 0.95
    old = (logp + 0.05 * torch.randn(b, t, generator=g)).detach()
    adv = torch.randn(b, 1, generator=g).expand(b, t)
    mask = (torch.arange(t)[None] < torch.tensor([5, 4, 3, 5, 2, 5, 1, 4])[:, None]).float()
    x = PolicyInputs(logp, old, adv * mask, mask, old_entropy=torch.ones(b, t))
    p = ENTRY.make_params()
    ctx = StepContext(EntropicValues(0.7), Aggregation(mode)).for_minibatch(num_tokens=mask.sum(), num_seqs=b)
    sel = run_select(ENTRY, p, x, ctx, None)
    grads = []
    for n_micro in (1, 4):
        total = 0.0
        for start in range(0, b, b // n_micro):
            rows = slice(start, start + b // n_micro)
            total = total + ctx.agg.reduce(ENTRY.obj.loss(x.rows(rows), p, sel.rows(rows), ctx).per_token, mask[rows])
        grads.append(torch.autograd.grad(total, logp)[0])
    torch.testing.assert_close(grads[0], grads[1])


def test_state_dict_survives_json_and_continues_identically() -> None:
    p = Params(target_entropy=0.3, ki=0.2)
    a = EntropicState(p)
    for h in [0.9, 0.1]:
        a.before_update(batch_with_entropy(h))
        a.after_update({})
    b = EntropicState(p)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict() and b.values(p) == a.values(p)
    for s in (a, b):
        s.before_update(batch_with_entropy(0.7))
    assert b.values(p) == a.values(p)
    # I = 0.6 - 0.2 = 0.4; alpha = 0.4 + 0.2 * 0.4 = 0.48
    assert a.values(p).alpha == pytest.approx(0.48)


@pytest.mark.parametrize("bad", [{"high_prob": 1.0}, {"high_prob": 0.0}, {"kp": -1.0}, {"ki": -0.1},
                                 {"target_entropy": -1.0}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)


def test_threshold_is_on_the_probability() -> None:
    # high_prob 0.5: p = 0.6 is adjusted, p = 0.4 is not (log 0.6 = -0.511 > log 0.5 = -0.693 > log 0.4)
    logp = torch.log(torch.tensor([[0.6, 0.4]]))
    x = PolicyInputs(logp, logp, torch.ones(1, 2), torch.ones(1, 2), old_entropy=torch.ones(1, 2))
    sel = run_select(ENTRY, Params(high_prob=0.5), x, StepContext(EntropicValues(1.0)), None)
    # token-mean: coef = 1 * (1/1) / (1/2) = 2 on the one high token
    torch.testing.assert_close(sel["coef"], torch.tensor([[2.0, 0.0]]))
    assert math.isclose(float(sel.metrics["method/entropic/high_frac"]), 0.5)
