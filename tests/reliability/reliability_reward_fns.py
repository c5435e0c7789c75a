"""User reward functions for tests/reliability/test_reward_sandbox.py (module level: the spawned worker imports them)."""

from __future__ import annotations

import os
import time


def exact(problem, completion: str) -> bool:
    """1 if the completion equals the reference answer."""
    return completion.strip() == problem.answer


def raises(problem, completion: str) -> float:
    raise ZeroDivisionError("user bug")


def hangs(problem, completion: str) -> float:
    """CPU-bound hang (a thread could not be interrupted)."""
    while True:
        pass


def sleeps_on_request(problem, completion: str) -> float:
    """Hangs in a sleep when the completion is "hang", raises on "raise", else exact match."""
    if completion == "hang":
        time.sleep(3600)
    if completion == "raise":
        raise ValueError("bad input")
    return completion.strip() == problem.answer


def bad_return(problem, completion: str):
    return "yes"


def out_of_range(problem, completion: str) -> float:
    return 2.0


def dies(problem, completion: str) -> float:
    os._exit(3)


def constant(problem, completion: str) -> float:
    return 0.0


NOT_CALLABLE = 42
