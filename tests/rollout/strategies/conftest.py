"""Fixtures of the strategy tests: a tiny random policy, its hf engine, prompts, and the trainer's re-scoring."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from entropy_rl.models import TinyModelSpec, build_char_tokenizer, build_tiny_model
from entropy_rl.rollout import RolloutBatch, make_engine
from entropy_rl.train.forward import score_in_chunks

SPEC = TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def policy():
    tok = build_char_tokenizer("0123456789+-*>: ")
    return build_tiny_model(SPEC, tok, seed=0), tok


@pytest.fixture(scope="module")
def engine(policy):
    return make_engine("hf", *policy)


@pytest.fixture
def prompts() -> list[str]:
    return ["1 2>3:", "12 3 4>99:", "5>5:", "3+4:"]  # different lengths: left padding


@pytest.fixture
def rescore(policy) -> Callable[..., torch.Tensor]:
    """The trainer's pre-update log-probs of a batch: score_in_chunks at the given per-token temperature
    (default: the batch's sampling temperature). -> [B, T]."""
    model, _ = policy

    def score(batch: RolloutBatch, temperature: torch.Tensor | None = None) -> torch.Tensor:
        tau = batch.temperature if temperature is None else temperature
        logp, _, _ = score_in_chunks(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], tau, 0,
                                     mask=batch.response_mask)
        return logp

    return score
