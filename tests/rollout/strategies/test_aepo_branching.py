"""aepo_branching (agentic AEPO, single-turn): the branch probability, pre-monitoring count and segment entropy by
hand; every prompt ends with exactly k rows, a branch's prefix is its source's (trained in every row, as the
released code), sampling log-probs match the trainer; the knobs switch branching on and off."""

import math

import pytest
import torch

from entropy_rl.rollout import SamplingParams
from entropy_rl.rollout.strategies import make_strategy
from entropy_rl.rollout.strategies.aepo_branching import branch_score, initial_count, segment_entropy


def test_branch_score_by_hand() -> None:
    assert branch_score(0.4, 0.2, 0.5, 0.05, 0) == pytest.approx(0.5)  # 0.4 + 0.2 x 0.5
    assert branch_score(0.4, 0.2, 0.5, 0.05, 2) == pytest.approx(0.45)  # x (1 - 0.1)
    assert branch_score(0.9, 1.0, 3.0, 0.05, 0) == 1.0 and branch_score(0.1, 1.0, -3.0, 0.05, 0) == 0.0  # clamped
    assert branch_score(0.9, 0.2, 0.0, 0.05, 30) == 0.0  # the penalty factor never goes negative


def test_initial_count_by_hand() -> None:
    assert initial_count(12, 0.0, 0.0) == 7  # floor(12 x 0.5) + 1
    assert initial_count(12, 4.0, 0.0) == 11  # floor(12 x 0.8808) + 1
    assert initial_count(12, 40.0, 0.0) == 12 and initial_count(12, -40.0, 0.0) == 1  # clamped to [1, k]


def test_segment_entropy_sums_the_leading_tokens_over_log_v() -> None:
    H = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    assert segment_entropy(H, mask, 3, 20).tolist() == pytest.approx([6 / math.log(20), 2 / math.log(20)])


def test_groups_prefixes_and_log_probs(policy, engine, prompts, rescore) -> None:
    model, tok = policy
    k, T = 4, 8
    torch.manual_seed(0)
    strategy = make_strategy("aepo_branching", {"branch_probability": 0.3})
    batch, metrics = strategy.generate(engine, model, tok, prompts, SamplingParams(max_new_tokens=T), group_size=k, step=1)
    assert batch.group_index.tolist() == [g for g in range(len(prompts)) for _ in range(k)]  # exactly k per prompt
    assert metrics["rollout/branches"] > 0 and batch.train_shared_prefix
    assert torch.equal(batch.loss_mask, batch.response_mask)  # the released code trains every copy
    for b in range(batch.response_ids.shape[0]):
        L = int(batch.shared_prefix_mask[b].sum())
        if L == 0:
            continue
        assert L % 2 == 0  # branches start at segment ends (T / rounds = 2 tokens)
        same = [o for o in range(batch.response_ids.shape[0]) if o != b and batch.group_index[o] == batch.group_index[b]
                and torch.equal(batch.response_ids[o, :L], batch.response_ids[b, :L])
                and torch.equal(batch.sampling_logp[o, :L], batch.sampling_logp[b, :L])]
        assert same, f"row {b}: no row of its prompt holds its prefix"
    m = batch.response_mask.bool()
    assert torch.allclose(batch.sampling_logp[m], rescore(batch)[m], atol=1e-5)
    assert metrics["rollout/tokens_generated"] == pytest.approx(float((batch.response_mask - batch.shared_prefix_mask).sum()))


def test_no_branching_at_threshold_one_and_all_initial(policy, engine, prompts) -> None:
    model, tok = policy
    torch.manual_seed(0)
    never = make_strategy("aepo_branching", {"branch_probability": 1.0, "entropy_weight": 0.0})
    batch, metrics = never.generate(engine, model, tok, prompts, SamplingParams(max_new_tokens=8), group_size=4, step=1)
    assert metrics["rollout/branches"] == 0 and batch.shared_prefix_mask.sum() == 0
    assert metrics["rollout/aepo_branching/initial_rollouts"] == 2 and metrics["rollout/aepo_branching/fresh"] == 8
    full = make_strategy("aepo_branching", {"initial_rollouts": 4})
    batch, metrics = full.generate(engine, model, tok, prompts, SamplingParams(max_new_tokens=8), group_size=4, step=1)
    assert metrics["rollout/branches"] == 0 and metrics["rollout/aepo_branching/fresh"] == 0
    assert metrics["rollout/aepo_branching/rounds"] <= 4 and batch.response_ids.shape[0] == 16


def test_dynamic_rollouts_pre_monitor_and_count_the_pre_rollout(policy, engine, prompts) -> None:
    model, tok = policy
    torch.manual_seed(0)
    strategy = make_strategy("aepo_branching", {"dynamic_rollouts": True, "branch_probability": 1.0, "entropy_weight": 0.0})
    batch, metrics = strategy.generate(engine, model, tok, prompts, SamplingParams(max_new_tokens=8), group_size=4, step=1)
    assert 1 <= metrics["rollout/aepo_branching/initial_rollouts"] <= 4 and batch.response_ids.shape[0] == 16
    # the discarded pre-rollouts are part of the budget
    assert metrics["rollout/tokens_generated"] > float(batch.response_mask.sum())


def test_chat_prompts_are_encoded_as_the_engine_encodes_them(tmp_path) -> None:
    from entropy_rl.models import load_pretrained, save_tiny_checkpoint
    from entropy_rl.rollout import make_engine
    from entropy_rl.tasks.chat import ChatPrompt

    model, tok = load_pretrained(save_tiny_checkpoint(tmp_path / "qwen2"))
    engine = make_engine("hf", model, tok)
    prompts = [ChatPrompt("What is 12 + 30?", "Think step by step."), ChatPrompt("Compute 48 / 2.")]
    torch.manual_seed(0)
    batch, _ = make_strategy("aepo_branching", {"branch_probability": 0.2}).generate(
        engine, model, tok, prompts, SamplingParams(max_new_tokens=8), group_size=3, step=1)
    plain = engine.generate(prompts, SamplingParams(max_new_tokens=8), 3)
    assert torch.equal(batch.prompt_ids, plain.prompt_ids) and torch.equal(batch.prompt_mask, plain.prompt_mask)
