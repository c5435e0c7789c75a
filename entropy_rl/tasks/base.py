"""Task protocol, problem/reward records, the task registry and the shared train/eval sampler.

A task turns `(split, n, seed)` into `Problem`s and scores a model completion with a `RewardResult`.
Completions are untrusted text: verifiers parse them with small hand-written parsers and never
evaluate them (no eval/exec/compile; a test scans this package's AST for such calls).

Train/eval split: a problem belongs to exactly one split, decided by a hash of its prompt
(`split_of`), so the two splits are disjoint whatever the seeds, sizes or params. `sample_problems`
draws candidates from a seeded RNG and keeps those that hash to the requested split.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from entropy_rl.core.registry import Registry

SPLITS = ("train", "eval")

# Reasons for which the completion was parsed successfully (it is a well-formed answer, maybe wrong).
# Any other reason code, including ones a future task invents, counts as a format error.
PARSED_REASONS = frozenset({"ok", "wrong_numbers", "wrong_value", "division_by_zero"})
# Reasons for which the verifier itself failed (a user reward function raised or timed out, see sandbox.py):
# score 0, but not the model's fault, so not a format error. The trainer logs them as reward/errors and
# reward/timeouts.
VERIFIER_FAILURE_REASONS = frozenset({"error", "timeout"})
# Scores a task may return, inclusive. A task can declare its own as a `score_range` attribute (python_fn takes it
# as a param); a score outside it, non-finite or not a number is a verifier error (`validate_result`).
DEFAULT_SCORE_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class Problem:
    """One task instance.

    Attributes:
        prompt: text fed to the model; the completion follows it directly.
        answer: a reference completion that scores 1.0 (the SFT target), without EOS.
        data: task-specific JSON-serialisable fields (numbers, target, ...) read by the verifier.
    """

    prompt: str
    answer: str
    data: Mapping[str, Any] = field(hash=False)  # a dict is unhashable; prompt+answer identify it


@dataclass(frozen=True)
class RewardResult:
    """Verifier outcome for one completion.

    Attributes:
        score: 1.0 if correct, else 0.0.
        reason: "ok" or a short reason code ("empty", "too_long", "parse_error", "number_too_large",
            "too_deep", "wrong_numbers", "wrong_value", "division_by_zero"), or a verifier failure
            ("error": a user reward function raised; "timeout": it did not answer in time).
        answer: normalised final answer (for counting distinct answers per group), None if unparseable.
    """

    score: float
    reason: str
    answer: str | None

    @property
    def format_error(self) -> bool:
        """True when the completion could not be parsed: `reason` is neither in `PARSED_REASONS` nor a
        verifier failure (`VERIFIER_FAILURE_REASONS`: "error", "timeout")."""
        return self.reason not in PARSED_REASONS and self.reason not in VERIFIER_FAILURE_REASONS


def validate_result(result: Any, score_range: tuple[float, float] = DEFAULT_SCORE_RANGE) -> RewardResult:
    """Check that a verifier returned a well-formed result; the trainer and the sandbox call it on every score.

    Args:
        result: what `Task.reward` (or a user reward function) returned.
        score_range: (low, high), the inclusive range of allowed scores (the task's `score_range`).

    Returns:
        A RewardResult with a plain `float` score in `score_range`, a plain `str` reason and a plain `str` or
        None answer (`result` itself when it is already plain).

    Raises:
        TypeError: not a RewardResult, a score that is not a real number (bools count as 0/1), a reason that is
            not a string, an answer that is neither a string nor None.
        ValueError: a non-finite score (NaN, inf) or one outside `score_range`.
    """
    if not isinstance(result, RewardResult):
        raise TypeError(f"reward returned {type(result).__name__}, expected a RewardResult")
    score, reason, answer = result.score, result.reason, result.answer
    if not isinstance(score, (int, float)):
        raise TypeError(f"reward score is {type(score).__name__} {score!r:.80}, expected a number")
    if not isinstance(reason, str):
        raise TypeError(f"reward reason is {type(reason).__name__}, expected a str")
    if answer is not None and not isinstance(answer, str):
        raise TypeError(f"reward answer is {type(answer).__name__}, expected a str or None")
    low, high = score_range
    if not math.isfinite(score):
        raise ValueError(f"reward score {score!r} is not finite")
    if not low <= score <= high:
        raise ValueError(f"reward score {score!r} is outside the task's score range [{low}, {high}]")
    if type(score) is float and type(reason) is str and (answer is None or type(answer) is str):
        return result
    return RewardResult(float(score), str(reason), None if answer is None else str(answer))


def ok(answer: str) -> RewardResult:
    """A correct result with normalised `answer`."""
    return RewardResult(1.0, "ok", answer)


def fail(reason: str, answer: str | None = None) -> RewardResult:
    """A zero-score result with a reason code (and the normalised answer if it parsed)."""
    return RewardResult(0.0, reason, answer)


class Task(Protocol):
    """What the trainer needs from a task.

    Attributes:
        name: registry key.
        alphabet: every character any prompt or answer can contain (the char tokenizer is built from it).
        score_range: optional; the inclusive (low, high) range of `RewardResult.score`, `DEFAULT_SCORE_RANGE`
            (0, 1) when absent. The trainer scores any result outside it (or non-finite, or malformed) as 0 with
            reason "error".
    """

    name: str
    alphabet: str

    def prompts(self, split: str, n: int, seed: int) -> list[Problem]:
        """`n` problems of `split` ("train" or "eval"), deterministic in (split, n, seed)."""
        ...

    def reward(self, problem: Problem, completion: str) -> RewardResult:
        """Score `completion` (EOS removed, may be garbage) against `problem`; never raises."""
        ...


TASKS: Registry[Callable[[Any], Task]] = Registry("task")


def split_of(task_name: str, prompt: str) -> str:
    """The split ("train" or "eval") that `prompt` belongs to: parity of a stable hash.

    Uses blake2b rather than `hash()`, which is salted per process (PYTHONHASHSEED).
    """
    digest = hashlib.blake2b(f"{task_name}|{prompt}".encode(), digest_size=8).digest()
    return SPLITS[digest[0] & 1]


# Consecutive duplicate draws tolerated before we conclude the split's problem space is exhausted
# and start allowing repeats (a tiny config can have fewer distinct problems than `n`).
_MAX_DUP_STREAK = 200


def sample_problems(
    task_name: str, split: str, n: int, seed: int, draw: Callable[[random.Random], Problem]
) -> list[Problem]:
    """Draw `n` problems of `split` from `draw`, distinct while the problem space allows.

    Args:
        task_name: salts the RNG and the split hash.
        split: "train" or "eval".
        n: number of problems (>= 0).
        seed: RNG seed; the RNG is seeded with a string, which Python hashes with sha512, so the
            sequence is stable across processes and platforms.
        draw: returns one random problem from the task's full (unsplit) distribution.

    Returns:
        `n` problems whose prompts all hash to `split`; repeats only after ~200 consecutive
        duplicate draws (then the split's space is treated as exhausted).

    Raises:
        ValueError: unknown split or negative n.
        RuntimeError: the split looks empty (no candidate hashed to it within the attempt budget).
    """
    if split not in SPLITS:
        raise ValueError(f"{task_name}: split must be one of {SPLITS}, got '{split}'")
    if n < 0:
        raise ValueError(f"{task_name}: n must be >= 0, got {n}")
    rng = random.Random(f"{task_name}/{split}/{seed}")
    out: list[Problem] = []
    seen: set[str] = set()
    allow_dups = False
    dup_streak = 0
    wrong_split = 0
    while len(out) < n:
        problem = draw(rng)
        if split_of(task_name, problem.prompt) != split:
            wrong_split += 1
            if wrong_split > 1000 + 100 * n:
                raise RuntimeError(f"{task_name}: could not draw {n} '{split}' problems; space too small")
            continue
        if problem.prompt in seen and not allow_dups:
            dup_streak += 1
            allow_dups = dup_streak >= _MAX_DUP_STREAK
            continue
        dup_streak = 0
        seen.add(problem.prompt)
        out.append(problem)
    return out
