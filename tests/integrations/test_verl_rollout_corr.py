"""Our rollout correction against verl 0.9.1's own `rollout_corr_helper` on random log-probs: weights, rejection
masks and every metric both compute under the same name.

Needs verl (installed by .ci/run with --no-deps, plus the few packages its modules import).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")

from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_rejection_mask  # noqa: E402

from entropy_rl.core.rollout_correction import parse_correction, rollout_correction  # noqa: E402

CASES = [
    {},  # metrics only
    {"rollout_is": "token", "rollout_is_threshold": 2.0},  # token TIS
    {"rollout_is": "token", "rollout_is_threshold": 1.1},
    {"rollout_is": "sequence", "rollout_is_threshold": 2.0},  # sequence TIS
    {"rollout_is": "token", "rollout_is_threshold": "0.8_1.25"},  # IcePop
    {"rollout_is": "sequence", "rollout_is_threshold": "0.5_5.0"},
    {"rollout_is": "token", "rollout_is_threshold": 2.0, "rollout_is_batch_normalize": True},
    {"rollout_is": "sequence", "rollout_is_threshold": 3.0, "rollout_is_batch_normalize": True},
    {"rollout_rs": "token_k1", "rollout_rs_threshold": "0.8_1.25"},
    {"rollout_rs": "seq_sum_k1", "rollout_rs_threshold": "0.5_2.0"},  # MIS
    {"rollout_rs": "seq_mean_k1", "rollout_rs_threshold": "0.97_1.03"},  # Geo-RS
    {"rollout_rs": "seq_mean_k1", "rollout_rs_threshold": 1.03},  # lower = 1 / upper
    {"rollout_rs": "token_k2,seq_max_k3", "rollout_rs_threshold": "0.02,0.05"},
    {"rollout_rs": "seq_sum_k2,seq_sum_k3,seq_mean_k2,seq_mean_k3,token_k3", "rollout_rs_threshold": "0.2,0.2,0.02,0.02,0.05"},
    {"rollout_is": "sequence", "rollout_is_threshold": 2.0, "rollout_rs": "seq_sum_k1", "rollout_rs_threshold": "0.5_2.0"},
]  # fmt: skip
SHARED = ["kl", "k3_kl", "chi2_token", "chi2_seq", "training_ppl", "training_log_ppl", "rollout_ppl", "rollout_log_ppl",
          "log_ppl_diff", "log_ppl_abs_diff", "ppl_ratio", "rollout_is_mean", "rollout_is_ratio_fraction_high",
          "rollout_is_ratio_fraction_low", "rollout_is_eff_sample_size", "rollout_is_batch_norm_factor",
          "rollout_rs_masked_fraction", "rollout_rs_seq_masked_fraction"]  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "off")
def test_matches_verl(case: dict, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B, T = 8, 12
    mask = (torch.arange(T) < torch.randint(3, T + 1, (B, 1), generator=g)).float()  # [B, T] ragged responses
    sampling = -torch.rand(B, T, generator=g) * 3
    old = sampling + 0.15 * torch.randn(B, T, generator=g)  # a mismatch of ~0.15 nats per token
    ours = rollout_correction(old, sampling, mask, parse_correction(**case))
    w_proto, verl_mask, verl_metrics = compute_rollout_correction_and_rejection_mask(old, sampling, mask, **case)
    if ours.weights is None:
        assert w_proto is None
    else:
        torch.testing.assert_close(ours.weights, w_proto.batch["rollout_is_weights"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mask if ours.keep is None else mask * ours.keep, verl_mask.float())
    compared = 0
    for name in SHARED:
        key = f"rollout_corr/{name}"
        if key in verl_metrics and key in ours.metrics:
            assert float(ours.metrics[key]) == pytest.approx(verl_metrics[key], rel=1e-5, abs=1e-6), key
            compared += 1
    assert compared >= 11  # 11 mismatch metrics, + 4-5 IS and 2 RS ones when enabled
    if "rollout_is" not in case:  # verl logs no ESS without IS; ours is that of the raw token ratios
        assert "rollout_corr/rollout_is_eff_sample_size" not in verl_metrics
