"""Synthetic verifiable tasks (registry `TASKS`) and `make_task(name, **params)`.

Each task module registers its class with its frozen `Params`; importing this package imports them all.
"""

from __future__ import annotations

from typing import Any

from entropy_rl.tasks import arithmetic, countdown, jsonl, math, python_fn  # noqa: F401  (registration happens on import)
from entropy_rl.tasks.arithmetic import ArithmeticTask
from entropy_rl.tasks.arithmetic import Params as ArithmeticParams
from entropy_rl.tasks.base import PARSED_REASONS, TASKS, VERIFIER_FAILURE_REASONS, Problem, RewardResult, Task
from entropy_rl.tasks.countdown import CountdownTask
from entropy_rl.tasks.countdown import Params as CountdownParams


def make_task(name: str, **params: Any) -> Task:
    """Build the registered task `name` from keyword params.

    Raises:
        RegistryError: unknown task name (lists valid names, with a did-you-mean hint).
        TypeError: unknown parameter (with a did-you-mean hint).
        ValueError: a parameter value outside its valid range.
    """
    entry = TASKS.get(name)
    return entry.obj(entry.make_params(**params))


__all__ = [
    "PARSED_REASONS",
    "VERIFIER_FAILURE_REASONS",
    "TASKS",
    "ArithmeticParams",
    "ArithmeticTask",
    "CountdownParams",
    "CountdownTask",
    "Problem",
    "RewardResult",
    "Task",
    "make_task",
]
