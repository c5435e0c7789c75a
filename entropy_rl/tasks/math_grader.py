"""The math task's verifier, run inside a reward-sandbox worker: math-verify `parse` + `verify`.

A module of its own that imports math-verify at the top: `tasks/math.py` imports it only when a math task is
built (the package stays importable without the `[math]` extra), and a sandbox worker imports it while it
starts (unpickling `grade`), outside the per-call timeout. (About 0.1 s once torch is loaded: sympy already is.)

math-verify's own timeouts are switched off (`parsing_timeout=None`, `timeout_seconds=None`): they use
`signal.alarm`, which works only in the main thread of the main interpreter, has whole-second resolution, and
cannot interrupt a long C-level call (a huge integer power inside sympy). The sandbox's wall-clock limit does
all three: it SIGKILLs the worker, from any trainer thread (docs/reliability.md).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from math_verify import parse, verify

from entropy_rl.tasks.base import Problem, RewardResult, fail, ok

# math-verify warns once per process that its timeout is off; the sandbox provides it.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def parse_answer(text: str) -> list[Any]:
    """math-verify's parse of one extracted answer (LaTeX or plain), read as the content of a `\\boxed{}`.

    Returns:
        Parsed candidates (sympy objects and the matched string); [] when nothing parses.
    """
    return parse(f"\\boxed{{{text}}}", parsing_timeout=None)


@functools.lru_cache(maxsize=4096)
def parse_gold(text: str) -> list[Any]:
    """`parse_answer` of a reference answer, cached (a reference is graded once per sampled response).

    Raises:
        ValueError: math-verify parses nothing from it (the sandbox reports reason "error", so a bad
            reference shows up in `reward/errors` instead of silently scoring every response 0).
    """
    parsed = parse_answer(text)
    if not parsed:
        raise ValueError(f"math-verify cannot parse the reference answer {text!r}")
    return parsed


def grade(problem: Problem, answer: str) -> RewardResult:
    """Score an extracted answer against `problem.data["gold"]` with math-verify (equivalent forms match:
    1/2, 0.5, \\frac{1}{2}).

    Args:
        problem: a math-task problem (its `data["gold"]` is the reference answer text).
        answer: the answer extracted from the completion (non-empty).

    Returns:
        score 1 with reason "ok", or 0 with "wrong_value"; the answer text either way.
    """
    correct = verify(parse_gold(problem.data["gold"]), parse_answer(answer), timeout_seconds=None)
    return ok(answer) if correct else fail("wrong_value", answer)
