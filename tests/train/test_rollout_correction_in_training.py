"""Rollout correction in the trainer, and temperature consistency as an invariant, with the `hf` engine.

The `hf` engine samples from the training model itself, so any mismatch here is constructed: a sampling
temperature other than the one the trainer scores at (`RolloutBatch.train_temperature`), or top-k / top-p
truncation the trainer does not replay. For top-k, r = pi_old(o) / q(o) is exactly the probability mass the
truncation kept, which the tests compute independently from the logits.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import entropy_rl  # noqa: F401  (registers the catalogue)
from entropy_rl.core.aggregate import Aggregation
from entropy_rl.core.entropy import token_entropy, token_logprobs
from entropy_rl.core.policy_loss import POLICY_LOSSES, get_policy_loss, step_context
from entropy_rl.core.rollout_correction import parse_correction, rollout_correction
from entropy_rl.metrics.names import is_known
from entropy_rl.metrics.sinks import read_jsonl
from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.rollout.hf import HfEngine
from entropy_rl.rollout.base import SamplingParams
from entropy_rl.train.batch import ScoredBatch, per_token_advantages, score_batch, scoring_temperature
from entropy_rl.train.config import Config, ConfigError, load_config
from entropy_rl.train.entropy_probe import EntropyProbe, Sampler, measure_after_update, probe_before_update
from entropy_rl.train.forward import response_logits, score_responses
from entropy_rl.train.loop import train
from entropy_rl.train.update import update_policy

TAU = 0.7
PROMPTS = ["1+2=", "3+4=", "5+1=", "2+2="]


@pytest.fixture
def model_tok():
    torch.manual_seed(0)
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                           intermediate_size=64, max_position_embeddings=32), tok, seed=0)
    return model, tok


def engine_batch(model, tok, sampling: SamplingParams, group_size: int = 2):
    torch.manual_seed(1)
    return HfEngine(model, tok).generate(PROMPTS, sampling, group_size=group_size)


def logits_of(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return response_logits(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1]).float()


def kept_mass_top_k(logits: torch.Tensor, tau: float, k: int) -> torch.Tensor:
    """[B, T] probability mass of the k most likely tokens under softmax(z / tau): r = pi_old / q for top-k."""
    return torch.softmax(logits / tau, dim=-1).topk(k, dim=-1).values.sum(-1)


# ---------------------------------------------------------------- temperature consistency



def h_rollout(model, probe: EntropyProbe, batch, tau: float, mask) -> float:
    """dynamics/H_rollout of `probe` with no update in between (the sampler's entropy at theta_old)."""
    out = measure_after_update(model, probe, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], tau,
                               mask, 3)
    return out["dynamics/H_rollout"]

def test_every_path_divides_the_logits_by_the_sampling_temperature(model_tok) -> None:
    """Engine sampling log-probs, the trainer's old log-probs, its entropy, the update pass, the probe's H and
    H_rollout all use logits / 0.7; each check would fail at tau = 1 (the control beside it)."""
    model, tok = model_tok
    sampling = SamplingParams(temperature=TAU, max_new_tokens=6)
    batch = engine_batch(model, tok, sampling)
    m = batch.response_mask.bool()
    P, tokens = batch.prompt_ids.shape[1], batch.response_ids
    old_logp, old_entropy, _, _, _ = score_batch(model, None, batch, 3, (), None)
    logits = logits_of(model, batch)
    # engine vs trainer: the same tokens, the same temperature
    assert scoring_temperature(batch) == pytest.approx(TAU)
    assert (batch.sampling_logp - old_logp)[m].abs().max() < 1e-4
    assert (batch.sampling_logp - token_logprobs(logits, tokens, 1.0))[m].abs().mean() > 1e-2  # control
    # the entropy the trainer logs is that of softmax(z / tau)
    torch.testing.assert_close(old_entropy[m], token_entropy(logits, TAU)[m], rtol=1e-5, atol=1e-5)
    assert (old_entropy - token_entropy(logits, 1.0))[m].abs().mean() > 1e-2  # control
    # the update pass (train mode, with gradient, H_cur with gradient) at the batch's temperature
    model.train()
    logp, h_cur, _ = score_responses(model, batch.input_ids, batch.attention_mask, P, scoring_temperature(batch),
                                     want_entropy="grad", mask=batch.response_mask)
    assert (logp - old_logp)[m].abs().max() < 1e-5  # the first ratio of the update is 1
    assert (h_cur - old_entropy)[m].abs().max() < 1e-5
    # the probe: H(theta_old) and the sampler's entropy on the same tokens
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mask = batch.response_mask
    probe = probe_before_update(model, opt, batch.input_ids, batch.attention_mask, P, TAU, mask, 3,
                                Sampler(batch.temperature, sampling))
    h_ref = float((token_entropy(logits, TAU) * mask).sum() / mask.sum())
    assert probe.h_old == pytest.approx(h_ref, rel=1e-5)
    assert h_rollout(model, probe, batch, TAU, mask) == pytest.approx(h_ref, rel=1e-5)
    assert float((token_entropy(logits, 1.0) * mask).sum() / mask.sum()) != pytest.approx(h_ref, rel=1e-2)  # control
    # and the correction sees no mismatch
    corr = rollout_correction(old_logp, batch.sampling_logp, mask, parse_correction("token", 2.0))
    assert abs(float(corr.metrics["rollout_corr/kl"])) < 1e-5
    assert float(corr.metrics["rollout_corr/rollout_is_eff_sample_size"]) == pytest.approx(1.0, abs=1e-6)


def test_a_run_at_temperature_07_has_no_mismatch_anywhere(tiny_config, run_dir: Path) -> None:
    """End to end at tau = 0.7 (entropy_bonus: its H_cur term is computed in the update pass): engine and trainer
    agree, the first ratio is 1, the method's in-update entropy equals the pre-update entropy/token_mean."""
    cfg = tiny_config("rollout.temperature=0.7", "train.steps=2", "algorithm.method=entropy_bonus",
                      "algorithm.rollout_correction.rollout_is=token")
    train(cfg, run_dir, progress=False)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert len(rows) == 2
    for row in rows:
        assert all(is_known(k) for k in row)
        assert abs(row["rollout_corr/kl"]) < 1e-5 and abs(row["rollout_corr/chi2_token"]) < 1e-4
        assert row["rollout_corr/rollout_is_eff_sample_size"] == pytest.approx(1.0, abs=1e-6)
        assert row["rollout_corr/rollout_is_mean"] == pytest.approx(1.0, abs=1e-5)
        assert abs(row["dynamics/H_mismatch"]) < 1e-5
        assert row["dynamics/dH_rollout_actual"] == pytest.approx(row["dynamics/dH_actual"], abs=1e-5)
        assert row["rollout_corr/structural_mismatch"] == 0.0 and row["rollout_corr/rollout_rs_masked_fraction"] == 0.0
        # one mini-batch, one epoch: the update's only forward pass runs on the rollout weights
        assert row["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
        assert row["method/entropy_bonus/entropy"] == pytest.approx(row["entropy/token_mean"], abs=1e-5)


# ---------------------------------------------------------------- constructed mismatches


def test_top_k_sampling_weights_are_the_kept_mass(model_tok) -> None:
    """Truncation the trainer does not replay: r = kept mass of the top-k set, and each mode weighs with it."""
    model, tok = model_tok
    sampling = SamplingParams(temperature=TAU, top_k=3, max_new_tokens=6)
    batch = engine_batch(model, tok, sampling)
    mask = batch.response_mask
    m = mask.bool()
    old_logp = score_batch(model, None, batch, 0, (), None)[0]
    kept = kept_mass_top_k(logits_of(model, batch), TAU, 3)  # [B, T]
    r = torch.exp(old_logp - batch.sampling_logp)
    torch.testing.assert_close(r[m], kept[m], rtol=1e-4, atol=1e-5)
    assert float(kept[m].min()) < 0.9  # the truncation bites (the model is random: flat distributions)

    def correct(*args, **kwargs):
        return rollout_correction(old_logp, batch.sampling_logp, mask, parse_correction(*args, **kwargs))

    # token TIS: every r <= 1 here, so a cap of 0.8 binds where the kept mass exceeds it
    torch.testing.assert_close(correct("token", 0.8).weights[m], kept[m].clamp(max=0.8), rtol=1e-4, atol=1e-5)
    # IcePop "0.9_1.1": tokens whose kept mass is below 0.9 get weight 0
    w = correct("token", "0.9_1.1").weights
    torch.testing.assert_close(w[m], torch.where(kept >= 0.9, kept, torch.zeros_like(kept))[m], rtol=1e-4, atol=1e-5)
    # sequence TIS: the product of the kept masses over the response
    seq = torch.exp((torch.log(kept) * mask).sum(-1, keepdim=True)).expand_as(kept)
    torch.testing.assert_close(correct("sequence", 5.0).weights[m], seq[m], rtol=1e-3, atol=1e-6)
    # MIS on tokens, token_k1 "0.95_1.05": k1 = -log r = -log kept, rejected when kept < 1 / 1.05
    out = correct(rollout_rs="token_k1", rollout_rs_threshold="0.95_1.05")
    torch.testing.assert_close(out.keep[m], (kept >= 1 / 1.05).float()[m])
    assert float(out.metrics["rollout_corr/rollout_rs_masked_fraction"]) == pytest.approx(
        float((kept < 1 / 1.05)[m].float().mean()), abs=1e-6)
    # the diagnostics move: KL(q || pi_old) estimated by mean(-log kept) > 0, ESS below 1
    assert float(out.metrics["rollout_corr/kl"]) == pytest.approx(float(-torch.log(kept)[m].mean()), rel=1e-3)
    assert float(out.metrics["rollout_corr/kl"]) > 0.01
    assert float(out.metrics["rollout_corr/rollout_is_eff_sample_size"]) < 0.999


def test_sampling_at_another_temperature_than_the_trainer_scores(model_tok) -> None:
    """Samples at 0.7, trained at 1.0 (a strategy's `train_temperature`): r = softmax(z)(o) / softmax(z / 0.7)(o)."""
    model, tok = model_tok
    batch = engine_batch(model, tok, SamplingParams(temperature=TAU, max_new_tokens=6))
    batch = replace(batch, train_temperature=torch.ones_like(batch.temperature))
    mask, m = batch.response_mask, batch.response_mask.bool()
    old_logp = score_batch(model, None, batch, 0, (), None)[0]
    logits = logits_of(model, batch)
    r = torch.exp(token_logprobs(logits, batch.response_ids, 1.0) - token_logprobs(logits, batch.response_ids, TAU))
    out = rollout_correction(old_logp, batch.sampling_logp, mask, parse_correction("token", 2.0))
    torch.testing.assert_close(out.weights[m], r.clamp(max=2.0)[m], rtol=1e-4, atol=1e-5)
    assert float(out.metrics["rollout_corr/chi2_token"]) == pytest.approx(float((r[m] ** 2).mean() - 1), rel=1e-3)
    assert float(out.metrics["rollout_corr/rollout_is_eff_sample_size"]) < 0.999
    # the probe's drift: the sampler's entropy (tau 0.7) is below the trainer's (tau 1) on these tokens
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    P = batch.prompt_ids.shape[1]
    probe = probe_before_update(model, opt, batch.input_ids, batch.attention_mask, P, 1.0, mask, 3,
                                Sampler(batch.temperature, SamplingParams(temperature=TAU)))
    h = lambda tau: float((token_entropy(logits, tau) * mask).sum() / mask.sum())  # noqa: E731
    assert probe.h_old == pytest.approx(h(1.0), rel=1e-5)
    assert h_rollout(model, probe, batch, 1.0, mask) == pytest.approx(h(TAU), rel=1e-5)
    assert h(TAU) < probe.h_old


def test_probe_replays_top_k_in_the_samplers_entropy(model_tok) -> None:
    model, tok = model_tok
    sampling = SamplingParams(temperature=TAU, top_k=3, max_new_tokens=6)
    batch = engine_batch(model, tok, sampling)
    mask = batch.response_mask
    logits = logits_of(model, batch)
    top = torch.log_softmax((logits / TAU).topk(3, dim=-1).values, dim=-1)  # the top-3 distribution, renormalised
    h_top = (-(top.exp() * top).sum(-1) * mask).sum() / mask.sum()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    probe = probe_before_update(model, opt, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], TAU,
                                mask, 3, Sampler(batch.temperature, sampling))
    assert h_rollout(model, probe, batch, TAU, mask) == pytest.approx(float(h_top), rel=1e-5)
    assert float(h_top) < probe.h_old  # at most ln 3 per token, below the full-vocab entropy here


def test_a_greedy_run_is_a_structural_mismatch(tiny_config, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """top_k = 1: q(o) = 1, so sampling log-probs are 0, the sampler's entropy is 0 and the drift is -H."""
    train(tiny_config("rollout.top_k=1", "train.steps=2"), run_dir, progress=False)
    out = capsys.readouterr().out
    assert out.count("warning: rollout.top_p=1 / top_k=1 truncate the sampling distribution") == 1
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        assert row["rollout_corr/structural_mismatch"] == 1.0
        assert row["rollout_corr/rollout_log_ppl"] == pytest.approx(0.0, abs=1e-6)
        assert row["rollout_corr/kl"] == pytest.approx(row["rollout/logp_diff_mean"], rel=1e-5)  # mean(0 - old_logp)
        assert row["rollout_corr/kl"] > 0.01
        assert row["dynamics/H_rollout"] == pytest.approx(0.0, abs=1e-6)
        assert row["dynamics/H_mismatch"] == pytest.approx(-row["entropy/token_mean"], rel=1e-4)


def test_a_corrected_run_with_top_p_logs_and_trains(tiny_config, run_dir: Path) -> None:
    cfg = tiny_config("rollout.top_p=0.6", "algorithm.rollout_correction.rollout_is=sequence_truncate",
                      "algorithm.rollout_correction.rollout_is_threshold=3.0",
                      "algorithm.rollout_correction.rollout_rs=seq_mean_k1",
                      "algorithm.rollout_correction.rollout_rs_threshold='0.5_2.0'")
    train(cfg, run_dir, progress=False)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert len(rows) == 3 and all(is_known(k) for r in rows for k in r)
    assert all(r["rollout_corr/kl"] > 0 and r["rollout_corr/structural_mismatch"] == 1.0 for r in rows)
    assert all(0 < r["rollout_corr/rollout_is_mean"] <= 1.0 + 1e-6 for r in rows)  # r <= 1 under truncation
    assert all(r["guard/skipped_updates"] == 0 for r in rows)


# ---------------------------------------------------------------- the seam: every method, weights and masks


def scored_for(method_name: str, model, batch, params, weights=None, mask=None) -> tuple[ScoredBatch, object]:
    entry = get_policy_loss(method_name)
    features = entry.obj.old_features + entry.obj.cur_features
    old_logp, old_entropy, extras, _, _ = score_batch(model, None, batch, 0, features, params)
    rewards = torch.tensor([1.0, 0.0] * (batch.response_mask.shape[0] // 2))
    mask = batch.response_mask if mask is None else mask
    adv = per_token_advantages(rewards - 0.5, mask)
    scored = ScoredBatch(batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], scoring_temperature(batch),
                         mask, old_logp, old_entropy, adv, None, extras, weights)
    state = entry.obj.make_state(params) if entry.obj.make_state is not None else None
    if state is not None:
        state.before_update(scored.rows(slice(None)))
    return scored, step_context(state, params, Aggregation("token-mean", norm_length=mask.shape[1]))


def policy_loss_of(method_name: str, model, scored: ScoredBatch, ctx, params) -> float:
    model = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = Config()
    cfg.optim.grad_clip = 0.0
    result = update_policy(model, opt, get_policy_loss(method_name), params, ctx, scored, cfg, step=1)
    assert result.skipped == 0
    return result.metrics["policy/loss"]


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_the_weights_multiply_every_methods_per_token_loss(model_tok, name: str) -> None:
    """Composed by the trainer, never by the method: doubling every weight doubles the loss of every method."""
    model, tok = model_tok
    batch = engine_batch(model, tok, SamplingParams(temperature=TAU, max_new_tokens=6), group_size=4)
    entry = get_policy_loss(name)
    params = entry.make_params()
    plain, ctx = scored_for(name, model, batch, params)
    doubled, ctx2 = scored_for(name, model, batch, params, weights=2.0 * batch.response_mask)
    loss, loss2 = policy_loss_of(name, model, plain, ctx, params), policy_loss_of(name, model, doubled, ctx2, params)
    assert loss != 0.0, name
    assert loss2 == pytest.approx(2.0 * loss, rel=1e-5, abs=1e-9), name


def test_zero_weights_keep_tokens_in_the_denominator_rejection_removes_them(model_tok) -> None:
    """IcePop's zero weight (verl `rollout_is_weights`) vs rejection (verl's modified `response_mask`), token-mean."""
    model, tok = model_tok
    batch = engine_batch(model, tok, SamplingParams(temperature=TAU, max_new_tokens=6), group_size=4)
    params = get_policy_loss("ppo_clip").make_params()
    mask = batch.response_mask
    drop = torch.zeros_like(mask)
    drop[:3] = 1.0  # the first three responses: weight 0, or rejected
    weighted, ctx_w = scored_for("ppo_clip", model, batch, params, weights=mask * (1 - drop))
    rejected, ctx_r = scored_for("ppo_clip", model, batch, params, mask=mask * (1 - drop))
    loss_w = policy_loss_of("ppo_clip", model, weighted, ctx_w, params)
    loss_r = policy_loss_of("ppo_clip", model, rejected, ctx_r, params)
    n_all, n_kept = float(mask.sum()), float((mask * (1 - drop)).sum())
    assert n_kept < n_all
    assert loss_w * n_all == pytest.approx(loss_r * n_kept, rel=1e-5)  # same numerator, other denominators


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(("overrides", "message"), [
    (["algorithm.rollout_correction.rollout_is=tokens"], "algorithm.rollout_correction.rollout_is: unknown level 'tokens'"),
    (["algorithm.rollout_correction.rollout_is=token", "algorithm.rollout_correction.rollout_is_threshold=0"],
     "algorithm.rollout_correction.rollout_is_threshold: bounds must be finite and > 0"),
    (["algorithm.rollout_correction.rollout_is=token", "algorithm.rollout_correction.rollout_is_threshold='5_0.5'"],
     "algorithm.rollout_correction.rollout_is_threshold: lower bound 5 > upper bound 0.5"),
    (["algorithm.rollout_correction.rollout_rs=geo"], "algorithm.rollout_correction.rollout_rs: unknown option 'geo'"),
    (["algorithm.rollout_correction.rollout_rs=seq_mean_k1"], "algorithm.rollout_correction.rollout_rs_threshold: required"),
    (["algorithm.rollout_correction.rollout_iss=token"], "did you mean 'algorithm.rollout_correction.rollout_is'"),
    (["algorithm.rollout_correction.rollout_is_batch_normalize=maybe"], "expected true/false"),
])  # fmt: skip
def test_config_refuses_bad_settings_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, overrides)


def test_config_accepts_verl_and_trl_spellings() -> None:
    cfg = load_config(None, ["algorithm.rollout_correction.rollout_is=sequence_mask",
                             "algorithm.rollout_correction.rollout_is_threshold='0.5_2.0'",
                             "algorithm.rollout_correction.rollout_rs=token_k1,seq_mean_k3",
                             "algorithm.rollout_correction.rollout_rs_threshold='0.5_2.0,0.01'"])
    c = cfg.algorithm.rollout_correction
    assert c.rollout_is == "sequence_mask" and c.rollout_is_threshold == "0.5_2.0"
    assert load_config(None, ["algorithm.rollout_correction.rollout_is=token"]).algorithm.rollout_correction \
        .rollout_is_threshold == 2.0  # verl's default cap
    assert Config().algorithm.rollout_correction.rollout_is is None  # off by default
