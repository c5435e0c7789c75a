"""The strategy seam: the registry and config errors, the RolloutBatch fields for branches / fixed advantages /
train temperatures, the row helpers, and the contract every registered strategy keeps (a few steps each)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from entropy_rl.core.registry import ParamsError, RegistryError
from entropy_rl.metrics.names import is_known
from entropy_rl.rollout import SamplingParams
from entropy_rl.rollout.hf import generate
from entropy_rl.rollout.strategies import STRATEGIES, make_strategy
from entropy_rl.rollout.strategies.base import (
    branch_prompts,
    concat_batches,
    cost_metrics,
    graft_branches,
    prompt_token_lists,
    sampled_tokens,
    take_rows,
)

COMMON = {"rollout/tokens_generated", "rollout/branches", "rollout/scored_tokens"}
# settings that make every strategy do its thing on the tiny character-level model in a few steps
CONTRACT_PARAMS = {"cure": {"min_token_chars": 1}, "arbitrary_entropy": {"target_entropy": 100.0}}


def test_registry_lists_the_strategies_and_errors_name_the_key() -> None:
    assert {"plain", "top_h", "adaptive_temperature", "cure", "arbitrary_entropy", "aepo_branching"} <= set(STRATEGIES.names())
    with pytest.raises(RegistryError, match="unknown rollout strategy 'curee'.*Did you mean 'cure'"):
        make_strategy("curee")
    with pytest.raises(ParamsError, match=r"rollout.strategy_params.branches: expected an integer"):
        make_strategy("cure", {"branches": "many"})
    with pytest.raises(ParamsError, match=r"rollout.strategy_params: mode must be one of entropy, random"):
        make_strategy("cure", {"mode": "best"})


def test_loss_mask_leaves_out_shared_prefixes_only_when_asked(policy) -> None:
    model, tok = policy
    batch = generate(model, tok, ["1>2:", "3>4:"], SamplingParams(max_new_tokens=4))
    shared = torch.zeros_like(batch.response_mask)
    shared[1, :2] = 1
    assert torch.equal(replace(batch, shared_prefix_mask=shared).loss_mask, batch.response_mask)  # trained in each row
    once = replace(batch, shared_prefix_mask=shared, train_shared_prefix=False)
    assert torch.equal(once.loss_mask, batch.response_mask * (1 - shared))
    assert torch.equal(batch.score_temperature, batch.temperature) and not batch.fixed_rows.any()
    fixed = replace(batch, fixed_advantage=torch.tensor([float("nan"), 1.0]), train_temperature=batch.temperature * 2)
    assert fixed.fixed_rows.tolist() == [False, True] and torch.equal(fixed.score_temperature, batch.temperature * 2)
    with pytest.raises(ValueError, match="shared_prefix_mask must be"):
        replace(batch, shared_prefix_mask=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="fixed_advantage must be"):
        replace(batch, fixed_advantage=torch.zeros(3))


def test_concat_and_take_rows_keep_every_field(policy) -> None:
    model, tok = policy
    short = generate(model, tok, ["1>2:"], SamplingParams(max_new_tokens=4))
    long = generate(model, tok, ["12 3 4>99:", "5>5:"], SamplingParams(max_new_tokens=4))
    long = replace(long, fixed_advantage=torch.tensor([1.0, float("nan")]), group_index=torch.tensor([1, 2]))
    joined = concat_batches([short, long], tok.pad_token_id)
    assert joined.prompt_ids.shape == (3, long.prompt_ids.shape[1]) and joined.group_index.tolist() == [0, 1, 2]
    assert prompt_token_lists(joined) == prompt_token_lists(short) + prompt_token_lists(long)  # re-left-padded
    assert torch.isnan(joined.fixed_advantage[[0, 2]]).all() and joined.fixed_advantage[1] == 1.0
    assert joined.shared_prefix_mask is None and joined.train_temperature is None  # absent everywhere: stays None
    back = take_rows(joined, torch.tensor([2, 0]))
    assert back.texts == [joined.texts[2], joined.texts[0]] and back.group_index.tolist() == [2, 0]


def test_graft_copies_the_prefix_and_cuts_continuations_at_the_width(policy, engine, rescore) -> None:
    model, tok = policy
    torch.manual_seed(0)
    parent = generate(model, tok, ["1 2>3:", "5>5:"], SamplingParams(max_new_tokens=6))
    rows, prefix = torch.tensor([0, 1]), torch.tensor([3, 0])
    assert branch_prompts(parent, rows, prefix)[0] == prompt_token_lists(parent)[0] + parent.response_ids[0, :3].tolist()
    cont = engine.generate(branch_prompts(parent, rows, prefix), SamplingParams(max_new_tokens=6), 1)  # budget 6 > 6 - 3
    out = graft_branches(parent, rows, prefix, cont, tok)
    assert torch.equal(out.response_ids[0, :3], parent.response_ids[0, :3])
    assert out.shared_prefix_mask[0].tolist()[:3] == [1, 1, 1] and out.shared_prefix_mask[1].sum() == 0
    n0 = int(cont.response_mask[0].sum())
    assert int(out.response_mask[0].sum()) == min(3 + n0, 6)  # cut at T = 6, as if sampled with budget 3
    assert torch.equal(out.response_ids[0, 3:3 + min(n0, 3)], cont.response_ids[0, :min(n0, 3)])
    m = out.response_mask.bool()
    assert torch.allclose(out.sampling_logp[m], rescore(out)[m], atol=1e-5)
    assert out.texts[0] == tok.decode(out.response_ids[0][m[0]], skip_special_tokens=True).strip()


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_keeps_the_contract(name: str, policy, engine, prompts, rescore) -> None:
    """Three steps of each strategy with its (demo-friendly) defaults: valid groups, exact sampling log-probs at the
    sampling temperature wherever nothing was truncated, cost metrics present and namespaced."""
    model, tok = policy
    strategy = make_strategy(name, CONTRACT_PARAMS.get(name, {}))
    sampling = SamplingParams(temperature=1.0, max_new_tokens=6)
    reward = lambda idx, texts: torch.tensor([float(len(t) % 2) for t in texts])
    torch.manual_seed(0)
    for step in (1, 2, 3):
        batch, metrics = strategy.generate(engine, model, tok, prompts, sampling, group_size=4, step=step, reward_fn=reward)
        B, T = batch.response_ids.shape
        assert T == 6 and set(batch.group_index.tolist()) == set(range(len(prompts)))
        assert metrics["rollout/tokens_generated"] >= sampled_tokens(batch) > 0 and metrics["rollout/branches"] >= 0
        assert all(k in COMMON or k.startswith(f"rollout/{name}/") and is_known(k) for k in metrics), sorted(metrics)
        assert len(batch.texts) == B and (batch.loss_mask <= batch.response_mask).all()
        m = batch.response_mask.bool()
        if name != "top_h":  # top_h: truncated distribution, see test_top_h
            assert torch.allclose(batch.sampling_logp[m], rescore(batch)[m], atol=1e-5)
        state = strategy.state_dict()
        strategy.load_state_dict(state)


def test_cost_metrics_keys() -> None:
    assert cost_metrics(10, 2) == {"rollout/tokens_generated": 10.0, "rollout/branches": 2.0}
