"""The advantage-estimator registry and the public `compute_advantages` entry point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from entropy_rl.core.registry import Entry, Registry


@dataclass(frozen=True)
class AdvantageInputs:
    """Inputs of an advantage estimator for N responses.

    Attributes:
        rewards: [N] scalar (outcome) reward per response.
        group_index: [N] int64 id of the prompt group each response belongs to.
        mask: [N, T] response mask, or None.
        old_entropy: [N, T] H_old from the pre-update pass, or None (entropy-aware estimators need it).
    """

    rewards: Tensor
    group_index: Tensor
    mask: Tensor | None = None
    old_entropy: Tensor | None = None


class AdvantageFn(Protocol):
    """(inputs, params) -> advantages [N] (sequence level) or [N, T] (token level)."""

    def __call__(self, x: AdvantageInputs, p: Any) -> Tensor: ...


ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")


def register_advantage(name: str, params_cls: type, doc: str | None = None) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator registering an advantage estimator under `name`."""
    return ADVANTAGES.register(name, params_cls, doc=doc)


def get_advantage(name: str) -> Entry[AdvantageFn]:
    """Look up an estimator (the built-ins register when the `entropy_rl` package loads)."""
    return ADVANTAGES.get(name)


def group_stats(values: Tensor, group_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-response group mean, unbiased group std (0 for singletons) and group size, each [N].

    Args:
        values: [N] float values.
        group_index: [N] int64 group ids (any integers; need not be contiguous).

    Returns:
        (mean [N], std [N], count [N]) gathered back to each response.
    """
    _, inverse = torch.unique(group_index, return_inverse=True)
    n_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    v = values.double()
    count = torch.zeros(n_groups, dtype=torch.float64, device=v.device).index_add_(0, inverse, torch.ones_like(v))
    total = torch.zeros(n_groups, dtype=torch.float64, device=v.device).index_add_(0, inverse, v)
    mean = total / count
    sq = torch.zeros(n_groups, dtype=torch.float64, device=v.device).index_add_(0, inverse, (v - mean[inverse]) ** 2)
    std = torch.where(count > 1, (sq / (count - 1).clamp_min(1.0)).sqrt(), torch.zeros_like(sq))
    return mean[inverse].to(values.dtype), std[inverse].to(values.dtype), count[inverse].to(values.dtype)


def compute_advantages(
    name: str,
    rewards: Tensor,
    group_index: Tensor,
    *,
    mask: Tensor | None = None,
    old_entropy: Tensor | None = None,
    **params: Any,
) -> Tensor:
    """Advantages of estimator `name` ([N] or [N, T]); see `entropy-rl methods` for the estimators."""
    entry = get_advantage(name)
    p = entry.make_params(**params)
    return entry.obj(AdvantageInputs(rewards.float(), group_index, mask, old_entropy), p)
