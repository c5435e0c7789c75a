"""Frozen containers passed between the trainer and the methods. Shapes: B sequences, T response tokens."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Generic, Mapping, TypeVar

import torch
from torch import Tensor

from entropy_rl.core.aggregate import Aggregation

V = TypeVar("V")


@dataclass(frozen=True)
class PolicyInputs:
    """Per-token inputs of a policy loss, all [B, T] and aligned on response positions.

    Attributes:
        logp: log pi_theta(o_t) under the current parameters, tempered; carries gradient in the update.
        old_logp: the same under the rollout parameters (pre-update pass); no gradient.
        adv: per-token advantage (sequence advantage broadcast over the response), 0 off the mask.
        mask: 1.0 on trained response tokens, 0.0 on padding; float.
        entropy: H_cur, full-vocab tempered entropy of the current forward pass (with gradient), or None.
        old_entropy: H_old, the same from the pre-update pass (no gradient), or None.
        ref_logp: reference-model log-probs (no gradient), or None.
        extras: method-declared per-token features [B, T] computed from logits (see PolicyLossMethod
            `old_features` / `cur_features`), e.g. {"lp_proxy": ...}.
    """

    logp: Tensor
    old_logp: Tensor
    adv: Tensor
    mask: Tensor
    entropy: Tensor | None = None
    old_entropy: Tensor | None = None
    ref_logp: Tensor | None = None
    extras: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = self.logp.shape
        if self.logp.dim() != 2:
            raise ValueError(f"logp must be [B, T], got shape {tuple(shape)}")
        for name in ("old_logp", "adv", "mask", "entropy", "old_entropy", "ref_logp"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)} like logp")
        for name, value in self.extras.items():
            if value.shape[0] != shape[0]:
                raise ValueError(f"extras['{name}'] has {value.shape[0]} rows, expected {shape[0]}")

    def rows(self, index: slice | Tensor) -> "PolicyInputs":
        """Return the inputs restricted to a subset of sequences (a micro-batch)."""
        kwargs: dict[str, Any] = {}
        for name in ("logp", "old_logp", "adv", "mask", "entropy", "old_entropy", "ref_logp"):
            value = getattr(self, name)
            kwargs[name] = None if value is None else value[index]
        return PolicyInputs(**kwargs, extras={k: v[index] for k, v in self.extras.items()})

    def detached(self) -> "PolicyInputs":
        """A copy with every tensor detached (selection runs on these under no_grad)."""
        kwargs: dict[str, Any] = {}
        for name in ("logp", "old_logp", "adv", "mask", "entropy", "old_entropy", "ref_logp"):
            value = getattr(self, name)
            kwargs[name] = None if value is None else value.detach()
        return PolicyInputs(**kwargs, extras={k: v.detach() for k, v in self.extras.items()})


@dataclass(frozen=True)
class TokenWeights:
    """Per-token selections made once per optimizer mini-batch (`select`), sliced per micro-batch.

    Attributes:
        tensors: named [B, T] (or [B, ...]) tensors, e.g. {"detach": bool mask}; first dim is B.
        metrics: scalar tensors describing the selection (namespaced by the method), computed once.
    """

    tensors: Mapping[str, Tensor] = field(default_factory=dict)
    metrics: Mapping[str, Tensor] = field(default_factory=dict)

    def rows(self, index: slice | Tensor) -> "TokenWeights":
        """Return the selection for a subset of sequences; metrics stay whole (mini-batch level)."""
        return TokenWeights({k: v[index] for k, v in self.tensors.items()}, self.metrics)

    def __getitem__(self, key: str) -> Tensor:
        """The selected tensor `key`; a clear error when the loss was called without its method's selection."""
        try:
            return self.tensors[key]
        except KeyError:
            have = ", ".join(sorted(self.tensors)) or "nothing"
            raise ValueError(
                f"the selection has no '{key}' (it holds {have}): run the method's `select` over the optimizer "
                f"mini-batch (core.policy_loss.run_select) and pass its result to `loss`"
            ) from None


@dataclass(frozen=True, eq=False)
class StepContext(Generic[V]):
    """Run-time inputs of a method's `select` and `loss` at one optimizer step; user settings stay in Params.

    The trainer builds it once per step, after the method state has seen the step's rollout batch
    (`core.policy_loss.step_context`), and narrows its aggregation to each optimizer mini-batch
    (`for_minibatch`). Frozen: `select` and `loss` cannot change it.

    Attributes:
        values: the method's run-time values for this step, a frozen dataclass built by its state's pure
            `values(params)` (SIREN's anchor, an adaptive coefficient, EPO's history mean and epoch); None
            for a stateless method.
        agg: the trainer's aggregation of the current optimizer mini-batch (mode and normalisers); a method
            that places a mini-batch quantity on tokens uses `agg.weights(mask)`, the trainer `agg.reduce`.
    """

    values: Any = None
    agg: Aggregation = field(default_factory=Aggregation)

    def for_minibatch(self, num_tokens: float | Tensor, num_seqs: float) -> "StepContext[V]":
        """The context with the aggregation normalisers of one optimizer mini-batch (tokens, sequences)."""
        return replace(self, agg=self.agg.for_minibatch(num_tokens, num_seqs))

    def values_as(self, cls: type[V], method: str) -> V:
        """`values`, checked to be the `cls` that `method`'s state builds (clear error otherwise)."""
        if not isinstance(self.values, cls):
            raise ValueError(
                f"{method}: the step context carries {type(self.values).__name__}, not {cls.__name__}; build it "
                f"with core.policy_loss.step_context(state, params, agg) from the method's state"
            )
        return self.values


@dataclass(frozen=True)
class LossOutput:
    """Result of a policy loss.

    Attributes:
        per_token: loss per token [B, T] (0 where mask is 0); aggregate with `core.aggregate`.
        metrics: scalar tensors (no `.item()`), keys namespaced like `policy/clipfrac` or `method/<name>/...`.
            Token-level metrics are means over the mask of this call.
    """

    per_token: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over positions where mask is nonzero; 0 (not NaN) on an empty mask. [B, T] -> []."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def zero_scalar(like: Tensor) -> Tensor:
    """A 0-dim zero on the device/dtype of `like` (for metrics of empty selections)."""
    return torch.zeros((), dtype=like.dtype, device=like.device)
