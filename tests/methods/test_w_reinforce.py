"""W-REINFORCE / NSR (arXiv:2506.01347, TianHongZXY/RLVR-Decomposed): hand-computed cases, arithmetic in comments."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.advantage import compute_advantages
from entropy_rl.core.aggregate import aggregate
from entropy_rl.core.policy_loss import get_policy_loss, policy_loss
from entropy_rl.methods.w_reinforce import Params
from entropy_rl.presets import resolve

ENTRY = get_policy_loss("w_reinforce")


def test_signed_rewards_give_the_papers_lambda_and_minus_one() -> None:
    # rewards [1, 0, 1, 0] -> A = 2r - 1 = [1, -1, 1, -1]; lambda 0.1 -> A' = [0.1, -1, 0.1, -1]
    adv = compute_advantages("signed_reward", torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.zeros(4, dtype=torch.long))
    logp = torch.full((4, 1), -1.0, requires_grad=True)
    out = policy_loss("w_reinforce", logp, logp.detach(), adv, torch.ones(4, 1))  # on-policy: l = -A'
    torch.testing.assert_close(out.per_token.detach(), torch.tensor([[-0.1], [1.0], [-0.1], [1.0]]))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    torch.testing.assert_close(g, torch.tensor([[-0.1], [1.0], [-0.1], [1.0]]))  # -A' r, r = 1
    assert float(out.metrics["method/w_reinforce/neg_frac"]) == pytest.approx(0.5)


def test_lambda_scales_the_clipped_surrogate_of_positive_tokens() -> None:
    # A = [+2, +2, -1], log r = [ln 1.5, ln 1.1, ln 0.5], eps 0.2:
    # t0: PPO -A clip(r) = -2 * 1.2 = -2.4 -> x0.1 = -0.24 (clipped, no gradient)
    # t1: -A r = -2.2 -> x0.1 = -0.22, gradient -0.22;  t2: A < 0, r = 0.5 < 0.8: -(-1)(0.8) = 0.8, no gradient
    logp = torch.tensor([[-1.0, -1.0, -1.0]], requires_grad=True)
    old_logp = logp.detach() - torch.tensor([[math.log(1.5), math.log(1.1), math.log(0.5)]])
    out = policy_loss("w_reinforce", logp, old_logp, torch.tensor([[2.0, 2.0, -1.0]]), torch.ones(1, 3))
    torch.testing.assert_close(out.per_token.detach(), torch.tensor([[-0.24, -0.22, 0.8]]))
    (g,) = torch.autograd.grad(out.per_token.sum(), logp)
    torch.testing.assert_close(g, torch.tensor([[0.0, -0.22, 0.0]]))
    ref = policy_loss("ppo_clip", logp, old_logp, torch.tensor([[2.0, 2.0, -1.0]]), torch.ones(1, 3), clip_ratio_c=None)
    torch.testing.assert_close(out.per_token[0, :2], 0.1 * ref.per_token[0, :2])  # lambda x PPO on A > 0


def test_nsr_trains_only_negative_tokens_but_counts_all_in_token_mean() -> None:
    # lambda = 0: A = [+1, -1] -> l = [0, 1]; token-mean over both tokens = (0 + 1) / 2 = 0.5 (the official
    # trainer would drop the correct sample and give 1 / 1 = 1: the documented departure)
    logp = torch.tensor([[-1.0], [-2.0]], requires_grad=True)
    out = policy_loss("w_reinforce", logp, logp.detach(), torch.tensor([[1.0], [-1.0]]), torch.ones(2, 1),
                      positive_weight=0.0)
    loss = aggregate(out.per_token, torch.ones(2, 1), "token-mean")
    assert float(loss.detach()) == pytest.approx(0.5)
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g, torch.tensor([[0.0], [0.5]]))


def test_variants_pair_the_method_with_signed_rewards() -> None:
    for name, weight in (("w_reinforce", 0.1), ("nsr", 0.0)):
        algorithm = resolve(name).overrides["algorithm"]
        assert (algorithm["advantage"], algorithm["method"]) == ("signed_reward", "w_reinforce")
        assert ENTRY.make_params(**algorithm["method_params"]).positive_weight == weight
    assert dict(ENTRY.obj.neutral) == {"positive_weight": 1.0}
    assert Params().clip_ratio_c is None  # the official loss has no dual clip


@pytest.mark.parametrize("bad", [{"positive_weight": -0.1}, {"eps_high": -0.2}, {"clip_ratio_c": 1.0}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
