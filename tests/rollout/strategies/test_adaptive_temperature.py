"""adaptive_temperature: HAPO's statistics and temperature formula by hand; the first step samples at tau0, later
steps at per-token temperatures the trainer reproduces exactly; the statistics equal those of the trainer's
pre-update entropies; the state round-trips."""

import math

import pytest
import torch

from entropy_rl.rollout import SamplingParams
from entropy_rl.rollout.strategies import make_strategy
from entropy_rl.rollout.strategies.adaptive_temperature import EntropyStats, adaptive_temperature, entropy_stats
from entropy_rl.train.forward import score_in_chunks


def test_statistics_by_hand() -> None:
    # H = e^[0, 1, 2, 3] (masked: the last column off); e = [0, 1, 2], pivot 0.5 -> index round(1) = 1 -> m = 1
    H = torch.tensor([[1.0, math.e, math.e ** 2, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    s = entropy_stats(H, mask, 0.5, signed=False)
    # h = e - m = [-1, 0, 1]; RMS = sqrt(2/3); h / RMS = [-1.2247, 0, 1.2247]
    assert s.median == pytest.approx(1.0) and s.std == pytest.approx(math.sqrt(2 / 3))
    assert s.scale_pos == pytest.approx(1 / 1.2247449) and s.scale_neg == pytest.approx(-1 / 1.2247449)
    assert entropy_stats(H, mask, 0.5, signed=True).scale_neg == pytest.approx(1 / 1.2247449)
    assert entropy_stats(H, torch.zeros_like(mask), 0.5, signed=False) is None


def test_temperature_by_hand_released_and_signed() -> None:
    stats = EntropyStats(median=0.0, std=1.0, scale_pos=0.5, scale_neg=-0.5)
    H = torch.tensor([1.0, math.e, math.exp(-1.0), math.exp(4.0)])  # log H = [0, 1, -1, 4]
    tau = adaptive_temperature(H, 1.0, stats, 0.1)
    # h ~ [0, 1, -1, 4] (std + 1e-6); h_hat = [0, 0.5, +0.5 (released: negative / negative), 1 (clamped)]
    assert tau.tolist() == pytest.approx([1.0, 1.05, 1.05, 1.1], abs=1e-6)
    signed = EntropyStats(0.0, 1.0, 0.5, 0.5)
    assert adaptive_temperature(H, 2.0, signed, 0.1).tolist() == pytest.approx([2.0, 2.1, 1.9, 2.2], abs=1e-5)


def test_first_step_is_plain_then_per_token_temperatures_match_the_trainer(policy, engine, prompts, rescore) -> None:
    model, tok = policy
    strategy = make_strategy("adaptive_temperature", {"temperature_tau": 0.2})
    sampling = SamplingParams(temperature=0.9, max_new_tokens=6)
    torch.manual_seed(0)
    first, _ = strategy.generate(engine, model, tok, prompts, sampling, group_size=3, step=1)
    assert first.uniform_temperature() == pytest.approx(0.9)
    # the statistics are those of the trainer's pre-update entropies of the batch (at tau0), as in the official code
    _, H_old, _ = score_in_chunks(model, first.input_ids, first.attention_mask, first.prompt_ids.shape[1], 0.9, 0,
                                  mask=first.response_mask)
    expected = entropy_stats(H_old, first.response_mask, 0.8, signed=False)
    assert vars(strategy.stats) == pytest.approx(vars(expected), rel=1e-5)

    second, metrics = strategy.generate(engine, model, tok, prompts, sampling, group_size=3, step=2)
    m = second.response_mask.bool()
    taus = second.temperature[m]
    assert second.uniform_temperature() is None and (taus >= 0.9 - 1e-6).all() and (taus <= 0.9 * 1.2 + 1e-6).all()
    assert torch.allclose(second.sampling_logp[m], rescore(second)[m], atol=1e-5)  # changed temperatures included
    assert metrics["rollout/adaptive_temperature/tau_max"] == pytest.approx(float(taus.max()))


def test_state_round_trips_and_resumes_identically(policy, engine, prompts) -> None:
    model, tok = policy
    sampling = SamplingParams(max_new_tokens=6)
    a = make_strategy("adaptive_temperature")
    torch.manual_seed(0)
    a.generate(engine, model, tok, prompts, sampling, group_size=2, step=1)
    b = make_strategy("adaptive_temperature")
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    x, _ = a.generate(engine, model, tok, prompts, sampling, group_size=2, step=2)
    torch.manual_seed(1)
    y, _ = b.generate(engine, model, tok, prompts, sampling, group_size=2, step=2)
    assert torch.equal(x.response_ids, y.response_ids) and torch.equal(x.temperature, y.temperature)
    assert make_strategy("adaptive_temperature").state_dict() == {"stats": None}


def test_the_trainer_probes_per_token_temperatures_in_chunks(tiny_config, tmp_path) -> None:
    """End to end: step 2 samples at per-token temperatures and the probe scores in chunks of 2 of the 4 rows
    (2 mini-batches): every dynamics metric is finite (the probe once passed the whole [B, T] tau to each chunk)."""
    from entropy_rl.metrics.sinks import read_jsonl
    from entropy_rl.train.loop import train

    cfg = tiny_config("rollout.strategy=adaptive_temperature", "train.steps=2", "train.dynamics_every=1",
                      "optim.mini_batches=2")
    train(cfg, tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(rows[-1][k]) for k in ("dynamics/dH_actual", "dynamics/dH_pred_lin", "dynamics/dH_identity"))
