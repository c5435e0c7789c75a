"""Spec tests for entropy_rl.metrics.dynamics: hand-computed cases (arithmetic in comments) and numpy references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from entropy_rl.metrics.dynamics import (
    cov_logp_adv,
    distinct_answers,
    entropy_stats,
    fit_entropy_performance_law,
    law_fit_problems,
    mean_pass_at_k,
    pass_at_k,
)

np = pytest.importorskip("numpy")

QS = [0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 1.0]


# ---- entropy_stats ----

# Two responses, three positions; the masked position holds NaN garbage that must not leak.
#   H    = [[0.2, 0.8, 1.0],
#           [0.4, 0.6, nan]]
#   mask = [[1,   1,   1  ],
#           [1,   1,   0  ]]
H = torch.tensor([[0.2, 0.8, 1.0], [0.4, 0.6, float("nan")]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_entropy_stats_hand_example():
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 5.0]])  # the 5.0 is masked
    correct = torch.tensor([True, False])
    s = entropy_stats(H, MASK, adv, correct, high_threshold=0.5, n_position_buckets=2)
    # valid tokens 0.2 0.8 1.0 0.4 0.6: N = 5, sum = 3.0 -> token mean 0.6
    assert s["entropy/token_mean"] == pytest.approx(0.6)
    # sorted [0.2 0.4 0.6 0.8 1.0]; position q*(N-1) = 4q
    #   p10: 0.4 -> 0.2 + 0.4*0.2 = 0.28;  p50: 2 -> 0.6;  p90: 3.6 -> 0.8 + 0.6*0.2 = 0.92;  p99: 3.96 -> 0.992
    assert s["entropy/p10"] == pytest.approx(0.28, abs=1e-6)
    assert s["entropy/p50"] == pytest.approx(0.6, abs=1e-6)
    assert s["entropy/p90"] == pytest.approx(0.92, abs=1e-6)
    assert s["entropy/p99"] == pytest.approx(0.992, abs=1e-6)
    # H > 0.5: 0.8, 1.0, 0.6 -> 3 / 5
    assert s["entropy/high_frac"] == pytest.approx(0.6)
    # per-sequence means 2.0/3 and 1.0/2 -> (0.6667 + 0.5) / 2 = 0.58333
    assert s["entropy/seq_mean"] == pytest.approx((2.0 / 3 + 0.5) / 2)
    # A > 0 on row 0: 2.0 / 3; A < 0 on row 1 (valid only): 1.0 / 2
    assert s["entropy/adv_pos"] == pytest.approx(2.0 / 3)
    assert s["entropy/adv_neg"] == pytest.approx(0.5)
    # correct = row 0, incorrect = row 1
    assert s["entropy/correct"] == pytest.approx(2.0 / 3)
    assert s["entropy/incorrect"] == pytest.approx(0.5)
    # n = 2 buckets, bucket = floor(2 t / len):
    #   row 0 (len 3): t=0 -> 0, t=1 -> floor(2/3) = 0, t=2 -> floor(4/3) = 1
    #   row 1 (len 2): t=0 -> 0, t=1 -> floor(2/2) = 1
    #   bucket 0: 0.2 0.8 0.4 -> 1.4/3;  bucket 1: 1.0 0.6 -> 0.8
    assert s["entropy/pos_bucket_0"] == pytest.approx(1.4 / 3)
    assert s["entropy/pos_bucket_1"] == pytest.approx(0.8)
    assert all(isinstance(v, float) and math.isfinite(v) for v in s.values())


def test_entropy_stats_omits_empty_keys():
    adv = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, -3.0]])  # no valid A < 0 (the -3 is masked)
    correct = torch.tensor([True, True])
    s = entropy_stats(H, MASK, adv, correct, n_position_buckets=4)
    assert "entropy/adv_neg" not in s
    assert "entropy/incorrect" not in s
    assert s["entropy/correct"] == pytest.approx(0.6)
    # n = 4: row 0 (len 3): t -> floor(4t/3) = 0, 1, 2;  row 1 (len 2): t -> floor(4t/2) = 0, 2
    #   bucket 0: 0.2 0.4 -> 0.3;  bucket 1: 0.8;  bucket 2: 1.0 0.6 -> 0.8;  bucket 3: empty -> omitted
    assert s["entropy/pos_bucket_0"] == pytest.approx(0.3)
    assert s["entropy/pos_bucket_1"] == pytest.approx(0.8)
    assert s["entropy/pos_bucket_2"] == pytest.approx(0.8)
    assert "entropy/pos_bucket_3" not in s
    # without adv / correct the splits are absent
    s2 = entropy_stats(H, MASK)
    assert not any(k.startswith(("entropy/adv_", "entropy/correct", "entropy/incorrect")) for k in s2)


def test_entropy_stats_all_masked_and_hole_in_mask():
    assert entropy_stats(H, torch.zeros_like(MASK)) == {}
    # a hole (e.g. tool output) does not shift positions: t counts response tokens only
    # H = [1, x, 2, 3], mask = [1, 0, 1, 1]: t = 0, -, 1, 2; len 3; n=3 buckets -> 0, 1, 2
    h = torch.tensor([[1.0, 99.0, 2.0, 3.0]])
    s = entropy_stats(h, torch.tensor([[1, 0, 1, 1]]), n_position_buckets=3)
    assert [s[f"entropy/pos_bucket_{k}"] for k in range(3)] == pytest.approx([1.0, 2.0, 3.0])
    assert s["entropy/token_mean"] == pytest.approx(2.0)


def test_entropy_stats_random_consistency():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(6, 17, generator=g) * 3
    mask = (torch.rand(6, 17, generator=g) > 0.3).int()
    mask[2] = 0  # one empty response
    s = entropy_stats(h, mask, n_position_buckets=5)
    valid = h[mask.bool()].double()
    assert s["entropy/token_mean"] == pytest.approx(valid.mean().item())
    assert s["entropy/p90"] == pytest.approx(float(np.quantile(valid.numpy(), 0.9)), abs=1e-6)
    per_seq = [h[i][mask[i].bool()].double().mean().item() for i in range(6) if mask[i].any()]
    assert s["entropy/seq_mean"] == pytest.approx(sum(per_seq) / len(per_seq))


def test_entropy_stats_validates_shapes():
    with pytest.raises(ValueError):
        entropy_stats(H, MASK[:, :2])
    with pytest.raises(ValueError):
        entropy_stats(H, MASK, correct=torch.tensor([True]))
    with pytest.raises(ValueError):
        entropy_stats(H, MASK, n_position_buckets=0)


# ---- cov(logp, A) ----


def test_cov_logp_adv_vs_numpy():
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(4, 9, generator=g) * 4
    adv = torch.randn(4, 1, generator=g).expand(4, 9).clone()
    mask = (torch.rand(4, 9, generator=g) > 0.25).int()
    m = mask.bool().numpy()
    want = np.cov(logp.numpy()[m].astype(np.float64), adv.numpy()[m].astype(np.float64), bias=True)[0, 1]
    assert cov_logp_adv(logp, adv, mask) == pytest.approx(want, rel=1e-6)


def test_cov_logp_adv_hand_and_degenerate():
    # logp = [-1, -3], A = [1, -1]: means -2, 0 -> ((1)(1) + (-1)(-1)) / 2 = 1.0 (> 0: entropy falls)
    assert cov_logp_adv(torch.tensor([[-1.0, -3.0, 7.0]]), torch.tensor([[1.0, -1.0, 7.0]]), torch.tensor([[1, 1, 0]])) == pytest.approx(1.0)
    assert cov_logp_adv(torch.tensor([[-1.0, -3.0]]), torch.tensor([[1.0, -1.0]]), torch.tensor([[1, 0]])) == 0.0
    assert cov_logp_adv(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2)) == 0.0


# ---- pass@k ----


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c / n
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every 3-subset has a correct one


def test_pass_at_k_vs_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            flags = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(flags, k))
                want = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_is_stable():
    # C(1000, 500) overflows a float; the product form does not
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)


@pytest.mark.parametrize("args", [(5, 2, 6), (5, 6, 1), (-1, 0, 1), (5, -1, 1), (5, 2, -1), (5, 2, 0), (5, 2.5, 1)])
def test_pass_at_k_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        pass_at_k(*args)


def test_mean_pass_at_k():
    # problem 0: n=5, c=2 -> pass@2 = 0.7; problem 1: n=4, c=0 -> 0
    assert mean_pass_at_k([[1, 1, 0, 0, 0], [0, 0, 0, 0]], 2) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="problem 1"):
        mean_pass_at_k([[1, 0], [1]], 2)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


# ---- distinct answers ----


def test_distinct_answers():
    answers = ["4", "4", "5", None, "7", "8", "7", "7"]
    correct = [True, True, False, False, True, False, True, True]
    d = distinct_answers(answers, correct, group_size=4)
    # group 0: distinct {4, 5} = 2, correct {4} = 1;  group 1: distinct {7, 8} = 2, correct {7} = 1
    assert d == {"rollout/distinct_answers": 2.0, "rollout/distinct_correct": 1.0}
    d = distinct_answers(["1", "2", None, None], [True, True, False, False], group_size=2)
    # group 0: 2 distinct, 2 correct;  group 1: nothing parsed -> 0, 0
    assert d == {"rollout/distinct_answers": 1.0, "rollout/distinct_correct": 1.0}
    assert distinct_answers([], [], group_size=4) == {}
    with pytest.raises(ValueError):
        distinct_answers(["1", "2", "3"], [True] * 3, group_size=2)
    with pytest.raises(ValueError):
        distinct_answers(["1", "2"], [True], group_size=2)


# ---- entropy-performance law ----


def test_law_fit_recovers_exact_parameters():
    hs = [0.05 * i for i in range(1, 15)]
    rs = [-0.3 * math.exp(h) + 0.9 for h in hs]
    fit = fit_entropy_performance_law(hs, rs)
    assert fit is not None
    assert fit["a"] == pytest.approx(0.3)
    assert fit["b"] == pytest.approx(0.9)
    assert fit["ceiling"] == pytest.approx(0.6)  # b - a: R at H = 0
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["n"] == 14


def test_law_fit_noisy_and_undetermined():
    hs = [0.1, 0.4, 0.7, 1.0, 1.3]
    rs = [0.7, 0.55, 0.5, 0.3, 0.2]
    fit = fit_entropy_performance_law(hs, rs)
    x = np.exp(hs)
    slope, intercept = np.polyfit(x, rs, 1)
    assert fit["a"] == pytest.approx(-slope) and fit["b"] == pytest.approx(intercept)
    assert 0.0 < fit["r2"] < 1.0
    assert fit_entropy_performance_law([0.1, 0.2], [0.5, 0.4]) is None  # < 3 points
    assert fit_entropy_performance_law([0.3, 0.3, 0.3], [0.5, 0.4, 0.6]) is None  # constant exp(H)
    with pytest.raises(ValueError):
        fit_entropy_performance_law([0.1, 0.2, 0.3], [0.5, 0.4])


def test_law_fit_ceiling_ci_is_the_textbook_prediction_interval_at_h_0():
    # OLS on x = exp(H): the ceiling is the fitted line at x0 = exp(0) = 1, its standard error
    # s sqrt(1/n + (x0 - mean x)^2 / Sxx) with s^2 = SS_res / (n - 2); CI = ceiling +- t(0.975, n - 2) se
    hs = [0.1, 0.4, 0.7, 1.0, 1.3, 0.2]
    rs = [0.7, 0.55, 0.5, 0.3, 0.2, 0.66]
    fit = fit_entropy_performance_law(hs, rs)
    x, y = np.exp(hs), np.array(rs)
    slope, intercept = np.polyfit(x, y, 1)
    s2 = np.sum((y - intercept - slope * x) ** 2) / (len(x) - 2)
    sxx = np.sum((x - x.mean()) ** 2)
    se = math.sqrt(s2 * (1 / len(x) + (1 - x.mean()) ** 2 / sxx))
    t = 2.7764451051977987  # scipy.stats.t.ppf(0.975, 4)
    assert fit["ceiling"] == pytest.approx(intercept + slope)
    assert fit["ceiling_se"] == pytest.approx(se, rel=1e-6)
    assert fit["ceiling_low"] == pytest.approx(intercept + slope - t * se, rel=1e-6)
    assert fit["ceiling_high"] == pytest.approx(intercept + slope + t * se, rel=1e-6)
    assert fit["a_se"] == pytest.approx(math.sqrt(s2 / sxx), rel=1e-6)  # the slope's standard error
    exact = fit_entropy_performance_law([0.1, 0.5, 0.9], [-0.3 * math.exp(h) + 0.9 for h in (0.1, 0.5, 0.9)])
    assert exact["ceiling_low"] == pytest.approx(0.6) and exact["ceiling_high"] == pytest.approx(0.6)  # no residual


def test_law_fit_ceiling_ci_covers_the_true_ceiling_about_95_percent_of_the_time():
    # R = -0.4 exp(H) + 1.1 + N(0, 0.02^2) at 12 entropies: true ceiling 0.7; 400 replications
    rng = np.random.default_rng(0)
    hs = np.linspace(0.1, 0.9, 12)
    covered = 0
    for _ in range(400):
        fit = fit_entropy_performance_law(hs, -0.4 * np.exp(hs) + 1.1 + rng.normal(0, 0.02, hs.size))
        covered += fit["ceiling_low"] <= 0.7 <= fit["ceiling_high"]
    assert 0.92 <= covered / 400 <= 0.98, covered  # binomial sd at 0.95: 0.011


def test_law_fit_problems_flag_meaningless_fits():
    hs = [0.1, 0.4, 0.7, 1.0, 1.3]
    assert law_fit_problems(fit_entropy_performance_law(hs, [0.7, 0.55, 0.5, 0.3, 0.2])) == []
    assert law_fit_problems(None) == ["undetermined: fewer than 3 points, or the entropy never changed"]
    few = law_fit_problems(fit_entropy_performance_law(hs[:4], [0.7, 0.55, 0.5, 0.3]))
    assert few == ["only 4 points (a fit needs 5+)"]
    rising = law_fit_problems(fit_entropy_performance_law(hs, [0.2, 0.3, 0.5, 0.55, 0.7]))  # R grows with H
    assert len(rising) == 1 and rising[0].startswith("a = -") and "no ceiling" in rising[0]
    flat = law_fit_problems(fit_entropy_performance_law(hs, [0.5, 0.7, 0.2, 0.7, 0.5]))  # R^2 about 0.02
    assert any(p.startswith("R² = 0.0") for p in flat)


def test_law_fit_skips_non_finite_points():
    """A NaN entropy (a broken step) or a NaN/inf reward must not stop the running fit (issue 15 item 4)."""
    hs = [0.1, 0.4, 0.7, 1.0, 1.3]
    rs = [0.7, 0.55, 0.5, 0.3, 0.2]
    clean = fit_entropy_performance_law(hs, rs)
    dirty = fit_entropy_performance_law(hs + [float("nan"), 0.5, float("inf"), 1e6],
                                        rs + [0.4, float("nan"), 0.3, 0.5])
    assert dirty == clean and dirty["n"] == 5
    assert fit_entropy_performance_law([float("nan")] * 3, [0.1, 0.2, 0.3]) is None  # nothing usable
