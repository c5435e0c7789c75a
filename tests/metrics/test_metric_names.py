"""Tests for entropy_rl.metrics.names: every emitted key is defined, and docs/metrics.md is not stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from entropy_rl.metrics.names import METRICS, PATTERNS, describe, is_known, render_markdown

REPO = Path(__file__).resolve().parents[2]

# Keys the trainer and the metrics functions emit.
REQUIRED = [
    "step",
    "entropy/token_mean", "entropy/p10", "entropy/p50", "entropy/p90", "entropy/p99", "entropy/high_frac",
    "entropy/seq_mean", "entropy/adv_pos", "entropy/adv_neg", "entropy/correct", "entropy/incorrect",
    "entropy/pos_bucket_0", "entropy/pos_bucket_3",
    "dynamics/cov_logp_adv", "dynamics/dH_pred", "dynamics/dH_actual",
    "reward/mean", "reward/std", "reward/format_error_rate", "reward/solve_all_frac", "reward/solve_none_frac",
    "rollout/response_len_mean", "rollout/response_len_max", "rollout/truncated_frac",
    "rollout/distinct_answers", "rollout/distinct_correct",
    "diversity/vendi", "diversity/answer_entropy",
    "policy/loss", "policy/clipfrac", "policy/clipfrac_low", "policy/clipfrac_high", "policy/clipfrac_dual",
    "policy/approx_kl", "policy/ratio_mean", "policy/kl_ref", "policy/grad_norm", "policy/lr",
    "adv/mean", "adv/std", "adv/zero_frac",
    "eval/accuracy", "eval/pass@1", "eval/pass@8",
    "timing/generate_s", "timing/score_s", "timing/update_s", "timing/step_s", "timing/eval_s",
    "train/tokens",
    "method/clip_cov/n_clipped",
]  # fmt: skip


@pytest.mark.parametrize("key", REQUIRED)
def test_required_keys_are_known(key):
    assert is_known(key), key
    assert describe(key)


def test_unknown_keys():
    for key in ["entropy", "entropy/mean", "reward/mean/x", "method/", "method/x", "foo/bar"]:
        assert not is_known(key), key
        assert describe(key) is None


def test_token_mean_definition_is_exact():
    assert METRICS["entropy/token_mean"] == (
        "H_t = -sum_v p_v log p_v, p = softmax(z_t / tau) with tau the sampling temperature; fp32; "
        "response tokens only; mean over all response tokens of the rollout batch; measured in the "
        "pre-update pass (nats)"
    )


def test_keys_namespaced_and_definitions_carry_a_unit():
    for key, text in {**METRICS, **PATTERNS}.items():
        assert key == "step" or "/" in key, key
        assert "\n" not in text and re.search(r"\([^()]+\)$", text), f"{key}: definition must end with '(unit)'"


def test_docs_metrics_md_is_up_to_date():
    doc = REPO / "docs" / "metrics.md"
    fix = "regenerate it: python -m entropy_rl.metrics.names > docs/metrics.md"
    assert doc.exists(), f"docs/metrics.md is missing; {fix}"
    assert doc.read_text(encoding="utf-8") == render_markdown(), f"docs/metrics.md is stale; {fix}"


def test_rendered_table_lists_every_key():
    md = render_markdown()
    for key in [*METRICS, *PATTERNS]:
        assert f"| `{key}` |" in md
