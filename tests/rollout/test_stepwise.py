"""The token-by-token sampler: the plain rule samples exactly what `generate` samples; per-token temperatures and
keep masks are recorded exactly (the trainer's re-scored log-probs agree to fp32 rounding)."""

import pytest
import torch

from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.rollout import SamplingParams, generate
from entropy_rl.rollout.stepwise import StepChoice, sample_stepwise, step_distribution
from entropy_rl.train.forward import response_logits, score_in_chunks

SPEC = TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
PROMPTS = ["1 2>3:", "12 3 4>99:", "5>5:", "3+4:"] * 2  # different lengths: left padding


@pytest.fixture(scope="module")
def policy():
    tok = build_char_tokenizer("0123456789+-*>: ")
    return build_tiny_model(SPEC, tok, seed=0), tok


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0.7, max_new_tokens=8),
                                      SamplingParams(temperature=1.3, top_k=5, top_p=0.8, max_new_tokens=8)])
def test_the_plain_rule_samples_bit_for_bit_what_generate_samples(policy, sampling: SamplingParams) -> None:
    model, tok = policy
    torch.manual_seed(3)
    a = generate(model, tok, PROMPTS, sampling)
    torch.manual_seed(3)
    b = sample_stepwise(model, tok, PROMPTS, sampling)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
    assert torch.equal(a.sampling_logp, b.sampling_logp) and torch.equal(a.truncated, b.truncated)
    assert a.texts == b.texts and torch.equal(a.temperature, b.temperature)


def test_per_token_temperatures_are_recorded_and_match_the_trainer(policy) -> None:
    model, tok = policy
    taus = []

    def rule(logits: torch.Tensor, t: int) -> StepChoice:  # a different temperature per row and per step
        tau = 0.5 + 0.1 * t + 0.2 * torch.arange(logits.shape[0], dtype=torch.float32) / logits.shape[0]
        taus.append(tau)
        return StepChoice(tau)

    torch.manual_seed(0)
    batch = sample_stepwise(model, tok, PROMPTS, SamplingParams(max_new_tokens=8), rule)
    m = batch.response_mask.bool()
    expected = torch.stack(taus, dim=1)  # [B, steps run]
    assert torch.equal(batch.temperature[:, : expected.shape[1]][m[:, : expected.shape[1]]],
                       expected[m[:, : expected.shape[1]]])
    assert batch.uniform_temperature() is None
    logp, _, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1],
                                 batch.temperature, 0, mask=batch.response_mask)
    assert torch.allclose(batch.sampling_logp[m], logp[m], atol=1e-5)  # fp32: ~2e-7 observed
    assert (batch.sampling_logp[~m] == 0).all()


def test_a_keep_mask_truncates_and_the_log_probs_are_the_renormalised_ones(policy) -> None:
    model, tok = policy
    keeps = []

    def rule(logits: torch.Tensor, t: int) -> StepChoice:  # the 3 most likely tokens only
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, logits.topk(3, dim=-1).indices, True)
        keeps.append(keep)
        return StepChoice(torch.ones(logits.shape[0]), keep)

    torch.manual_seed(1)
    sampling = SamplingParams(max_new_tokens=6)
    batch = sample_stepwise(model, tok, PROMPTS, sampling, rule)
    P, m = batch.prompt_ids.shape[1], batch.response_mask.bool()
    with torch.no_grad():
        logits = response_logits(model, batch.input_ids, batch.attention_mask, P).float()  # the trainer's forward
    steps = len(keeps)
    keep = torch.stack(keeps, dim=1)  # [B, steps, V]
    tokens = batch.response_ids[:, :steps]
    assert keep.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)[m[:, :steps]].all()  # only kept tokens were drawn
    renorm = torch.log_softmax(logits[:, :steps].masked_fill(~keep, float("-inf")), dim=-1)
    expected = renorm.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(batch.sampling_logp[:, :steps][m[:, :steps]], expected[m[:, :steps]], atol=1e-5)
    # the trainer's untruncated log-prob is lower by -log(kept mass): the structural gap of truncation
    full = torch.log_softmax(logits[:, :steps], dim=-1)
    mass = full.exp().mul(keep).sum(-1)
    gap = batch.sampling_logp[:, :steps] - full.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(gap[m[:, :steps]], -mass.log()[m[:, :steps]], atol=1e-5)


def test_step_distribution_applies_keep_then_top_k() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    keep = torch.tensor([[False, True, True, True]])
    out = step_distribution(logits, StepChoice(torch.tensor([1.0]), keep), SamplingParams(top_k=2))
    # keep drops token 0; top-k 2 of the rest keeps tokens 1 and 2: softmax([2, 1]) = [0.731, 0.269]
    assert out.exp()[0].tolist() == pytest.approx([0.0, 0.7310586, 0.2689414, 0.0], abs=1e-6)


def test_rows_stop_at_eos_and_truncate_at_the_cap(policy) -> None:
    model, tok = policy

    def rule(logits: torch.Tensor, t: int) -> StepChoice:  # row 0 must end at step 2; row 1 never ends
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep[0, tok.eos_token_id if t == 2 else 5] = True
        keep[1, 6] = True
        return StepChoice(torch.ones(2), keep)

    batch = sample_stepwise(model, tok, ["1>2:", "3>4:"], SamplingParams(max_new_tokens=5), rule)
    assert batch.response_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.truncated.tolist() == [False, True]
    assert batch.response_ids[0, 3:].tolist() == [tok.pad_token_id] * 2
    assert torch.equal(batch.sampling_logp[batch.response_mask.bool()], torch.zeros(8))  # one kept token: log 1
