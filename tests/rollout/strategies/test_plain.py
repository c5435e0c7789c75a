"""plain: the engine as it is, with the cost metrics."""

import pytest
import torch

from entropy_rl.rollout import SamplingParams
from entropy_rl.rollout.strategies import make_strategy


def test_plain_is_the_engine_and_counts_its_tokens(policy, engine, prompts, rescore) -> None:
    model, tok = policy
    sampling = SamplingParams(temperature=0.8, max_new_tokens=6)
    torch.manual_seed(0)
    batch, metrics = make_strategy("plain").generate(engine, model, tok, prompts, sampling, group_size=3, step=1)
    torch.manual_seed(0)
    direct = engine.generate(prompts, sampling, 3)
    assert torch.equal(batch.response_ids, direct.response_ids) and torch.equal(batch.group_index, direct.group_index)
    assert metrics == {"rollout/tokens_generated": float(direct.response_mask.sum()), "rollout/branches": 0.0}
    m = batch.response_mask.bool()
    assert torch.allclose(batch.sampling_logp[m], rescore(batch)[m], atol=1e-5)
    assert batch.shared_prefix_mask is None and torch.equal(batch.loss_mask, batch.response_mask)


def test_a_stateless_strategy_refuses_another_strategys_state() -> None:
    plain = make_strategy("plain")
    assert plain.state_dict() == {}
    with pytest.raises(ValueError, match="keeps no state"):
        plain.load_state_dict({"stats": None})
