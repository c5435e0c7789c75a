"""`python_fn`: prompts from a registered base task, rewards from a user Python function run in a sandbox.

Config example:

    task:
      name: python_fn
      params: {base: countdown, base_params: {n_numbers: 3}, reward_fn: "my_pkg.rewards:score", timeout_s: 2.0,
               score_range: [0, 1], memory_mb: 0}

`reward_fn` is "module.path:function", imported with importlib when the task is built (that loads the
user's own code, as any Python plugin does; model text is never evaluated). The function is called as
`fn(problem, completion)` and returns a bool, a number in `score_range` (default [0, 1]) or a `RewardResult`.
Every call goes through `sandbox.RewardSandbox`: an exception, or a score that is not a finite number in
`score_range`, gives score 0 with reason "error", a call longer than `timeout_s` gives score 0 with reason
"timeout"; the run continues. `memory_mb` > 0 caps the memory the function may allocate (Linux). The module
must be importable in a fresh interpreter (the worker is started by a fork server), i.e. on sys.path /
installed.
"""

from __future__ import annotations

import importlib
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from entropy_rl.tasks.base import DEFAULT_SCORE_RANGE, TASKS, Problem, RewardResult
from entropy_rl.tasks.sandbox import DEFAULT_START_METHOD, START_METHODS, RewardSandbox


@dataclass(frozen=True)
class Params:
    base: str = "countdown"  # registered task that supplies prompts, reference answers and the alphabet
    base_params: dict = field(default_factory=dict)  # that task's Params fields
    reward_fn: str = ""  # "package.module:function", called as fn(problem, completion)
    timeout_s: float = 2.0  # wall-clock limit per reward call, seconds
    start_method: str = DEFAULT_START_METHOD  # worker start: forkserver (default) | spawn | fork (see sandbox.py)
    score_range: tuple[float, float] = DEFAULT_SCORE_RANGE  # [low, high] allowed scores; outside -> reason "error"
    memory_mb: int = 0  # cap on the memory (address space) the function may allocate, MiB; 0 = none (Linux only)

    def __post_init__(self) -> None:
        if self.base == "python_fn":
            raise ValueError("python_fn: base must be another task, not python_fn")
        module, _, name = self.reward_fn.partition(":")
        if not module or not name:
            raise ValueError(f"python_fn: reward_fn must look like 'package.module:function', got '{self.reward_fn}'")
        if not self.timeout_s > 0:
            raise ValueError(f"python_fn: timeout_s must be > 0, got {self.timeout_s}")
        if self.start_method not in START_METHODS:
            raise ValueError(f"python_fn: start_method must be one of {START_METHODS}, got '{self.start_method}'")
        r = self.score_range
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                     and math.isfinite(v) for v in r) and r[0] < r[1]):
            raise ValueError(f"python_fn: score_range must be two finite numbers [low, high] with low < high, got {r!r}")
        object.__setattr__(self, "score_range", (float(r[0]), float(r[1])))  # YAML gives a list
        if isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, int) or self.memory_mb < 0:
            raise ValueError(f"python_fn: memory_mb must be an integer >= 0 (0 = no cap), got {self.memory_mb!r}")
        if self.memory_mb and not sys.platform.startswith("linux"):
            raise ValueError("python_fn: memory_mb needs Linux (RLIMIT_AS); set it to 0 on this platform")


def resolve(path: str) -> Callable[..., Any]:
    """Import "package.module:attr.sub" and return the callable.

    Raises:
        ValueError: malformed path, module not importable, attribute missing or not callable (the message
            names the path and the underlying error).
    """
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or any error raised while importing the user's module
        raise ValueError(f"python_fn: cannot import module '{module_name}' of reward_fn '{path}': "
                         f"{type(e).__name__}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"python_fn: module '{module_name}' has no attribute '{attr}' (reward_fn '{path}')")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"python_fn: reward_fn '{path}' is a {type(obj).__name__}, not a function")
    return obj


@TASKS.register("python_fn", Params)
class PythonFnTask:
    """Prompts of a base task scored by a user reward function, under a timeout and exception capture."""

    name = "python_fn"

    def __init__(self, params: Params | None = None) -> None:
        from entropy_rl.tasks import make_task  # late: the tasks package imports this module

        self.params = params if params is not None else Params()
        self.base = make_task(self.params.base, **self.params.base_params)
        self.alphabet = self.base.alphabet
        self.score_range = self.params.score_range
        self.fn = resolve(self.params.reward_fn)
        self.sandbox = RewardSandbox(self.fn, self.params.timeout_s, self.params.start_method, name=self.params.reward_fn,
                                     score_range=self.score_range, memory_mb=self.params.memory_mb)

    def prompts(self, split: str, n: int, seed: int) -> list[Problem]:
        """The base task's problems (same splits and determinism)."""
        return self.base.prompts(split, n, seed)

    def reward(self, problem: Problem, completion: str) -> RewardResult:
        """The user function's verdict; reason "error" / "timeout" when it raised / hung. Never raises."""
        return self.sandbox(problem, completion)

    @property
    def errors(self) -> int:
        """Reward calls that raised, crashed or returned an invalid score so far."""
        return self.sandbox.errors

    @property
    def timeouts(self) -> int:
        """Reward calls that timed out so far."""
        return self.sandbox.timeouts
