"""Rollout engines: they return token ids, masks and sampling log-probs; text is decoded only for scoring."""

from entropy_rl.rollout.hf import RolloutBatch, SamplingParams, generate

__all__ = ["RolloutBatch", "SamplingParams", "generate"]
