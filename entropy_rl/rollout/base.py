"""The rollout seam: what every generation engine takes and returns, and the engine registry.

An engine (`hf` here; `vllm` later) turns prompts into a `RolloutBatch`: token ids, masks, the per-token
log-probs of the distribution actually sampled, the group of each row and the per-token sampling
temperature (so strategies may vary it). Engines return token ids, never only text. After every optimizer
step the trainer calls `engine.sync_weights(model)` so an engine holding its own copy of the weights samples
from the current policy (a no-op for `hf`, which samples from the training model itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from entropy_rl.core.registry import Registry

Prompts = Sequence[str] | Sequence[Sequence[int]]  # prompt strings, or token ids (no special tokens added)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings.

    Attributes:
        temperature: softmax temperature tau (> 0); the entropy metric uses the same tau.
        top_p: nucleus mass in (0, 1]; 1 disables.
        top_k: keep the k most likely tokens; 0 disables.
        max_new_tokens: response length cap T.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"top_k must be >= 0 and max_new_tokens >= 1, got {self.top_k}, {self.max_new_tokens}")


@dataclass(frozen=True)
class RolloutBatch:
    """One batch of sampled responses.

    Attributes:
        prompt_ids: [B, P] int64, left-padded.
        prompt_mask: [B, P] 1 on prompt tokens.
        response_ids: [B, T] int64, right-padded after the first EOS.
        response_mask: [B, T] float, 1 on response tokens up to and including EOS.
        sampling_logp: [B, T] fp32 log-probs of the sampled tokens under the sampling distribution (0 off mask).
        texts: decoded completions without special tokens (untrusted text: parse, never evaluate).
        truncated: [B] bool, no EOS within max_new_tokens.
        group_index: [B] int64, the prompt group of each row (rows of a group need not be contiguous).
        temperature: [B, T] fp32 sampling temperature of each response token (what `sampling_logp` and the
            trainer's tempered log-probs and entropy divide the logits by).
        shared_prefix_mask: [B, T] float, 1 on response tokens copied from another row of the batch (a branch's
            prefix, sampled once), or None (no shared tokens). Rollout strategies that branch set it.
        train_shared_prefix: whether the loss trains the copied prefix tokens in every row that holds them (True,
            e.g. AEPO) or only in the row that sampled them (False, e.g. CURE); see `loss_mask`.
        fixed_advantage: [B] fp32, the advantage of rows that take a fixed one (NaN elsewhere), or None. Rows with
            a finite value take no part in the advantage estimator (AEPO's injected REINFORCE samples: +1).
        train_temperature: [B, T] fp32 temperature the trainer scores each token at, or None (= `temperature`).
            It differs from `temperature` only where a strategy samples at one temperature and trains at another
            (AEPO: tempered samples trained under the training temperature); there the trainer's log-probs differ
            from `sampling_logp` by design.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    sampling_logp: Tensor
    texts: list[str]
    truncated: Tensor
    group_index: Tensor
    temperature: Tensor
    shared_prefix_mask: Tensor | None = None
    train_shared_prefix: bool = True
    fixed_advantage: Tensor | None = None
    train_temperature: Tensor | None = None

    @property
    def input_ids(self) -> Tensor:
        """[B, P + T] prompt then response."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """[B, P + T] 1 on real tokens."""
        return torch.cat([self.prompt_mask, self.response_mask.to(self.prompt_mask.dtype)], dim=1)

    def __post_init__(self) -> None:
        B, T = self.response_ids.shape
        if self.group_index.shape != (B,):
            raise ValueError(f"group_index must be [B] = [{B}], got {tuple(self.group_index.shape)}")
        for name in ("temperature", "shared_prefix_mask", "train_temperature"):
            value = getattr(self, name)
            if value is not None and value.shape != (B, T):
                raise ValueError(f"{name} must be [B, T] = [{B}, {T}], got {tuple(value.shape)}")
        if self.fixed_advantage is not None and self.fixed_advantage.shape != (B,):
            raise ValueError(f"fixed_advantage must be [B] = [{B}], got {tuple(self.fixed_advantage.shape)}")

    @property
    def loss_mask(self) -> Tensor:
        """[B, T] the tokens the loss trains: `response_mask`, less the copied prefix tokens when
        `train_shared_prefix` is False (so each shared token counts once, in the row that sampled it)."""
        if self.shared_prefix_mask is None or self.train_shared_prefix:
            return self.response_mask
        return self.response_mask * (1 - self.shared_prefix_mask.to(self.response_mask.dtype))

    @property
    def score_temperature(self) -> Tensor:
        """[B, T] the temperature the trainer scores at: `train_temperature`, else `temperature`."""
        return self.temperature if self.train_temperature is None else self.train_temperature

    @property
    def fixed_rows(self) -> Tensor:
        """[B] bool, rows whose advantage is fixed (`fixed_advantage` finite); the estimator sees the others."""
        if self.fixed_advantage is None:
            return torch.zeros(self.response_ids.shape[0], dtype=torch.bool, device=self.response_ids.device)
        return torch.isfinite(self.fixed_advantage)

    def uniform_temperature(self) -> float | None:
        """The one temperature every response token is scored at (`score_temperature`), or None when it varies."""
        temperature = self.score_temperature
        values = temperature[self.response_mask.bool()]
        if values.numel() == 0:
            return float(temperature.flatten()[0]) if temperature.numel() else None
        first = float(values[0])
        return first if bool((values == first).all()) else None


class RolloutEngine(Protocol):
    """Generates rollouts for the trainer; see the module docstring."""

    def generate(self, prompts: Prompts, sampling: SamplingParams, group_size: int = 1) -> RolloutBatch:
        """Sample `group_size` responses per prompt: B = len(prompts) * group_size rows with their group_index."""
        ...

    def sync_weights(self, model: PreTrainedModel) -> None:
        """Make the engine sample from `model`'s current weights (called after every optimizer step)."""
        ...

    def release(self) -> None:
        """Free what the engine holds while the trainer updates (vLLM sleeps on GPU); the next call wakes it."""
        ...


EngineFactory = Callable[[PreTrainedModel, PreTrainedTokenizerBase, Any], RolloutEngine]  # (model, tokenizer, params)
ENGINES: Registry[EngineFactory] = Registry("rollout engine")


def make_engine(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                params: Mapping[str, Any] | None = None) -> RolloutEngine:
    """The engine registered as `name` (`rollout.engine`), built for this policy and tokenizer.

    Args:
        params: the engine's settings (`rollout.engine_params`), checked against its registered Params class
            (ParamsError naming `rollout.engine_params.<field>`); None or {} gives the defaults.
    """
    import entropy_rl.rollout.hf  # noqa: F401  (registers the built-in engine)

    entry = ENGINES.get(name)
    return entry.obj(model, tokenizer, entry.parse_params(params or {}, "rollout.engine_params"))


def contiguous_groups(n_prompts: int, group_size: int, device: torch.device | None = None) -> Tensor:
    """[n_prompts * group_size] group index of prompts repeated group_size times in a row: 0,0,..,1,1,..."""
    return torch.arange(n_prompts * group_size, device=device) // group_size


def logp_diff_metrics(sampling_logp: Tensor, trainer_logp: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the engine's sampling log-probs are from the trainer's recomputation, over response tokens.

    Args:
        sampling_logp: [B, T] fp32 log-probs the engine sampled with (`RolloutBatch.sampling_logp`).
        trainer_logp: [B, T] the trainer's log-probs of the same tokens at the same temperature (pre-update pass).
        mask: [B, T] response mask.

    Returns:
        {"rollout/logp_diff_mean": mean |diff|, "rollout/logp_diff_max": max |diff|} in nats; 0 with no tokens.
    """
    diff = (sampling_logp.float() - trainer_logp.float()).abs()[mask.bool()]  # [n]
    if diff.numel() == 0:
        return {"rollout/logp_diff_mean": 0.0, "rollout/logp_diff_max": 0.0}
    return {"rollout/logp_diff_mean": float(diff.mean()), "rollout/logp_diff_max": float(diff.max())}
