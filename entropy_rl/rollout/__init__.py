"""Rollout engines: they return token ids, masks and sampling log-probs; text is decoded only for scoring."""

from entropy_rl.rollout.base import ENGINES, RolloutBatch, RolloutEngine, SamplingParams, make_engine
from entropy_rl.rollout.hf import HfEngine, generate
from entropy_rl.rollout.vllm import VllmEngine, VllmParams  # registers "vllm"; vLLM is imported when it is built

__all__ = ["ENGINES", "HfEngine", "RolloutBatch", "RolloutEngine", "SamplingParams", "VllmEngine", "VllmParams",
           "generate", "make_engine"]
