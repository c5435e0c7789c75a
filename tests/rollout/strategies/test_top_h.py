"""top_h: the kept set is the official greedy rule's; sampling log-probs are those of the truncated, renormalised
distribution (what the trainer would compute if it replayed the truncation); the trainer's plain log-probs are
lower by -log(kept mass), the documented structural gap."""

import math

import pytest
import torch

from entropy_rl.rollout import SamplingParams
from entropy_rl.rollout.strategies import make_strategy
from entropy_rl.rollout.strategies.top_h import Params, top_h_generate, top_h_keep
from entropy_rl.train.forward import response_logits


def greedy_reference(probs: list[float], alpha: float, top_n: int) -> set[int]:
    """The official loop, re-derived one token at a time in float64: add tokens by probability while the
    renormalised entropy of the next candidate set stays within the bound alpha C_N / sigma + log sigma."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])[:top_n]
    top = [probs[i] for i in order]
    tau = alpha * -sum(p * math.log(p) for p in top if p > 0)  # alpha x partial entropy of the top_n
    kept, H, sigma = [order[0]], -top[0] * math.log(top[0]), top[0]
    for j in range(1, len(top)):
        H, sigma = H - top[j] * math.log(top[j]), sigma + top[j]
        if H / sigma + math.log(sigma) > tau / sigma + math.log(sigma):
            break
        kept.append(order[j])
    return set(kept)


@pytest.mark.parametrize("alpha, top_n", [(0.4, 100), (0.1, 100), (0.7, 5), (1.0, 8)])
def test_kept_set_is_the_official_greedy_rule(alpha: float, top_n: int) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 40, generator=g, dtype=torch.float64) * 2
    keep = top_h_keep(logits, 1.3, alpha, top_n)
    probs = torch.softmax(logits / 1.3, dim=-1)
    for row in range(16):
        assert set(keep[row].nonzero().squeeze(-1).tolist()) == greedy_reference(probs[row].tolist(), alpha, top_n)


def test_kept_set_by_hand() -> None:
    # p = [0.5, 0.3, 0.2]: -p log p = [0.3466, 0.3612, 0.3219], C = [0.3466, 0.7078, 1.0297]
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert top_h_keep(logits, 1.0, 0.5, 100).tolist() == [[True, False, False]]  # 0.5 C_N = 0.515: C_1 only
    assert top_h_keep(logits, 1.0, 0.7, 100).tolist() == [[True, True, False]]  # 0.721: C_1, C_2
    assert top_h_keep(logits, 1.0, 0.1, 100).tolist() == [[True, False, False]]  # nothing within: the top-1 stays
    assert top_h_keep(logits, 1.0, 1.0, 100).tolist() == [[True, True, True]]


def test_samples_come_from_the_truncated_renormalised_distribution(policy, engine, prompts, rescore) -> None:
    model, tok = policy
    sampling = SamplingParams(temperature=1.2, max_new_tokens=6)
    torch.manual_seed(0)
    batch, metrics = make_strategy("top_h", {"alpha": 0.4}).generate(engine, model, tok, prompts, sampling,
                                                                     group_size=3, step=1)
    assert batch.group_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    P, m = batch.prompt_ids.shape[1], batch.response_mask.bool()
    with torch.no_grad():
        logits = response_logits(model, batch.input_ids, batch.attention_mask, P).float()  # the trainer's forward
    B, T, V = logits.shape
    keep = top_h_keep(logits.reshape(B * T, V), 1.2, 0.4, 100).reshape(B, T, V)
    tokens = batch.response_ids.unsqueeze(-1)
    assert keep.gather(-1, tokens).squeeze(-1)[m].all()  # every sampled token is in its step's Top-H set
    renorm = torch.log_softmax((logits / 1.2).masked_fill(~keep, float("-inf")), dim=-1).gather(-1, tokens).squeeze(-1)
    assert torch.allclose(batch.sampling_logp[m], renorm[m], atol=1e-5)
    # the trainer does not replay the truncation: its log-prob is lower by -log(kept mass) (>= 0)
    mass = torch.softmax(logits / 1.2, dim=-1).mul(keep).sum(-1)
    gap = batch.sampling_logp - rescore(batch)
    assert torch.allclose(gap[m], -mass.log()[m], atol=1e-5) and (gap[m] > -1e-6).all()
    assert metrics["rollout/top_h/kept_mass"] == pytest.approx(float(mass[m].mean()), abs=1e-5)
    assert metrics["rollout/tokens_generated"] == float(m.sum()) and metrics["rollout/branches"] == 0


def test_alpha_one_with_all_candidates_is_plain_sampling(policy, prompts) -> None:
    """alpha = 1 keeps every token of the top_n: with top_n >= V Top-H samples exactly what `generate` does."""
    from entropy_rl.rollout import generate

    model, tok = policy
    sampling = SamplingParams(temperature=0.9, max_new_tokens=6)
    torch.manual_seed(4)
    a = top_h_generate(model, tok, prompts, sampling, Params(alpha=1.0, top_n=1000))
    torch.manual_seed(4)
    b = generate(model, tok, prompts, sampling)
    assert torch.equal(a.response_ids, b.response_ids) and torch.allclose(a.sampling_logp, b.sampling_logp, atol=1e-6)
