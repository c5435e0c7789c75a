"""arbitrary_entropy (AEPO): the temperature follows the entropy estimate, the kept rows are the tempered samples
above their group mean, they replace the first main rows with advantage +1 and are trained at the run's
temperature; their sampling log-probs are exact at the temperature they were drawn at."""

import pytest
import torch

from entropy_rl.rollout import SamplingParams
from entropy_rl.rollout.strategies import make_strategy
from entropy_rl.train.forward import score_in_chunks


class Verifier:
    """Rewards texts of even length; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], list[str], torch.Tensor]] = []

    def __call__(self, idx, texts):
        r = torch.tensor([float(len(t) % 2 == 0) for t in texts])
        self.calls.append((list(idx), list(texts), r))
        return r


def kept_texts(call, threshold: float = 0.05) -> list[str]:
    """The rows of the tempered batch whose GRPO advantage (unbiased std, eps 1e-6) exceeds the threshold."""
    idx, texts, r = call
    g = torch.tensor(idx)
    out = []
    for i in range(len(texts)):
        group = r[g == g[i]]
        if ((r[i] - group.mean()) / (group.std() + 1e-6)) > threshold:
            out.append(texts[i])
    return out


@pytest.mark.parametrize("target, temperature, halve", [(100.0, 1.2, False), (0.0, 0.8, True)])
def test_tempered_correct_rows_replace_the_first_rows(policy, engine, prompts, rescore, target, temperature, halve) -> None:
    model, tok = policy
    verifier = Verifier()
    strategy = make_strategy("arbitrary_entropy", {"target_entropy": target, "prompt_fraction": 0.5})
    torch.manual_seed(2)
    batch, metrics = strategy.generate(engine, model, tok, prompts, SamplingParams(max_new_tokens=6), group_size=4,
                                       step=1, reward_fn=verifier)
    (call,) = verifier.calls
    assert sorted(set(call[0])) == [0, 1]  # the first half of the prompts, G samples each
    kept = kept_texts(call)
    n = len(kept) // 2 if halve else len(kept)
    assert n > 0, "the seed must give kept rows for this test to say anything"
    assert metrics["rollout/arbitrary_entropy/temperature"] == temperature
    assert metrics["rollout/arbitrary_entropy/kept"] == len(kept) and metrics["rollout/arbitrary_entropy/injected"] == n
    assert batch.response_ids.shape[0] == len(prompts) * 4  # the batch size stays
    assert batch.texts[:n] == kept[:n]
    assert batch.fixed_rows.tolist() == [True] * n + [False] * (16 - n) and (batch.fixed_advantage[:n] == 1).all()
    m = batch.response_mask.bool()
    assert (batch.temperature[:n][m[:n]] == temperature).all() and (batch.temperature[n:][m[n:]] == 1.0).all()
    assert (batch.score_temperature[m] == 1.0).all()  # trained at the run's temperature: grad log pi(o)
    assert torch.allclose(batch.sampling_logp[m], rescore(batch)[m], atol=1e-5)  # exact where they were drawn
    trained = rescore(batch, batch.score_temperature)
    assert not torch.allclose(batch.sampling_logp[:n][m[:n]], trained[:n][m[:n]], atol=1e-3)  # by design
    assert batch.group_index.tolist()[n:] == [i // 4 for i in range(n, 16)]
    assert metrics["rollout/tokens_generated"] > float(batch.response_mask[n:].sum())  # main + the tempered batch


def test_entropy_estimates(policy, engine, prompts) -> None:
    model, tok = policy
    torch.manual_seed(0)
    strategy = make_strategy("arbitrary_entropy", {"entropy_source": "full_vocab", "prompt_fraction": 0.0})
    batch, metrics = strategy.generate(engine, model, tok, prompts, SamplingParams(max_new_tokens=6), group_size=2,
                                       step=1, reward_fn=Verifier())
    _, H, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], 1.0, 0,
                              mask=batch.response_mask)
    mask = batch.response_mask
    assert metrics["rollout/arbitrary_entropy/entropy_estimate"] == pytest.approx(float((H * mask).sum() / mask.sum()), rel=1e-5)
    assert metrics["rollout/scored_tokens"] == float(mask.sum()) and batch.fixed_advantage is None  # no prompt sampled hot
    sample = make_strategy("arbitrary_entropy").entropy_estimate(batch, model, 0)
    assert sample == pytest.approx(float(-(batch.sampling_logp * mask).sum() / mask.sum()))


def test_refuses_to_run_without_the_verifier(policy, engine, prompts) -> None:
    model, tok = policy
    with pytest.raises(ValueError, match="arbitrary_entropy reads rewards while sampling: pass reward_fn"):
        make_strategy("arbitrary_entropy").generate(engine, model, tok, prompts, SamplingParams(), group_size=2, step=1)


def test_sample_num_caps_the_injected_rows(policy, engine, prompts) -> None:
    model, tok = policy
    torch.manual_seed(2)
    batch, metrics = make_strategy("arbitrary_entropy", {"target_entropy": 100.0, "prompt_fraction": 0.5, "sample_num": 1}).generate(
        engine, model, tok, prompts, SamplingParams(max_new_tokens=6), group_size=4, step=1, reward_fn=Verifier())
    assert metrics["rollout/arbitrary_entropy/kept"] > 1 and metrics["rollout/arbitrary_entropy/injected"] == 1
    assert batch.fixed_rows.sum() == 1
