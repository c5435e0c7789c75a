"""Multi-digit integer arithmetic: a+b, a-b, a*b with a configurable number of digits per operand.

Prompt format: `"<a><op><b>="`, completion the integer result in canonical form, e.g.

    prompt "37+45="   completion "82"        prompt "3-45="   completion "-42"

Generation: op uniform over `ops`; each operand's digit count uniform in [min_digits, max_digits],
then the operand uniform over numbers with that many digits (1 digit includes 0). Subtraction may
give a negative result.

Verifier (hand-written, never eval): the completion is stripped; "" -> "empty"; more than
MAX_CHARS (32) chars -> "too_long"; then it must be an optional leading '-' followed by ASCII
digits 0-9 only (no '+', spaces, unicode digits, leading zeros, or "-0"), else "parse_error"; more
than MAX_ANSWER_DIGITS (12) digits -> "number_too_large"; value != result -> "wrong_value"; else "ok".
`RewardResult.answer` is the canonical integer text when it parses, else None.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from entropy_rl.tasks.base import TASKS, Problem, RewardResult, fail, ok, sample_problems

MAX_CHARS = 32  # completion length cap (after strip)
MAX_ANSWER_DIGITS = 12  # digit cap of the answer; a 6x6-digit product has at most 12 digits
MAX_OPERAND_DIGITS = 6

_OPS = "+-*"


@dataclass(frozen=True)
class Params:
    min_digits: int = 1  # fewest digits per operand
    max_digits: int = 2  # most digits per operand; 2 keeps a*b (<= 4 digits) learnable by a tiny model
    ops: str = "+-*"  # allowed operators, a subset of "+-*"

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits <= MAX_OPERAND_DIGITS:
            raise ValueError(
                f"arithmetic: need 1 <= min_digits <= max_digits <= {MAX_OPERAND_DIGITS}, "
                f"got {self.min_digits}..{self.max_digits}"
            )
        if not self.ops or any(c not in _OPS for c in self.ops) or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"arithmetic: ops must be distinct characters of '{_OPS}', got '{self.ops}'")


def parse_int(completion: str) -> tuple[int | None, str]:
    """Parse a canonical integer: optional '-' then ASCII digits, no leading zero, no "-0".

    Returns:
        (value, "ok") or (None, reason) with reason in {"empty", "too_long", "parse_error",
        "number_too_large"}. Never raises; never builds an int over MAX_ANSWER_DIGITS digits.
    """
    text = completion.strip()
    if not text:
        return None, "empty"
    if len(text) > MAX_CHARS:
        return None, "too_long"
    digits = text[1:] if text[0] == "-" else text
    # Explicit range check, not str.isdigit(): isdigit accepts unicode digits such as '٣' and '²'.
    if not digits or any(not "0" <= c <= "9" for c in digits):
        return None, "parse_error"
    if len(digits) > MAX_ANSWER_DIGITS:
        return None, "number_too_large"
    if digits[0] == "0" and (len(digits) > 1 or text[0] == "-"):
        return None, "parse_error"  # "07", "-0": non-canonical
    value = int(digits)
    return (-value if text[0] == "-" else value), "ok"


def verify(completion: str, result: int) -> RewardResult:
    """Score `completion` against the integer `result` (limits in the module docstring); never raises."""
    value, reason = parse_int(completion)
    if value is None:
        return fail(reason)
    if value != result:
        return fail("wrong_value", str(value))
    return ok(str(value))


def _operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    k = rng.randint(min_digits, max_digits)
    return rng.randint(0 if k == 1 else 10 ** (k - 1), 10**k - 1)


@TASKS.register("arithmetic", Params)
class ArithmeticTask:
    """Multi-digit a+b / a-b / a*b; the completion is the integer result."""

    name = "arithmetic"

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else Params()
        # '-' also appears in answers when subtraction is enabled (negative results).
        self.alphabet = "0123456789=" + "".join(c for c in _OPS if c in self.params.ops)

    def draw(self, rng: random.Random) -> Problem:
        """One random problem from the full (unsplit) distribution."""
        p = self.params
        op = rng.choice(p.ops)
        a = _operand(rng, p.min_digits, p.max_digits)
        b = _operand(rng, p.min_digits, p.max_digits)
        result = a + b if op == "+" else a - b if op == "-" else a * b
        return Problem(f"{a}{op}{b}=", str(result), {"a": a, "b": b, "op": op, "result": result})

    def prompts(self, split: str, n: int, seed: int) -> list[Problem]:
        """`n` problems of `split`, deterministic in (split, n, seed); splits are disjoint by prompt hash."""
        return sample_problems(self.name, split, n, seed, self.draw)

    def reward(self, problem: Problem, completion: str) -> RewardResult:
        """Verify `completion` against `problem.data["result"]`; never raises."""
        return verify(completion, int(problem.data["result"]))
