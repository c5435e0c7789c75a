"""80/20 top-entropy tokens (methods.md section 4): hand-computed cases, arithmetic in comments."""

from __future__ import annotations

import pytest
import torch

from entropy_rl.core.aggregate import aggregate
from entropy_rl.core.policy_loss import POLICY_LOSSES, get_policy_loss, run_select
from entropy_rl.core.types import PolicyInputs, StepContext, TokenWeights
from entropy_rl.methods.top_entropy import Params, n_to_keep
from entropy_rl.presets import resolve

ENTRY = get_policy_loss("top_entropy")


def variant_params(name: str) -> Params:
    """The Params a packaged variant sets (entropy_rl/presets/methods/<name>.yaml), checked to be a top_entropy variant."""
    algorithm = resolve(name).overrides["algorithm"]
    assert algorithm["method"] == "top_entropy"
    return ENTRY.make_params(**algorithm.get("method_params", {}))


def hand_case() -> PolicyInputs:
    """2 x 3, position (1, 2) is padding.

    H_old = [[0.1, 2.0, 0.5],
             [1.5, 0.3, 9.9(pad)]]      N_valid = 5
    rho = 0.4 -> k = max(1, ceil(0.4 * 5)) = ceil(2.0) = 2 -> {(0, 1): 2.0, (1, 0): 1.5}, threshold 1.5
    On-policy (r = 1), so the PPO loss is -A: A = [[2, 2, 2], [1, 1, 0]] -> l = [[-2, -2, -2], [-1, -1, 0]].
    """
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    old_logp = torch.full((2, 3), -1.0)
    adv = torch.tensor([[2.0, 2.0, 2.0], [1.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    h_old = torch.tensor([[0.1, 2.0, 0.5], [1.5, 0.3, 9.9]])
    h_cur = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    return PolicyInputs(logp, old_logp, adv, mask, entropy=h_cur, old_entropy=h_old)


def test_hand_case_selected_set_and_threshold() -> None:
    sel = run_select(ENTRY, Params(rho=0.4), hand_case(), StepContext(), None)
    assert sel["keep"].tolist() == [[False, True, False], [True, False, False]]
    assert float(sel.metrics["method/top_entropy/threshold"]) == pytest.approx(1.5)
    assert float(sel.metrics["method/top_entropy/selected_frac"]) == pytest.approx(2 / 5)


def test_current_entropy_source_uses_h_cur() -> None:
    # H_cur valid = [3.0, 0, 0, 0, 2.0] -> top-2 {(0, 0), (1, 1)}, threshold 2.0
    sel = run_select(ENTRY, Params(rho=0.4, entropy_source="current"), hand_case(), StepContext(), None)
    assert sel["keep"].tolist() == [[True, False, False], [False, True, False]]
    assert float(sel.metrics["method/top_entropy/threshold"]) == pytest.approx(2.0)


@pytest.mark.parametrize("normalize", ["all_tokens", "selected_tokens"])
def test_normalisations(normalize: str) -> None:
    x = hand_case()
    p = Params(rho=0.4, normalize=normalize)
    out = ENTRY.obj.loss(x, p, run_select(ENTRY, p, x, StepContext(), None), StepContext())
    loss = aggregate(out.per_token, x.mask, "token-mean")
    # selected losses: (0, 1) -> -2, (1, 0) -> -1; sum -3
    # all_tokens:      -3 / N_valid = -3 / 5 = -0.6                      (paper, TRL)
    # selected_tokens: per-token x N_valid / N_sel = x 5/2, then / 5 -> -3 / 2 = -1.5 = 2.5 x (-0.6)  (official code)
    expected = -0.6 if normalize == "all_tokens" else -1.5
    assert float(loss.detach()) == pytest.approx(expected)
    (g,) = torch.autograd.grad(loss, x.logp)
    # gradient only on the selected tokens: d(-A r)/dlogp = -A r = -A, times scale / 5
    scale = 1.0 if normalize == "all_tokens" else 2.5
    torch.testing.assert_close(g, torch.tensor([[0.0, -2.0, 0.0], [-1.0, 0.0, 0.0]]) * scale / 5)


def test_scale_is_per_row_and_survives_micro_batch_slicing() -> None:
    sel = run_select(ENTRY, Params(rho=0.4, normalize="selected_tokens"), hand_case(), StepContext(), None)
    assert sel["scale"].shape == (2, 1)
    torch.testing.assert_close(sel.rows(slice(1, 2))["scale"], torch.tensor([[2.5]]))


def test_rho_one_is_ppo_clip() -> None:
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g) * 3).requires_grad_(True)
    x = PolicyInputs(logp, logp.detach() + 0.4 * torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g),
                     torch.ones(3, 5), old_entropy=torch.rand(3, 5, generator=g))
    ref = POLICY_LOSSES.get("ppo_clip")
    for normalize in ("all_tokens", "selected_tokens"):
        p = Params(rho=1.0, normalize=normalize)
        out = ENTRY.obj.loss(x, p, run_select(ENTRY, p, x, StepContext(), None), StepContext())
        expected = ref.obj.loss(x, ref.make_params(eps_low=0.2, eps_high=0.28, clip_ratio_c=10.0), TokenWeights(), StepContext())
        torch.testing.assert_close(out.per_token, expected.per_token)


def test_ties_select_exactly_k() -> None:
    # H = [3, 2, 2, 0.5], rho = 0.5 -> k = 2: 3.0 and ONE of the tied 2.0s (torch.topk), threshold 2.0;
    # a ">= threshold" rule would have kept 3 tokens
    x = PolicyInputs(torch.zeros(1, 4), torch.zeros(1, 4), torch.ones(1, 4), torch.ones(1, 4),
                     old_entropy=torch.tensor([[3.0, 2.0, 2.0, 0.5]]))
    sel = run_select(ENTRY, Params(rho=0.5), x, StepContext(), None)
    assert int(sel["keep"].sum()) == 2 and bool(sel["keep"][0, 0]) and not bool(sel["keep"][0, 3])
    assert float(sel.metrics["method/top_entropy/threshold"]) == 2.0


def test_n_to_keep() -> None:
    assert n_to_keep(0.2, 5) == 1  # ceil(1.0)
    assert n_to_keep(0.2, 6) == 2  # ceil(1.2)
    assert n_to_keep(0.7, 10) == 7  # 0.7 * 10 = 7.000000000000001 in floats: still 7
    assert n_to_keep(0.01, 5) == 1  # max(1, ceil(0.05))
    assert n_to_keep(1.0, 9) == 9
    assert n_to_keep(0.2, 0) == 0


def trl_quantile_count(entropy: torch.Tensor, rho: float) -> int:
    """How many tokens TRL's mask keeps: H >= torch.quantile(H, 1 - rho) (trl 1.16 `get_high_entropy_mask`)."""
    return int((entropy >= torch.quantile(entropy, 1 - rho)).sum())


def test_trl_quantile_rule_keeps_the_same_k_or_one_fewer_as_the_docstring_says() -> None:
    g = torch.Generator().manual_seed(0)
    for n in range(1, 60):
        h = torch.rand(n, generator=g)  # distinct entropies
        assert trl_quantile_count(h, 0.2) == n_to_keep(0.2, n)  # rho = 1/5: always the same k
        assert trl_quantile_count(h, 0.3) == 1 + int(0.3 * (n - 1) + 1e-9)  # 1 + floor(rho (N - 1))
    assert trl_quantile_count(torch.rand(7, generator=g), 0.3) == 2 and n_to_keep(0.3, 7) == 3  # one fewer
    assert trl_quantile_count(torch.tensor([0.0] * 6 + [1.0] * 4), 0.2) == 4 > n_to_keep(0.2, 10)  # ties: more


def test_missing_entropy_raises() -> None:
    x = PolicyInputs(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="needs entropy"):
        run_select(ENTRY, Params(entropy_source="current"), x, StepContext(), None)


def test_variants_hold_the_paper_and_official_settings() -> None:
    assert variant_params("top_entropy") == Params()
    official = variant_params("top_entropy_official")
    assert (official.normalize, official.entropy_source, official.rho) == ("selected_tokens", "current", 0.2)


@pytest.mark.parametrize("bad", [{"rho": 0.0}, {"rho": 1.5}, {"normalize": "tokens"}, {"entropy_source": "new"}])
def test_invalid_params_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
