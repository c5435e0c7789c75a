"""Rollout-mismatch correction (core/rollout_correction.py): hand-computed weights, masks and metrics per mode.

The batch below has log r = log pi_old - log q = [[ln 2, 0, -ln 4], [ln 3, ln 1/2, (pad)]], so per token
r = [[2, 1, 1/4], [3, 1/2, -]] and per sequence prod r = [1/2, 3/2].
"""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.core.rollout_correction import (
    RS_OPTIONS,
    TRL_MODES,
    ISSpec,
    ess,
    is_weights,
    parse_bounds,
    parse_correction,
    rejection_keep,
    rollout_correction,
    rollout_log_ratio,
    rs_statistic,
)
from entropy_rl.metrics.names import is_known

LN = math.log
SAMPLING = torch.tensor([[-1.0, -1.0, -2.0], [-2.0, -1.0, -7.0]])
LOG_R = torch.tensor([[LN(2), 0.0, -LN(4)], [LN(3), LN(0.5), 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
OLD = SAMPLING + LOG_R + torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0]])  # garbage off the mask must not matter


def weights(rollout_is: str, threshold, normalize: bool = False) -> torch.Tensor:
    return rollout_correction(OLD, SAMPLING, MASK, parse_correction(rollout_is, threshold, normalize)).weights


def keep(rollout_rs: str, threshold) -> torch.Tensor:
    return rollout_correction(OLD, SAMPLING, MASK, parse_correction(rollout_rs=rollout_rs,
                                                                    rollout_rs_threshold=threshold)).keep


def test_log_ratio_is_zero_off_the_mask_and_detached() -> None:
    old = OLD.clone().requires_grad_(True)
    lr = rollout_log_ratio(old, SAMPLING, MASK)
    assert not lr.requires_grad
    torch.testing.assert_close(lr, LOG_R * MASK)


@pytest.mark.parametrize(("rollout_is", "threshold", "expected"), [
    # token TIS: min(r, C)
    ("token", 2.0, [[2, 1, 0.25], [2, 0.5, 0]]),
    ("token", 1.5, [[1.5, 1, 0.25], [1.5, 0.5, 0]]),
    # sequence TIS: min(prod r, C) on every token: row 0 1/2, row 1 min(3/2, 1.2)
    ("sequence", 1.2, [[0.5, 0.5, 0.5], [1.2, 1.2, 0]]),
    # token IcePop "0.5_2.5": r kept in [0.5, 2.5], else 0 (3 and 1/4 dropped; 0.5 is on the bound: kept)
    ("token", "0.5_2.5", [[2, 1, 0], [0, 0.5, 0]]),
    # sequence IcePop "0.6_2": row 0 (1/2) dropped, row 1 (3/2) kept
    ("sequence", "0.6_2", [[0, 0, 0], [1.5, 1.5, 0]]),
    # TRL aliases
    ("token_truncate", 2.0, [[2, 1, 0.25], [2, 0.5, 0]]),  # = verl token TIS
    ("token_truncate", "0.5_2", [[2, 1, 0.5], [2, 0.5, 0]]),  # TRL clip_min: 1/4 raised to 0.5
    ("token_mask", 2.5, [[2, 1, 0.25], [0, 0.5, 0]]),  # no lower bound: only 3 > 2.5 zeroed
    ("token_mask", "0.5_2.5", [[2, 1, 0], [0, 0.5, 0]]),  # = IcePop
    ("sequence_truncate", 1.2, [[0.5, 0.5, 0.5], [1.2, 1.2, 0]]),
    ("sequence_mask", 1.2, [[0.5, 0.5, 0.5], [0, 0, 0]]),  # 3/2 > 1.2: the whole row zeroed
])  # fmt: skip
def test_is_weights_by_hand(rollout_is: str, threshold, expected) -> None:
    w = weights(rollout_is, threshold)
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float32))
    assert not w.requires_grad


def test_batch_normalisation_divides_by_the_token_or_sequence_mean() -> None:
    # token TIS 2.0: [2, 1, .25, 2, .5] on 5 tokens, mean 5.75 / 5 = 1.15
    expected = torch.tensor([[2, 1, 0.25], [2, 0.5, 0]]) / 1.15
    torch.testing.assert_close(weights("token", 2.0, normalize=True), expected)
    # sequence TIS 1.2: sequence weights 0.5 and 1.2, mean 0.85 (a mean over sequences, not tokens)
    expected = torch.tensor([[0.5, 0.5, 0.5], [1.2, 1.2, 0]]) / 0.85
    torch.testing.assert_close(weights("sequence", 1.2, normalize=True), expected)
    out = rollout_correction(OLD, SAMPLING, MASK, parse_correction("sequence", 1.2, True))
    assert float(out.metrics["rollout_corr/rollout_is_batch_norm_factor"]) == pytest.approx(0.85)
    assert float(out.metrics["rollout_corr/rollout_is_mean"]) == pytest.approx((0.5 * 3 + 1.2 * 2) / 5)  # before


@pytest.mark.parametrize(("rollout_rs", "threshold", "expected"), [
    # k1 = -log r = [[-ln2, 0, ln4], [-ln3, ln2]]; "0.4_2.5" keeps ln .4 <= k1 <= ln 2.5 (+-0.916)
    ("token_k1", "0.4_2.5", [[1, 1, 0], [0, 1, 0]]),
    # one float for k1: lower = 1 / upper: 2.01 keeps |k1| <= ln 2.01 (the +-ln 2 tokens, not ln 4 or -ln 3)
    ("token_k1", 2.01, [[1, 1, 0], [0, 1, 0]]),
    # k2 = (log r)^2 / 2 = [[.240, 0, .961], [.603, .240]] <= 0.3
    ("token_k2", 0.3, [[1, 1, 0], [0, 1, 0]]),
    # k3 = r - 1 - log r = [[.307, 0, .636], [.901, .193]] <= 0.2
    ("token_k3", 0.2, [[0, 1, 0], [0, 1, 0]]),
    # MIS: seq_sum_k1 = [ln 2, -ln 1.5] = [.693, -.405] in [ln .6, ln 1.9] = [-.511, .642]: row 0 rejected
    ("seq_sum_k1", "0.6_1.9", [[0, 0, 0], [1, 1, 0]]),
    # Geo-RS: seq_mean_k1 = [ln2 / 3, -ln1.5 / 2] = [.231, -.203] in [ln .8, ln 1.25] = [-.223, .223]: row 0 rejected
    ("seq_mean_k1", "0.8_1.25", [[0, 0, 0], [1, 1, 0]]),
    ("seq_sum_k2", 1.0, [[0, 0, 0], [1, 1, 0]]),  # [1.201, .843]
    ("seq_mean_k2", 0.41, [[1, 1, 1], [0, 0, 0]]),  # [1.201 / 3 = .4004, .843 / 2 = .422]
    ("seq_max_k2", 0.7, [[0, 0, 0], [1, 1, 0]]),  # max [.961, .603]
    ("seq_mean_k3", 0.32, [[1, 1, 1], [0, 0, 0]]),  # [(.307 + .636) / 3 = .314, (.901 + .193) / 2 = .547]
    ("seq_max_k3", 0.95, [[1, 1, 1], [1, 1, 0]]),  # max [.636, .901]
    # every option must pass: token_k1 AND seq_sum_k2
    ("token_k1,seq_sum_k2", "0.4_2.5,1.0", [[0, 0, 0], [0, 1, 0]]),
    ("token_k2, token_k2", 0.3, [[1, 1, 0], [0, 1, 0]]),  # duplicates dropped
])  # fmt: skip
def test_rejection_by_hand(rollout_rs: str, threshold, expected) -> None:
    torch.testing.assert_close(keep(rollout_rs, threshold), torch.tensor(expected, dtype=torch.float32))


def test_rs_statistics_by_hand() -> None:
    k2 = 0.5 * LOG_R.square() * MASK
    torch.testing.assert_close(rs_statistic(LOG_R, MASK, "seq_sum_k2"), k2.sum(-1))
    torch.testing.assert_close(rs_statistic(LOG_R, MASK, "seq_mean_k2"), k2.sum(-1) / torch.tensor([3.0, 2.0]))
    k3 = (LOG_R.exp() - 1 - LOG_R) * MASK
    torch.testing.assert_close(rs_statistic(LOG_R, MASK, "seq_max_k3"), k3.amax(-1))
    empty = torch.zeros(1, 3)
    assert float(rs_statistic(torch.zeros(1, 3), empty, "seq_max_k2")[0]) == 0.0  # an empty row reads 0, not -inf
    assert rejection_keep(LOG_R, empty.expand(2, 3), parse_correction(rollout_rs="token_k2",
                                                                      rollout_rs_threshold=9.0).rollout_rs).sum() == 0


def test_mismatch_metrics_by_hand() -> None:
    m = {k: float(v) for k, v in rollout_correction(OLD, SAMPLING, MASK, parse_correction()).metrics.items()}
    assert all(is_known(k) for k in m)
    r = [2, 1, 0.25, 3, 0.5]
    sum_log_r = LN(3) - LN(4)
    assert m["rollout_corr/kl"] == pytest.approx(-sum_log_r / 5)  # mean(log q - log pi_old)
    assert m["rollout_corr/k3_kl"] == pytest.approx((sum(r) - 5 - sum_log_r) / 5)
    assert m["rollout_corr/chi2_token"] == pytest.approx(sum(x * x for x in r) / 5 - 1)  # 14.3125 / 5 - 1
    assert m["rollout_corr/chi2_seq"] == pytest.approx((0.5**2 + 1.5**2) / 2 - 1)  # 0.25
    # sequence token means: log q = [-4/3, -3/2], log pi_old = log q + [-ln2 / 3, ln1.5 / 2]
    q_mean, old_mean = [-4 / 3, -1.5], [-4 / 3 - LN(2) / 3, -1.5 + LN(1.5) / 2]
    assert m["rollout_corr/rollout_log_ppl"] == pytest.approx(-(q_mean[0] + q_mean[1]) / 2)
    assert m["rollout_corr/training_ppl"] == pytest.approx((math.exp(-old_mean[0]) + math.exp(-old_mean[1])) / 2)
    diffs = [q_mean[0] - old_mean[0], q_mean[1] - old_mean[1]]  # [ln2 / 3, -ln1.5 / 2]
    assert m["rollout_corr/log_ppl_diff"] == pytest.approx(sum(diffs) / 2)
    assert m["rollout_corr/log_ppl_abs_diff"] == pytest.approx((abs(diffs[0]) + abs(diffs[1])) / 2)
    assert m["rollout_corr/ppl_ratio"] == pytest.approx((math.exp(diffs[0]) + math.exp(diffs[1])) / 2)
    # correction off: ESS of the raw token ratios = mean(r)^2 / mean(r^2) = 1.35^2 / 2.8625; nothing rejected
    assert m["rollout_corr/rollout_is_eff_sample_size"] == pytest.approx(1.35**2 / 2.8625, rel=1e-6)
    assert m["rollout_corr/rollout_rs_masked_fraction"] == 0.0


def test_is_and_rs_metrics_by_hand() -> None:
    spec = parse_correction("token", 2.0, rollout_rs="token_k1", rollout_rs_threshold="0.4_2.5")
    m = {k: float(v) for k, v in rollout_correction(OLD, SAMPLING, MASK, spec).metrics.items()}
    assert all(is_known(k) for k in m)
    applied = [2, 1, 0.25, 2, 0.5]
    assert m["rollout_corr/rollout_is_mean"] == pytest.approx(sum(applied) / 5)
    assert m["rollout_corr/rollout_is_ratio_fraction_high"] == pytest.approx(1 / 5)  # r = 3 > 2
    assert m["rollout_corr/rollout_is_ratio_fraction_low"] == pytest.approx(1 / 5)  # r = 1/4 < 1/2 = 1 / 2.0
    assert m["rollout_corr/rollout_is_eff_sample_size"] == pytest.approx(
        (sum(applied) / 5) ** 2 / (sum(a * a for a in applied) / 5), rel=1e-6)
    assert m["rollout_corr/rollout_rs_masked_fraction"] == pytest.approx(2 / 5)  # ln4 and -ln3 rejected
    assert m["rollout_corr/rollout_rs_seq_masked_fraction"] == pytest.approx(1.0)  # both rows lose a token
    # sequence level: fractions count sequences (prod r = 1/2, 3/2 against 1.2 and 1/1.2)
    seq = rollout_correction(OLD, SAMPLING, MASK, parse_correction("sequence", 1.2)).metrics
    assert float(seq["rollout_corr/rollout_is_ratio_fraction_high"]) == pytest.approx(0.5)
    assert float(seq["rollout_corr/rollout_is_ratio_fraction_low"]) == pytest.approx(0.5)


def test_no_mismatch_gives_unit_weights_and_zero_divergences() -> None:
    spec = parse_correction("sequence", "0.5_2.0", rollout_rs="seq_mean_k1,token_k3", rollout_rs_threshold="0.999_1.001,1e-6")
    out = rollout_correction(SAMPLING, SAMPLING, MASK, spec)
    torch.testing.assert_close(out.weights, MASK)
    torch.testing.assert_close(out.keep, MASK)
    for key in ("kl", "k3_kl", "chi2_token", "chi2_seq", "log_ppl_diff", "rollout_rs_masked_fraction"):
        assert float(out.metrics[f"rollout_corr/{key}"]) == pytest.approx(0.0, abs=1e-7), key
    assert float(out.metrics["rollout_corr/rollout_is_eff_sample_size"]) == pytest.approx(1.0)
    assert float(out.metrics["rollout_corr/ppl_ratio"]) == pytest.approx(1.0)


def test_ess_is_one_for_equal_weights_and_one_over_n_for_a_single_one() -> None:
    mask = torch.ones(1, 4)
    assert float(ess(torch.full((1, 4), 3.0), mask)) == pytest.approx(1.0)
    assert float(ess(torch.tensor([[5.0, 0, 0, 0]]), mask)) == pytest.approx(0.25)


def test_huge_log_ratios_are_clamped_before_exp() -> None:
    lr = torch.tensor([[100.0, -100.0]])
    w, raw = is_weights(lr, torch.ones(1, 2), ISSpec("token", "truncate", 1e12))
    torch.testing.assert_close(raw, torch.tensor([[math.exp(20), math.exp(-20)]]))
    assert torch.isfinite(w).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rollout_is": "tokens"}, "rollout_is: unknown level 'tokens'"),
    ({"rollout_is": "token", "rollout_is_threshold": 0.0}, "rollout_is_threshold: bounds must be finite and > 0"),
    ({"rollout_is": "token", "rollout_is_threshold": -2.0}, "must be finite and > 0"),
    ({"rollout_is": "token", "rollout_is_threshold": "2_1"}, "lower bound 2 > upper bound 1"),
    ({"rollout_is": "token", "rollout_is_threshold": "abc"}, "'abc' is not a number"),
    ({"rollout_is": "token", "rollout_is_threshold": "0.5_inf"}, "must be finite"),
    ({"rollout_is": "token", "rollout_is_threshold": True}, "expected a number or a 'lower_upper' string"),
    ({"rollout_rs": "seq_max_k1", "rollout_rs_threshold": 2.0}, "rollout_rs: unknown option 'seq_max_k1'"),
    ({"rollout_rs": "token_k1"}, "rollout_rs_threshold: required"),
    ({"rollout_rs": "token_k2", "rollout_rs_threshold": "0.1_0.2"}, "k2 / k3 options take one upper bound"),
    ({"rollout_rs": "token_k1,token_k2", "rollout_rs_threshold": "2,3,4"}, "give one threshold or 2"),
])  # fmt: skip
def test_bad_settings_are_refused_with_the_key(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_correction(**kwargs)


def test_parsed_specs() -> None:
    assert not parse_correction().active
    assert parse_bounds(2, "x") == (None, 2.0) and parse_bounds(" 0.5_5 ", "x") == (0.5, 5.0)
    spec = parse_correction("token", "0.5_5.0")
    assert spec.rollout_is == ISSpec("token", "mask", 5.0, 0.5)  # verl: "lower_upper" means IcePop
    assert parse_correction("token", 3).rollout_is == ISSpec("token", "truncate", 3.0)
    assert {parse_correction(mode, 3.0).rollout_is.level for mode in TRL_MODES} == {"token", "sequence"}
    opts = parse_correction(rollout_rs="token_k1,seq_mean_k3", rollout_rs_threshold="2.0,0.01").rollout_rs
    assert [(o.name, o.lower, o.upper) for o in opts] == [("token_k1", 0.5, 2.0), ("seq_mean_k3", None, 0.01)]
    assert len(RS_OPTIONS) == 11
